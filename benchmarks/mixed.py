"""Mixed precision at the BOPs of uniform W3A3 against uniform W3A3 and W4A4 (issue #14's target).

``python -m benchmarks.mixed [--dataset digits|mnist|cifar10] [--seeds 0 1] [--float-epochs 30] [--qat-epochs 5]
[--train-samples N] [--test-samples N] [--model resnet20 --depth 8] [--all-layers]``

Protocol (docs/benchmark-protocol.md): per seed, one float LeNet-5 (or ``--model``) trained once; every contestant
starts from a copy of its weights, is calibrated on the same 512 training images and fine-tuned with
the same QAT recipe (Adam, cosine from lr 5e-4, batch 64, same data order). The scheme is the ``lsq``
preset (LSQ weights per channel and activations, its initialisation and settings; first and last layers at 8
bits, as uniform rows and mixed rows alike; ``--all-layers``: every layer at the chosen width). Uniform rows are
built as mixed rows are (``mixed.to_scheme`` with every layer's width), so they differ in widths only. Mixed
rows: per-layer widths from {8, 6, 4, 3, 2} chosen by the integer program with the measured (post-training, one
layer at a time, on 512 training images) or the Hessian (HAWQ-V2) sensitivity, under a BOPs budget equal to
uniform W3A3's BOPs, or 80% of uniform W4A4's, or uniform W2A2's, and under uniform W3A3's BOPs and weight memory
together.
BOPs are the realised ones (``qresearch.mixed.qat_cost`` of each QAT model). Reports test accuracy
mean ± std over seeds and writes JSON under ``outputs/benchmarks/mixed_<dataset>.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

BITS = (8, 6, 4, 3, 2)


def _fit(model, x, y, epochs: int, lr: float, seed: int, batch_size: int = 64):
    from qresearch import keras

    steps = int(np.ceil(len(x) / batch_size)) * epochs
    keras.utils.set_random_seed(seed)  # same data order for every contestant
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, max(steps, 1))),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    if epochs:
        model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return model


def _acc(model, x, y) -> float:
    logits = model.predict(x, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y.ravel()))


def _clone(model):
    from qresearch import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def uniform_widths(model, bits: int, first_last: bool) -> Dict[str, int]:
    """Every compute layer at ``bits`` (first and last at 8 with ``first_last``): a uniform row goes through
    ``mixed.to_scheme`` as the mixed rows do, so the two differ in their widths only (until 2026-12-06 uniform
    rows replaced the preset's quantizer specs by bare ``{quantizer: lsq, bits}``, dropping its ``init: mse``)."""
    from qresearch import mixed

    names = [c.name for c in mixed.compute_layers(model)]
    widths = {name: bits for name in names}
    if first_last:
        widths[names[0]] = widths[names[-1]] = 8
    return widths


def run_seed(ds, seed: int, float_epochs: int, qat_epochs: int, log, first_last: bool = True,
             model_cfg: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    import qresearch
    from qresearch import keras, mixed
    from qresearch.models import build_model

    keras.utils.set_random_seed(seed)
    fmodel = build_model(model_cfg or {"name": "lenet5"}, ds.x_train.shape[1:], ds.num_classes)
    _fit(fmodel, ds.x_train, ds.y_train, float_epochs, 3e-3, seed)
    rows: Dict[str, Dict[str, Any]] = {"float": {"accuracy": _acc(fmodel, ds.x_test, ds.y_test), "bops_rel": 1.0}}
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds.x_train))[:512]
    calib, measure = ds.x_train[idx], (ds.x_train[idx], ds.y_train[idx])
    ref = mixed.cost(fmodel)["totals"]

    def train(name, scheme, extra=None):
        t0 = time.perf_counter()
        q = qresearch.quantize(_clone(fmodel), scheme, calibration_data=calib)
        ptq = _acc(q, ds.x_test, ds.y_test)
        _fit(q, ds.x_train, ds.y_train, qat_epochs, 5e-4, seed)
        t = mixed.qat_cost(fmodel, q)["totals"]
        rows[name] = dict(extra or {}, accuracy=_acc(q, ds.x_test, ds.y_test), ptq_accuracy=ptq,
                          bops_rel=t["bops"] / ref["bops"], memory_rel=t["weight_bits"] / ref["weight_bits"])
        log(f"seed {seed} {name:22} acc {rows[name]['accuracy']:.4f} (ptq {ptq:.4f}) "
            f"BOPs {rows[name]['bops_rel']:.4f} mem {rows[name]['memory_rel']:.4f} ({time.perf_counter() - t0:.0f}s)")

    base = dict(qresearch.schemes.get("lsq").to_dict(), first_last_bits=8 if first_last else None)
    for b in (8, 4, 3, 2):
        train(f"uniform W{b}A{b}", mixed.to_scheme(base, uniform_widths(fmodel, b, first_last), fmodel))
    budgets = {"@W3A3 BOPs": rows["uniform W3A3"]["bops_rel"], "@0.8xW4A4 BOPs": 0.8 * rows["uniform W4A4"]["bops_rel"],
               "@W2A2 BOPs": rows["uniform W2A2"]["bops_rel"]}
    sens = {"measured": mixed.sensitivity(fmodel, measure, "lsq", bits=BITS, calibration_data=calib),
            "hessian": mixed.hessian_sensitivity(fmodel, measure, "lsq", bits=BITS, samples=32)}
    layers = mixed.compute_layers(fmodel)
    first, last = layers[0].name, layers[-1].name
    frows = mixed.cost(fmodel, own_inputs=mixed.reads_own_inputs(base))["layers"]  # priced as the rows run
    budgets = {k: {"bops": v} for k, v in budgets.items()}
    budgets["@W3A3 BOPs+memory"] = {"bops": rows["uniform W3A3"]["bops_rel"], "memory": rows["uniform W3A3"]["memory_rel"]}
    for label, budget in budgets.items():
        for method, s in sens.items():
            if label != "@W3A3 BOPs" and method == "hessian":
                continue
            fixed = {first: 8, last: 8} if first_last else {}
            alloc = mixed.allocate(frows, s["scores"], budget, BITS, fixed=fixed)
            scheme = mixed.to_scheme(base, alloc["widths"], fmodel)
            train(f"mixed {method} {label}", scheme, {"widths": alloc["widths"], "solver": alloc["solver"],
                                                      "budget": budget})
    return rows


def summarize(per_seed: List[Dict[str, Dict[str, Any]]]) -> List[Dict[str, Any]]:
    out = []
    for name in per_seed[0]:
        accs = np.array([r[name]["accuracy"] for r in per_seed]) * 100
        bops = np.array([r[name]["bops_rel"] for r in per_seed])
        mem = np.array([r[name].get("memory_rel", 1.0) for r in per_seed])
        out.append({"name": name, "accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std(ddof=1))
                    if len(accs) > 1 else 0.0, "bops_rel": float(bops.mean()), "memory_rel": float(mem.mean()),
                    "widths": [r[name].get("widths") for r in per_seed]})
    return out


def fmodel_label(model_cfg: Dict[str, Any]) -> str:
    """``LeNet-5`` for the default model, else the zoo name with its depth (``resnet20-8``)."""
    if model_cfg == {"name": "lenet5"}:
        return "LeNet-5"
    return model_cfg["name"] + (f"-{model_cfg['depth']}" if model_cfg.get("depth") else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--float-epochs", type=int, default=30)
    p.add_argument("--qat-epochs", type=int, default=5)
    p.add_argument("--train-samples", type=int, default=0, help="a seeded subset of the training images (0: all)")
    p.add_argument("--test-samples", type=int, default=0, help="a seeded subset of the test images (0: all)")
    p.add_argument("--data-dir", default=None, help="a folder with mnist.npz / cifar10-jpeg.tar.gz")
    p.add_argument("--cache-dir", default=None, help="where decoded datasets are cached (CIFAR-10 JPEGs)")
    p.add_argument("--out", default="outputs/benchmarks")
    p.add_argument("--model", default="lenet5", help="a model-zoo name (qresearch.models), e.g. resnet20")
    p.add_argument("--depth", type=int, default=None, help="the zoo model's depth where it takes one (resnet20: 8)")
    p.add_argument("--all-layers", action="store_true",
                   help="every layer at the allocated/uniform width (default: first and last layers 8-bit)")
    args = p.parse_args(argv)

    import qresearch  # noqa: F401
    from qresearch.data import load_dataset

    ds = load_dataset({"name": args.dataset, "train_samples": args.train_samples or None,
                       "test_samples": args.test_samples or None, "data_dir": args.data_dir}, cache_dir=args.cache_dir)
    model_cfg = {"name": args.model, **({"depth": args.depth} if args.depth else {})}
    per_seed = [run_seed(ds, s, args.float_epochs, args.qat_epochs, lambda m: print(m, flush=True),
                         first_last=not args.all_layers, model_cfg=model_cfg) for s in args.seeds]
    table = summarize(per_seed)
    layers = "every layer n-bit" if args.all_layers else "first/last layers 8-bit"
    print(f"\n{fmodel_label(model_cfg)} on {args.dataset} ({len(ds.x_train)} train / {len(ds.x_test)} test images), "
          f"lsq ({layers}), {len(args.seeds)} seeds, float {args.float_epochs} + QAT {args.qat_epochs} epochs; "
          f"chance {100 / ds.num_classes:.0f}%")
    print(f"{'contestant':30} {'test acc %':>16} {'BOPs / W8A8':>12} {'weights / W8':>13}")
    for r in table:
        print(f"{r['name']:30} {r['accuracy_mean']:>9.2f} ± {r['accuracy_std']:<4.2f} {r['bops_rel']:>12.4f} "
              f"{r['memory_rel']:>13.4f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_tag = "" if model_cfg == {"name": "lenet5"} else "_" + fmodel_label(model_cfg).lower().replace("-", "")
    path = out / f"mixed_{args.dataset}{model_tag}{'_all_layers' if args.all_layers else ''}.json"
    path.write_text(json.dumps({"args": vars(args), "summary": table, "per_seed": per_seed}, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
