"""``python -m benchmarks.parity [--seeds 0:20] [--apps NAME,...] [--kernels SET,...]``: deployment parity on models
the tests do not have.

Each seed draws a small random CNN from the layers real networks are built of (conv / depthwise / separable convs with
BN and ReLU, ReLU6, hard swish or sigmoid; residual Adds, concatenations, squeeze-excite products, pools; leaky ReLUs,
upsampling, transposed convs, Maximum / Subtract merges; channel counts that are and are not multiples of 8), with
random BN statistics. ``--apps`` takes keras.applications networks instead (random weights, 32x32 where the network
allows). Every model is quantized with the tflite_int8 preset, calibrated on random images, converted, and compared by
``hardware.verify`` with its simulation under each LiteRT kernel set (the simulation emulates that set's integer
kernels): max |simulated - deployed| in output LSB, the fraction within 1 LSB, argmax agreement and whether the model
is integer-only. A kernel set that cannot run a model (``KernelSetError``: XNNPACK's scale bounds, the reference
softmax's) is a row saying why; a model that fails to build, quantize or convert is a row with its error; the run goes
on.

Prints one table and writes it as JSON under ``outputs/benchmarks/``. A benchmark, not a test: it takes minutes.
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

KERNEL_SETS = ("builtin_without_default_delegates", "builtin", "builtin_ref")

#: keras.applications networks and the smallest input each accepts (random weights, 4 classes).
APPS: Dict[str, tuple] = {
    "MobileNet": (32, 32, 3), "MobileNetV2": (32, 32, 3), "MobileNetV3Small": (32, 32, 3),
    "MobileNetV3Large": (32, 32, 3), "EfficientNetB0": (32, 32, 3), "EfficientNetV2B0": (32, 32, 3),
    "ResNet50": (32, 32, 3), "ResNet50V2": (32, 32, 3), "DenseNet121": (32, 32, 3), "NASNetMobile": (32, 32, 3),
    "RegNetX002": (32, 32, 3), "RegNetY002": (32, 32, 3), "VGG16": (32, 32, 3), "Xception": (71, 71, 3),
    "InceptionV3": (75, 75, 3),
}


# ---------------------------------------------------------------------------------------------- random models
def _activation(rng, L, x):
    kind = rng.choice(["relu", "relu6", "hard_swish", "sigmoid", "none"], p=[0.35, 0.3, 0.15, 0.1, 0.1])
    if kind == "relu":
        return L.ReLU()(x)
    if kind == "relu6":
        return L.ReLU(6.0)(x)
    if kind == "hard_swish":
        import qresearch
        return L.Activation(qresearch.hard_swish)(x)
    if kind == "sigmoid":
        return L.Activation("sigmoid")(x)
    return x


def _channels(rng) -> int:
    return int(rng.choice([4, 8, 11, 16, 20, 24, 30]))


def _conv_bn_act(rng, L, x):
    y = L.Conv2D(_channels(rng), int(rng.choice([1, 3])), padding="same", use_bias=False)(x)
    return _activation(rng, L, L.BatchNormalization()(y))


def _depthwise(rng, L, x):
    y = L.DepthwiseConv2D(int(rng.choice([3, 5])), strides=int(rng.choice([1, 2])), padding="same",
                          use_bias=False)(x)
    return _activation(rng, L, L.BatchNormalization()(y))


def _separable(rng, L, x):
    y = L.SeparableConv2D(_channels(rng), 3, padding="same")(x)
    return _activation(rng, L, y)


def _residual(rng, L, x):
    y = L.Conv2D(x.shape[-1], 3, padding="same", use_bias=False)(x)
    y = L.BatchNormalization()(y)
    return L.Add()([x, y])


def _concat(rng, L, x):
    a = L.Conv2D(_channels(rng), 1, activation="relu")(x)
    b = L.Conv2D(_channels(rng), 3, padding="same")(x)
    return L.Concatenate()([a, b])


def _squeeze_excite(rng, L, x):
    c = x.shape[-1]
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(max(2, c // 4), 1, activation="relu")(s)
    s = L.Conv2D(c, 1, activation="sigmoid")(s)
    return L.Multiply()([x, s])


def _pool(rng, L, x):
    if x.shape[1] < 4:
        return x
    pool = L.MaxPooling2D if rng.random() < 0.5 else L.AveragePooling2D
    return pool(2)(x)


def _leaky(rng, L, x):
    y = L.Conv2D(_channels(rng), 3, padding="same")(x)
    return L.LeakyReLU(float(rng.choice([0.1, 0.2, 0.3])))(y)


def _upsample(rng, L, x):
    if x.shape[1] > 10:
        return x
    y = L.UpSampling2D(2, interpolation=str(rng.choice(["nearest", "bilinear"])))(x)
    return L.Conv2D(_channels(rng), 3, strides=2, padding="same", activation="relu")(y)


def _transpose(rng, L, x):
    if x.shape[1] > 10:
        return x
    y = L.Conv2DTranspose(_channels(rng), 3, strides=2, padding="same", activation="relu")(x)
    return L.MaxPooling2D(2)(y)


def _extremum(rng, L, x):
    a = L.Conv2D(x.shape[-1], 1)(x)
    merge = L.Maximum if rng.random() < 0.5 else L.Subtract
    return merge()([x, a])


BLOCKS: Dict[str, Callable] = {"conv_bn_act": _conv_bn_act, "depthwise": _depthwise, "separable": _separable,
                               "residual": _residual, "concat": _concat, "squeeze_excite": _squeeze_excite,
                               "pool": _pool, "leaky": _leaky, "upsample": _upsample, "transpose": _transpose,
                               "extremum": _extremum}


def random_model(seed: int):
    """A random CNN (``BLOCKS``, 2-5 of them after a conv stem) and the names of its blocks."""
    from qresearch._compat import keras

    L = keras.layers
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    size = int(rng.choice([12, 16, 20]))
    inputs = keras.Input((size, size, int(rng.choice([1, 3]))))
    x = L.Conv2D(_channels(rng), 3, strides=int(rng.choice([1, 2])), padding="same")(inputs)
    x = _activation(rng, L, x)
    names = [str(n) for n in rng.choice(list(BLOCKS), size=int(rng.integers(2, 6)))]
    for name in names:
        x = BLOCKS[name](rng, L, x)
    x = L.GlobalAveragePooling2D()(x) if rng.random() < 0.7 else L.Flatten()(x)
    model = keras.Model(inputs, L.Dense(int(rng.choice([4, 10])))(x), name=f"parity_{seed}")
    return _trained_batch_norms(model, rng), names


def _trained_batch_norms(model, rng):
    """``model`` with random BN statistics, as a trained net has, not the identity of a fresh one (with which
    random-weight keras.applications networks give constant logits)."""
    from qresearch._compat import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.center and layer.scale:
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c),
                               rng.uniform(0.2, 2.0, c)])
    return model


def app_model(name: str):
    from qresearch._compat import keras

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(input_shape=APPS[name], weights=None, classes=4)
    return _trained_batch_norms(model, np.random.default_rng(0)), [name]


# ---------------------------------------------------------------------------------------------- measurement
def measure(model, seed: int, kernel_sets, n_images: int = 24, high: float = None) -> List[Dict[str, Any]]:
    """``verify`` rows of one model under each kernel set (tflite_int8 preset, calibrated on 16 random images in
    ``[0, high]``; None: 255 or 1, drawn)."""
    import qresearch
    from qresearch import hardware as hw

    rng = np.random.default_rng(seed)
    draw = 255.0 if rng.random() < 0.5 else 1.0          # raw pixels or scaled ones (drawn either way: a seed's
    high = draw if high is None else high                # images stay the same whether or not ``high`` is given)
    x = rng.uniform(0.0, high, (n_images,) + tuple(model.input_shape[1:])).astype("float32")
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=x[:16])
    flat = None
    rows = []
    for kernels in kernel_sets:
        try:
            r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)), kernels=kernels, tflite_model=flat,
                          return_model=True)
        except hw.KernelSetError as e:     # a kernel set that cannot run this model says why; the others still run
            rows.append({"kernels": kernels, "refused": str(e)[:300]})
            continue
        flat = r["tflite_model"]
        rows.append({"kernels": kernels, "max_lsb": round(float(r["max_abs_diff_lsb"]), 4),
                     "within_1lsb": r.get("within_1lsb_fraction"), "argmax": r["argmax_agreement"],
                     "integer_only": r["integer_only"]})
    return rows


def run(models, kernel_sets) -> List[Dict[str, Any]]:
    results = []
    for label, build, seed, high in models:
        t0 = time.perf_counter()
        try:
            model, blocks = build()
            rows = measure(model, seed, kernel_sets, high=high)
        except Exception as e:     # one model's failure is a row, not the end of the run
            rows = [{"kernels": "-", "error": f"{type(e).__name__}: {str(e)[:300]}",
                     "traceback": traceback.format_exc(limit=3)}]
            blocks = []
        for row in rows:
            row.update(model=label, blocks=",".join(blocks), seconds=round(time.perf_counter() - t0, 1))
            results.append(row)
            _print_row(row)
    return results


def _print_row(row):
    if "error" in row or "refused" in row:
        print(f"{row['model']:<18} {row['kernels']:<34} " + (f"ERROR {row['error']}" if "error" in row else
                                                           f"REFUSED {row['refused']}"), flush=True)
        return
    print(f"{row['model']:<18} {row['kernels']:<34} max {row['max_lsb']:<8} within1 {row['within_1lsb']:<8} "
          f"argmax {row['argmax']:<6} integer_only {row['integer_only']}  [{row['blocks']}]", flush=True)


def summary(results) -> Dict[str, Any]:
    out: Dict[str, Any] = {"errors": sorted({r["model"] for r in results if "error" in r})}
    for kernels in sorted({r["kernels"] for r in results if "error" not in r}):
        refused = sorted(r["model"] for r in results if r["kernels"] == kernels and "refused" in r)
        rows = [r for r in results if r["kernels"] == kernels and "max_lsb" in r]
        if not rows:
            out[kernels] = {"models": 0, "refused": refused}
            continue
        out[kernels] = {"models": len(rows), "refused": refused, "bit_exact": sum(r["max_lsb"] < 0.01 for r in rows),
                        "worst": max(rows, key=lambda r: r["max_lsb"])["model"],
                        "worst_lsb": max(r["max_lsb"] for r in rows)}
    return out


def _seeds(spec: str) -> List[int]:
    if ":" in spec:
        a, b = spec.split(":")
        return list(range(int(a), int(b)))
    return [int(s) for s in spec.split(",") if s]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0:20", help="random models: a range a:b or a list (default 0:20)")
    p.add_argument("--apps", default="", help="keras.applications networks instead (comma list, or 'all')")
    p.add_argument("--kernels", default=",".join(KERNEL_SETS), help="LiteRT kernel sets to verify under")
    p.add_argument("--out", default="outputs/benchmarks", help="where the JSON goes")
    args = p.parse_args(argv)
    kernel_sets = [k for k in args.kernels.split(",") if k]
    if args.apps:
        names = list(APPS) if args.apps == "all" else args.apps.split(",")
        # pixels in [0, 255]: in [0, 1] most of these random-weight networks give constant logits (no parity to see)
        models = [(n, (lambda n=n: app_model(n)), 0, 255.0) for n in names]
    else:
        models = [(f"seed {s}", (lambda s=s: random_model(s)), s, None) for s in _seeds(args.seeds)]
    t0 = time.perf_counter()
    results = run(models, kernel_sets)
    report = {"summary": summary(results), "results": results, "seconds": round(time.perf_counter() - t0)}
    print(json.dumps(report["summary"], indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"parity-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {path} ({report['seconds']} s)")
    return report


if __name__ == "__main__":
    main()
