"""Accuracy against bit width, tfmot side by side with every built-in preset (issue #12, item 5).

``python -m benchmarks.accuracy [--datasets mnist,cifar10] [--seeds 0,1] [--bits 8,4,3,2] [--presets all]
[--train-subset N|ds=N,..] [--epochs N|ds=N,..] [--recipe default|tfmot] [--set KEY=VALUE ..] [--quick]
[--resume] [--model DATASET=MODEL ..] [--compare-with DIR] [--recipe-check]``
(``make bench-accuracy``: the defaults).

Protocol (docs/benchmark-protocol.md), in one process per dataset:
- per seed, ONE float model (LeNet-5 on MNIST, a ResNet-8 on CIFAR-10: ``resnet20`` with depth 8), trained once
  with the runner's float recipe (conf/training/default.yaml ``float``; cached like the runner's baselines);
  every contestant starts from a copy of its weights;
- ONE calibration set: ``calibration_samples`` (256, the runner's) training images drawn by the seed, the same
  images in the same order for everyone (``qresearch.quantize(..., calibration_data=...)`` for the presets; tfmot's
  own recipe for tfmot: a training-mode pass over them with learning rate 0, BatchNorm statistics restored);
- ONE QAT budget: the runner's QAT recipe (``--recipe default``: conf/training/default.yaml ``qat``, Adam 5e-4
  cosine, batch 64) or tfmot's (``--recipe tfmot``: Adam 1e-4 constant), same epochs, batch size and data order
  (``Dataset.train_pipeline`` seeded by the seed) for everyone.
Contestants: tfmot's stock ``quantize_model`` (8-bit; PTQ and QAT, a reference row), tfmot's experimental
``DefaultNBitQuantizeScheme(n, n)`` (every layer n-bit), and every built-in preset (``qresearch.schemes.names()``
less ``mixed``, which is lsq under a budget) with both widths set to n as the runner's ``bits=n`` does
(``config.with_bits``), each with every layer at n bits (``first_last_bits: null``) and with the first and last
layers at 8 bits (``first_last_bits: 8``). At W8 presets and tfmot n-bit run PTQ only (the W8A8 PTQ target; both
layer policies are then the same model); at lower widths PTQ (calibration only) and QAT from it. No hardware
target: each preset as written (BN folded where the preset says so; where it stays, re-estimated after QAT over the
preset's ``bn_reestimation_batches`` as the runner does; tfmot's models as their users run them, without).

Writes, under ``--out`` (default outputs/benchmarks/accuracy/<recipe>/): ``results.jsonl`` (one line per run, appended
as soon as it finishes: a crash or a timeout loses nothing; ``--resume`` skips what is there), ``results.json``
(arguments, every per-seed record, the summary), ``table.md`` (one table per dataset, each row with the tensors it
quantizes, and the target checks) and
``accuracy_vs_bits.png``. A contestant that fails is recorded as failed, with the error, and the benchmark goes on.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchmarks import accuracy_report as report

#: dataset -> model config and default sizes (train subset, test subset; None = all), float/QAT epochs
DATASETS: Dict[str, Dict[str, Any]] = {
    "mnist": {"model": {"name": "lenet5"}, "label": "LeNet-5", "train_subset": 6000, "test_subset": None,
              "float_epochs": 8, "epochs": 1},
    # QAT 2 epochs (158 steps): the budget of issue #12's own measurement; at 1 epoch lsq's first/last-8 W2A2 drop
    # was 13.6 pt, at 2 epochs 9.1 (notes/accuracy.md, seventeenth session)
    "cifar10": {"model": {"name": "resnet20", "depth": 8}, "label": "ResNet-8", "train_subset": 5000,
                "test_subset": 2000, "float_epochs": 20, "epochs": 2},
    # no download, no files: the quick smoke run and the test
    "digits": {"model": {"name": "lenet5"}, "label": "LeNet-5", "train_subset": None, "test_subset": None,
               "float_epochs": 30, "epochs": 3},
}
RECIPES = ("default", "tfmot")
TFMOT_QAT = {"optimizer": "adam", "learning_rate": 1e-4, "schedule": "constant"}
#: --quick: a smoke run of the whole path in seconds
QUICK = {"datasets": "digits", "seeds": "0", "bits": "4", "presets": "lsq", "policies": "fl8",
         "train_subset": "digits=256", "test_subset": "digits=200", "float_epochs": "2", "epochs": "1"}
NOT_BENCHMARKED = ("mixed",)  # lsq's quantizers under a per-layer budget: with no budget it is the lsq preset


def other_recipe_of(recipe: str) -> str:
    """The recipe the robustness check compares ``recipe`` with."""
    return next(r for r in RECIPES if r != recipe)


def _per_dataset(value: Optional[str], datasets: Sequence[str], key: str, cast=int) -> Dict[str, Any]:
    """``"N"`` (every dataset) or ``"mnist=N,cifar10=M"`` -> {dataset: value} (defaults from DATASETS)."""
    out = {d: DATASETS[d][key] for d in datasets}
    if value in (None, ""):
        return out
    for part in str(value).split(","):
        name, _, v = part.rpartition("=")
        v = None if v.lower() in ("all", "none", "0") else cast(v)
        for d in ([name] if name else datasets):
            if d in out:
                out[d] = v
    return out


def parse_models(items: Optional[Sequence[str]]) -> Dict[str, Dict[str, Any]]:
    """``--model DATASET=MODEL`` -> {dataset: {"model": config, "label": text}}.

    MODEL is a registered name (``mobilenet_tiny``), a YAML mapping of a model config (``{name: resnet20,
    depth: 14}``, ``{_target_: pkg.mod.build, width: 32}``) or a dotted path to an importable builder
    ``fn(input_shape, num_classes) -> tf_keras.Model`` (a model not in the project)."""
    import yaml

    from qresearch import models

    out: Dict[str, Dict[str, Any]] = {}
    for item in items or ():
        dataset, sep, text = item.partition("=")
        dataset, text = dataset.strip(), text.strip()
        if not sep or not dataset or not text:
            raise SystemExit(f"--model {item!r}: expected DATASET=MODEL, e.g. --model cifar10=mobilenet_tiny or "
                             "--model cifar10=mypkg.models.build")
        if dataset not in DATASETS:
            raise SystemExit(f"--model {item!r}: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        value = yaml.safe_load(text)
        if isinstance(value, str):
            value = models.model_config(value)
        if not isinstance(value, dict) or bool(value.get("name")) == bool(value.get("_target_")):
            raise SystemExit(f"--model {item!r}: give a registered model name, a dotted builder path, or a "
                             "mapping with exactly one of 'name' and '_target_'")
        if value.get("name") and value["name"] not in models.MODELS:
            raise SystemExit(f"--model {item!r}: unknown model {value['name']!r}; registered: "
                             f"{', '.join(models.MODELS.names())}, or a builder's dotted path pkg.mod.fn")
        if value.get("_target_"):  # fail before anything trains, with how to fix the path
            from qresearch.errors import ConfigError
            from qresearch.plugins import import_object

            try:
                import_object(value["_target_"], "--model", models.BUILDER_CONTRACT)
            except ConfigError as exc:
                raise SystemExit(str(exc)) from exc
        options = ", ".join(f"{k}={v}" for k, v in value.items() if k not in ("name", "_target_"))
        label = str(value.get("name") or value["_target_"]) + (f" ({options})" if options else "")
        out[dataset] = {"model": value, "label": label}
    return out


def _phases(recipe: str, qat_epochs: int, float_epochs: int):
    """The runner's float and QAT phases (conf/training/default.yaml), QAT optimizer from ``recipe``."""
    import yaml

    from qresearch.config import phase_config
    from qresearch.paths import CONF_DIR

    conf = yaml.safe_load((CONF_DIR / "training" / "default.yaml").read_text())
    fl = dict(conf["float"], epochs=int(float_epochs))
    qat = dict(conf["qat"], epochs=int(qat_epochs))
    if recipe == "tfmot":
        qat.update(TFMOT_QAT)
    return phase_config(fl), phase_config(qat), int(conf.get("calibration_samples", 256)), \
        int(conf.get("eval_batch_size", 256))


# ------------------------------------------------------------------ contestants
#: Scheme keys the benchmark's own axes set (``--bits``, ``--policies``): ``--set`` may not change them.
AXIS_KEYS = ("weights.bits", "activations.bits", "first_last_bits")


def parse_settings(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``--set KEY=VALUE`` -> ``{dotted key: value}`` (the value read as YAML: ``no_fold``, ``8``, ``null``)."""
    import yaml

    settings: Dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. --set bn_folding=no_fold or "
                             "--set weights.init=max")
        if key in AXIS_KEYS:
            raise SystemExit(f"--set {key}: the benchmark sets it (--bits for the widths, --policies for "
                             "first_last_bits)")
        settings[key] = yaml.safe_load(value)
    return settings


def apply_settings(spec: Dict[str, Any], settings: Dict[str, Any]) -> Dict[str, Any]:
    """``spec`` with every dotted ``--set`` key set (the path's parents must exist in the preset)."""
    for key, value in settings.items():
        node, *path = spec, *key.split(".")
        for i, part in enumerate(path[:-1]):
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"--set {key}: {'.'.join(path[:i + 1])!r} is not a section of the preset's scheme "
                                 f"(sections: {', '.join(k for k, v in spec.items() if isinstance(v, dict))})")
            node = node[part]
        node[path[-1]] = value
    return spec


def preset_scheme(preset: str, bits: int, policy: str, settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The preset with both widths at ``bits`` (the runner's ``bits=``), the ``--set`` keys and the layer policy
    applied."""
    from qresearch import schemes
    from qresearch.config import with_bits

    settings = settings or {}
    # (--set keys win over the preset's low_bits rules, as command-line keys do in a run)
    spec = apply_settings(with_bits(schemes.get(preset).to_dict(), bits, given=settings), settings)
    spec["first_last_bits"] = 8 if policy == "fl8" else None
    return spec


def quantize_ops_of(contestant: str, settings: Optional[Dict[str, Any]] = None) -> str:
    """Which tensors a contestant quantizes: a preset's ``quantize_ops`` (after ``--set``); tfmot's schemes: every op."""
    if contestant in (report.TFMOT_STOCK, report.TFMOT_NBIT):
        return "all"
    return preset_scheme(contestant, 4, "all", settings)["quantize_ops"]


def check_settings(presets: Sequence[str], settings: Dict[str, Any]) -> None:
    """Refuse, before anything runs, a ``--set`` that leaves some preset invalid (naming the preset and why)."""
    from qresearch.errors import ConfigError
    from qresearch.schemes.spec import SchemeSpec

    for preset in presets:
        try:
            SchemeSpec.from_dict(preset_scheme(preset, 4, "all", settings))
        except ConfigError as exc:
            raise SystemExit(f"--set makes preset {preset!r} invalid: {exc} (restrict --presets, or drop the key)")


def tfmot_calibrate(qmodel, calibration: np.ndarray, batch_size: int = 32) -> None:
    """tfmot's users' calibration: one training-mode pass at learning rate 0 (quantizer ranges move, weights do
    not), BatchNorm moving statistics restored afterwards."""
    from qresearch._compat import keras

    saved = [(v, v.numpy()) for v in qmodel.variables if "moving_mean" in v.name or "moving_variance" in v.name]
    qmodel.compile(optimizer=keras.optimizers.SGD(0.0),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(calibration, np.zeros(len(calibration), np.int32), batch_size=batch_size, epochs=1, shuffle=False,
               verbose=0)
    for v, value in saved:
        v.assign(value)


def tfmot_nbit(float_model, bits: int):
    """tfmot's experimental ``DefaultNBitQuantizeScheme`` with weights and activations at ``bits`` (every layer)."""
    from qresearch._compat import tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.experimental.default_n_bit import (
        default_n_bit_quantize_scheme as n_bit)

    qk = tfmot.quantization.keras
    return qk.quantize_apply(qk.quantize_annotate_model(float_model),
                             n_bit.DefaultNBitQuantizeScheme(num_bits_weight=bits, num_bits_activation=bits))


def build_contestant(contestant: str, policy: str, bits: int, float_model, calibration: np.ndarray,
                     settings: Optional[Dict[str, Any]] = None):
    """(QAT model calibrated, quantizer-training settings or None); ``settings`` (``--set``) for presets only."""
    import qresearch
    from qresearch._compat import tfmot
    from qresearch.config import quantizer_training

    if contestant == report.TFMOT_STOCK:
        q = tfmot.quantization.keras.quantize_model(float_model)
        tfmot_calibrate(q, calibration)
        return q, None
    if contestant == report.TFMOT_NBIT:
        q = tfmot_nbit(float_model, bits)
        tfmot_calibrate(q, calibration)
        return q, None
    spec = preset_scheme(contestant, bits, policy, settings)
    return qresearch.quantize(float_model, spec, calibration_data=calibration), quantizer_training(spec)


def reestimate_as_the_runner(qmodel, ds, batch_size: int, seed: int) -> Optional[Dict[str, Any]]:
    """A preset's BN re-estimation after QAT (its ``bn_reestimation_batches`` where BN stays), as the runner runs
    it; None for tfmot's models (their users do not re-estimate) and where the scheme asks for none."""
    from qresearch.schemes.bn_reestimate import reestimate_on_dataset, scheme_batches

    batches = scheme_batches(qmodel)
    return reestimate_on_dataset(qmodel, ds, batches, int(batch_size), seed) if batches else None


def plan(presets: Sequence[str], bits: Sequence[int], policies: Sequence[str]) -> List[Tuple[str, str, int, bool]]:
    """(contestant, policy, bits, with QAT) in the order they run: per width, tfmot then the presets."""
    runs = []
    for b in bits:
        if b == 8:
            runs.append((report.TFMOT_STOCK, "all", 8, True))
        runs.append((report.TFMOT_NBIT, "all", b, b != 8))
        for p in presets:
            for pol in (("all",) if b == 8 else policies):
                runs.append((p, pol, b, b != 8))
    return runs


# ------------------------------------------------------------------ one dataset, one seed
def float_model(ds, ds_cfg, model_cfg, phase, seed: int, cache_dir: Optional[str]):
    """The seed's float model (the runner's float-baseline cache when ``cache_dir``), its weights."""
    from qresearch import models, training
    from qresearch._compat import keras

    def build():
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        return models.build_model(model_cfg, ds.input_shape, ds.num_classes)

    def train(m):
        return training.fit(m, ds, phase, "float", seed, verbose=0)

    key = training.baseline_key(ds_cfg, model_cfg, phase, seed, data_fingerprint=ds.fingerprint())
    model, info = training.float_baseline(build, train, key, cache_dir or None)
    return model.get_weights(), info


def run_one(ds, model_cfg, weights, calibration, contestant: str, policy: str, bits: int, with_qat: bool,
            qat_phase, seed: int, eval_batch: int, settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """PTQ and (``with_qat``) QAT of one contestant from the seed's float weights; failures recorded."""
    from qresearch import models, training
    from qresearch._compat import keras
    from qresearch.evaluation import test_accuracy

    rec: Dict[str, Any] = {"contestant": contestant, "policy": policy, "bits": bits, "ptq": None, "qat": None,
                           "qat_skipped": not with_qat, "status": "failed", "error": None,
                           "quantize_ops": quantize_ops_of(contestant, settings)}
    t0 = time.perf_counter()
    try:
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        fmodel = models.build_model(model_cfg, ds.input_shape, ds.num_classes)
        fmodel.set_weights(weights)
        q, qtrain = build_contestant(contestant, policy, bits, fmodel, calibration, settings)
        rec["ptq"] = test_accuracy(q, ds, eval_batch)
        rec["ptq_s"] = time.perf_counter() - t0
        if with_qat:
            keras.utils.set_random_seed(seed)
            fit = training.fit(q, ds, qat_phase, "qat", seed, verbose=0, quantizer=qtrain)
            rec["bn_reestimation"] = reestimate_as_the_runner(q, ds, qat_phase.batch_size, seed)
            rec["qat"] = test_accuracy(q, ds, eval_batch)
            rec["qat_steps"], rec["qat_step_s"] = fit["steps"], fit["step_time_s"]
            if not math.isfinite(rec["qat"]) or not all(np.isfinite(w).all() for w in q.get_weights()):
                raise FloatingPointError("QAT left non-finite weights")
        rec["status"] = "completed"
    except Exception as exc:  # one contestant's failure must not end the benchmark
        rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        rec["traceback"] = traceback.format_exc()[-4000:]
        if with_qat and rec["qat"] is not None and not math.isfinite(rec["qat"]):
            rec["qat"] = None
    rec["wall_s"] = time.perf_counter() - t0
    return rec


# ------------------------------------------------------------------ outputs
def _key(r: Dict[str, Any]) -> Tuple:
    return (r["dataset"], int(r["seed"]), r["contestant"], r["policy"], int(r["bits"]))


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by a kill
                pass
    return out


def write_outputs(out: Path, records: List[Dict[str, Any]], args: Dict[str, Any], bits: Sequence[int],
                  other: Optional[Path] = None, other_recipe: str = "", plot: bool = True) -> Dict[str, Any]:
    """results.json, table.md (tables + target checks) and the plot, from every record so far."""
    known: Dict[str, str] = {}
    for r in records:  # records written before the field existed: the contestant's scheme as it is now
        if "quantize_ops" not in r:
            if r["contestant"] not in known:
                known[r["contestant"]] = quantize_ops_of(r["contestant"], args.get("settings") or {})
            r["quantize_ops"] = known[r["contestant"]]
    summary = report.summarize(records)
    other_summary = None
    if other is not None and other.is_file():
        other_summary = report.summarize(json.loads(other.read_text())["records"])
    checks = report.check_targets(summary, other_summary, f"recipe {other_recipe}")
    text = [f"# Accuracy vs bits: recipe `{args.get('recipe')}`\n",
            f"`python -m benchmarks.accuracy {args.get('argv', '')}`\n"]
    for ds in summary:
        text.append(report.markdown_table(summary, ds, bits))
    text.append("## Targets (issue #12)\n")
    text.append(report.checks_text(checks))
    (out / "table.md").write_text("\n".join(text))
    plain = {ds: {**{k: v for k, v in s.items() if k != "cells"},
                  "cells": [{"contestant": k[0], "policy": k[1], "bits": k[2], "phase": k[3], **c}
                            for k, c in s["cells"].items()]} for ds, s in summary.items()}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps({"args": args, "records": records, "summary": plain, "checks": checks},
                              indent=1, default=str))
    os.replace(tmp, out / "results.json")
    if plot:
        report.plot(summary, out / "accuracy_vs_bits.png")
    return {"summary": summary, "checks": checks}


#: The presets the recipe robustness check compares (``accuracy_report.relations``), with tfmot n-bit.
ROBUSTNESS_PRESETS = report.LEARNED + ("minmax_nbit",)


def recipe_check_run(argv: Optional[Sequence[str]], presets: Sequence[str], bits: Sequence[int], out: Path,
                     other_recipe: str) -> Optional[Tuple[List[str], Path, str]]:
    """``--recipe-check``: (the other recipe's arguments, its output folder, its presets), or None when nothing
    here is compared (no W4/W3/W2, none of ``ROBUSTNESS_PRESETS``). The arguments are this run's with the recipe,
    the presets, the widths and the folder replaced (argparse keeps the last of a repeated option)."""
    widths = [b for b in bits if b in (4, 3, 2)]
    compared = [p for p in ROBUSTNESS_PRESETS if p in presets]
    if not widths or not compared:
        return None
    # its own folder, never the sibling <other recipe> one, whose full run (if any) it must not overwrite
    folder = Path(f"{out}-{other_recipe}")
    given = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--compare-with=")]
    if "--compare-with" in given:   # the other run compares nothing itself
        at = given.index("--compare-with")
        del given[at:at + 2]
    return given + ["--recipe", other_recipe, "--presets", ",".join(compared), "--bits", ",".join(map(str, widths)),
                    "--out", str(folder), "--no-recipe-check"], folder, ",".join(compared)


def compared_results(folder: Path, recipe: str) -> Tuple[Path, str]:
    """``--compare-with``: (its results.json, its recipe); refuses a folder without results or of the same recipe
    (the robustness check compares the two optimizers)."""
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"--compare-with {folder}: no results.json there; run the benchmark with "
                         f"--recipe {other_recipe_of(recipe)} --out {folder} first")
    theirs = (json.loads(path.read_text()).get("args") or {}).get("recipe")
    if theirs == recipe:
        raise SystemExit(f"--compare-with {folder}: its results are recipe {theirs!r}, as this run's; the robustness "
                         f"check compares the two recipes ({', '.join(RECIPES)})")
    return path, str(theirs or other_recipe_of(recipe))


# ------------------------------------------------------------------ main
def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="mnist,cifar10", help="comma list of mnist, cifar10, digits")
    p.add_argument("--model", dest="models", action="append", default=[], metavar="DATASET=MODEL",
                   help="another model for a dataset (repeatable): a registered name (--model cifar10=mobilenet_tiny), "
                        "a YAML model config ('cifar10={name: resnet20, depth: 14}') or an importable builder "
                        "pkg.mod.fn(input_shape, num_classes) (defaults: mnist LeNet-5, cifar10 ResNet-8)")
    p.add_argument("--seeds", default="0,1", help="comma list (>= 2 for mean ± std)")
    p.add_argument("--bits", default="8,4,3,2", help="widths of weights = activations; 8: PTQ only")
    p.add_argument("--presets", default="all", help="comma list of built-in presets, or 'all' (less mixed)")
    p.add_argument("--policies", default="all,fl8", help="layer policies: all (every layer n-bit), fl8 "
                                                         "(first/last layers 8-bit)")
    p.add_argument("--train-subset", default=None, help="training images: N or mnist=N,cifar10=M (defaults: "
                   + ", ".join(f"{d}={c['train_subset']}" for d, c in DATASETS.items()) + ")")
    p.add_argument("--test-subset", default=None, help="test images: N or ds=N,... ('all': every test image)")
    p.add_argument("--epochs", default=None, help="QAT epochs: N or ds=N,... (defaults: "
                   + ", ".join(f"{d}={c['epochs']}" for d, c in DATASETS.items()) + ")")
    p.add_argument("--float-epochs", default=None, help="float epochs: N or ds=N,...")
    p.add_argument("--recipe", default="default", choices=RECIPES,
                   help="QAT optimizer: default (the runner's, Adam 5e-4 cosine) or tfmot (Adam 1e-4 constant)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (digits, lsq + tfmot n-bit, W4, 1 seed)")
    p.add_argument("--resume", action="store_true", help="keep results.jsonl's runs and run only the rest")
    p.add_argument("--out", default=None, help="output folder (default outputs/benchmarks/accuracy/<recipe>)")
    p.add_argument("--cache-dir", default=None,
                   help="float-baseline cache (default $QRESEARCH_CACHE_DIR or outputs/cache; '' = none)")
    p.add_argument("--data-dir", default=None, help="a folder with mnist.npz / cifar10-jpeg.tar.gz")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="change every preset's scheme (dotted key, YAML value; repeatable), e.g. "
                        "--set bn_folding=no_fold, --set weights.init=max; tfmot's rows are unchanged. Use its own "
                        "--out: results are keyed without it")
    p.add_argument("--compare-with", default=None, metavar="DIR",
                   help="the output folder of the same benchmark under the other --recipe (its results.json), for "
                        "the robustness check (default: outputs/benchmarks/accuracy/<other recipe> when --out is "
                        "not given)")
    p.add_argument("--recipe-check", action=argparse.BooleanOptionalAction, default=False,
                   help="then run the other --recipe on what the recipe robustness check compares (lsq, lsq_plus, "
                        "pact_lsq, minmax_nbit and tfmot n-bit at W4/W3/W2, same datasets, seeds, policies, budget) "
                        "into <out>-<other recipe> (e.g. outputs/benchmarks/accuracy/default-tfmot) and add the "
                        "check (make bench-accuracy does)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rewrite table, checks, JSON and plot from the output folder's results.jsonl "
                        "(e.g. once the other recipe's results exist, for the robustness check)")
    args = p.parse_args(argv)
    if args.quick:  # the quick settings, except where given explicitly
        for k, v in QUICK.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    return args


def main(argv: Optional[Sequence[str]] = None, log: Callable[[str], None] = lambda m: print(m, flush=True)
         ) -> Dict[str, Any]:
    args = parse(argv)
    import qresearch  # noqa: F401  (tf_keras before TensorFlow)
    from qresearch import schemes
    from qresearch._compat import tf
    from qresearch.data import load_dataset

    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise SystemExit(f"--datasets: unknown {unknown}; known: {', '.join(DATASETS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    bits = [int(b) for b in args.bits.split(",") if b]
    policies = [p for p in args.policies.split(",") if p]
    presets = [p for p in schemes.names() if p not in NOT_BENCHMARKED] if args.presets == "all" else \
        [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in schemes.names()]
    if unknown:
        raise SystemExit(f"--presets: unknown {unknown}; built-in: {', '.join(schemes.names())}")
    settings = parse_settings(args.settings)
    check_settings(presets, settings)
    chosen_models = parse_models(args.models)
    train_n = _per_dataset(args.train_subset, datasets, "train_subset")
    test_n = _per_dataset(args.test_subset, datasets, "test_subset")
    epochs = _per_dataset(args.epochs, datasets, "epochs")
    float_epochs = _per_dataset(args.float_epochs, datasets, "float_epochs")
    root = Path(os.environ.get("QRESEARCH_OUTPUT_DIR", "outputs")) / "benchmarks" / "accuracy"
    out = Path(args.out) if args.out else root / ("quick" if args.quick else args.recipe)
    out.mkdir(parents=True, exist_ok=True)
    cache = args.cache_dir if args.cache_dir is not None else \
        os.environ.get("QRESEARCH_CACHE_DIR", str(Path(os.environ.get("QRESEARCH_OUTPUT_DIR", "outputs")) / "cache"))
    other_recipe = other_recipe_of(args.recipe)
    other = (out.parent / other_recipe / "results.json") if not args.out and not args.quick else None
    if args.compare_with is not None:
        other, other_recipe = compared_results(Path(args.compare_with), args.recipe)
    check_run = recipe_check_run(argv, presets, bits, out, other_recipe) if args.recipe_check else None
    if check_run is not None:
        other = check_run[1] / "results.json"
    argv_text = " ".join(sys.argv[1:] if argv is None else list(argv))
    meta = {"argv": argv_text, "recipe": args.recipe, "datasets": datasets, "seeds": seeds, "bits": bits,
            "presets": presets, "policies": policies, "settings": settings, "train_subset": train_n,
            "test_subset": test_n,
            "qat_epochs": epochs, "float_epochs": float_epochs, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "tensorflow": tf.__version__, "cpus": os.cpu_count()}
    jsonl = out / "results.jsonl"
    if args.report_only:
        old = out / "results.json"
        meta = json.loads(old.read_text())["args"] if old.is_file() else meta
        write_outputs(out, read_jsonl(jsonl), meta, meta.get("bits", bits), other, other_recipe,
                      plot=not args.no_plot)
        log((out / "table.md").read_text())
        return {"out": out}
    records = read_jsonl(jsonl) if args.resume else []
    if not args.resume and jsonl.exists():
        jsonl.unlink()
    done = {_key(r) for r in records}
    tf.config.experimental.enable_op_determinism()
    t_start = time.perf_counter()
    for name in datasets:
        fl_phase, qat_phase, calib_n, eval_batch = _phases(args.recipe, epochs[name], float_epochs[name])
        ds_cfg = {"name": name, "train_samples": train_n[name], "test_samples": test_n[name], "split_seed": 0}
        if args.data_dir:
            ds_cfg["data_dir"] = args.data_dir
        try:
            ds = load_dataset(ds_cfg, cache_dir=cache or None)
        except Exception as exc:  # a dataset that cannot be loaded here must not lose the others
            log(f"{name}: not loaded ({type(exc).__name__}: {exc}); skipped")
            continue
        chosen = chosen_models.get(name) or DATASETS[name]
        model_cfg, label = chosen["model"], chosen["label"]
        meta.setdefault("data", {})[name] = {"train": ds.train_size, "test": ds.test_size, "model": label,
                                             "model_config": model_cfg, "calibration_samples": calib_n,
                                             "qat": {k: getattr(v, "value", v) for k, v in vars(qat_phase).items()},
                                             "float": {k: getattr(v, "value", v) for k, v in vars(fl_phase).items()}}
        log(f"\n{name} / {label}: {ds.train_size} train, {ds.test_size} test images; float {fl_phase.epochs} "
            f"epochs, QAT {qat_phase.epochs} epochs {qat_phase.optimizer.value} {qat_phase.learning_rate:g} "
            f"{qat_phase.schedule.value}, batch {qat_phase.batch_size}; calibration {calib_n} images")
        runs = plan(presets, bits, policies)
        for seed in seeds:
            todo = [r for r in runs if (name, seed, r[0], r[1], r[2]) not in done]
            if not todo:
                continue
            t0 = time.perf_counter()
            weights, info = float_model(ds, ds_cfg, model_cfg, fl_phase, seed, cache)
            from qresearch import models
            from qresearch._compat import keras
            from qresearch.evaluation import test_accuracy

            keras.backend.clear_session()
            fm = models.build_model(model_cfg, ds.input_shape, ds.num_classes)
            fm.set_weights(weights)
            float_acc = test_accuracy(fm, ds, eval_batch)
            log(f"seed {seed}: float {100 * float_acc:.2f}% (cache {info.get('cache')}, "
                f"{time.perf_counter() - t0:.0f}s)")
            calibration = ds.calibration(calib_n, seed)
            for contestant, policy, b, with_qat in todo:
                rec = run_one(ds, model_cfg, weights, calibration, contestant, policy, b, with_qat, qat_phase, seed,
                              eval_batch, settings)
                rec.update(dataset=name, model=label, num_classes=ds.num_classes, seed=seed, float=float_acc,
                           recipe=args.recipe)
                records.append(rec)
                with open(jsonl, "a") as fh:
                    fh.write(json.dumps(rec, default=str) + "\n")
                done.add(_key(rec))
                qat = "" if not with_qat else f" QAT {100 * rec['qat']:.1f}" if rec["qat"] is not None else " QAT –"
                ptq = f"{100 * rec['ptq']:.1f}" if rec["ptq"] is not None else "–"
                log(f"  seed {seed} W{b}A{b} {contestant:22s} {policy:3s} PTQ {ptq}{qat} ({rec['wall_s']:.0f}s)"
                    + (f"  FAILED {rec['error'][:160]}" if rec["status"] != "completed" else ""))
                write_outputs(out, records, meta, bits, other, other_recipe, plot=False)
            write_outputs(out, records, meta, bits, other, other_recipe, plot=not args.no_plot)
    if check_run is not None:
        log(f"\nrecipe check: {other_recipe} on tfmot n-bit and {check_run[2]} -> {check_run[1]}")
        main(check_run[0], log=log)
    meta["wall_s"] = time.perf_counter() - t_start
    result = write_outputs(out, records, meta, bits, other, other_recipe, plot=not args.no_plot)
    log("\n" + (out / "table.md").read_text())
    log(f"wrote {out / 'table.md'}, {out / 'results.json'}, {jsonl}"
        + ("" if args.no_plot else f", {out / 'accuracy_vs_bits.png'}") + f" ({meta['wall_s']:.0f}s)")
    return {**result, "out": out, "records": records}


if __name__ == "__main__":
    main()
