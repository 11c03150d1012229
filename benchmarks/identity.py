"""``python -m benchmarks.identity save|compare DIR [preset,preset...]``: results that must stay bit-identical across a
speed change. For every preset on LeNet-5 and mobilenet_tiny: calibrate, train a few steps (Adam, fixed
data), then save the trained weights, the training-mode outputs and the inference outputs (the
integer-kernel emulation for tflite_int8; the fake-quant path for the others) and the export-mode
outputs. ``compare`` re-runs and asserts every array is equal to the saved one (np.array_equal).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

MODELS = {"lenet5": (28, 28, 1), "mobilenet_tiny": (32, 32, 3)}
STEPS = 4


def results(model_name, shape, preset):
    import qresearch
    from qresearch import models
    from qresearch._compat import keras
    from qresearch import kernels as integer
    from qresearch.hardware import deploy

    rng = np.random.default_rng(1)
    x = rng.random((128,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, 128).astype(np.int32)
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    m = models.build_model({"name": model_name}, shape, 10)
    q = qresearch.quantize(m, preset, calibration_data=x[:32])
    q.compile(optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x, y, batch_size=32, epochs=1, steps_per_epoch=STEPS, shuffle=False, verbose=0)
    out = {f"w{i}": w for i, w in enumerate(q.get_weights())}
    out["train_out"] = q(x[:32], training=True).numpy()
    out["infer_out"] = q.predict(x[:64], batch_size=32, verbose=0)
    out["infer_eager"] = q(x[:16], training=False).numpy()
    with integer.export_mode():
        out["export_out"] = q(x[:32], training=False).numpy()
    # deploy.simulate as verify runs it: each kernel-set emulation, a partial last batch
    for kernels, emulation in deploy.EMULATIONS.items():
        with integer.emulated_kernels(emulation):
            out[f"simulate_{kernels}"] = deploy.simulate(q, x[:40], batch_size=16)
    return out


def main(argv):
    mode, folder = argv[0], Path(argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    from qresearch import schemes

    only = set(argv[2].split(",")) if len(argv) > 2 else None
    bad = 0
    for model_name, shape in MODELS.items():
        for preset in schemes.names():
            if only and preset not in only:
                continue
            res = results(model_name, shape, preset)
            path = folder / f"{model_name}-{preset}.npz"
            if mode == "save":
                np.savez(path, **res)
                print(f"saved {path.name}: {len(res)} arrays", flush=True)
                continue
            ref = np.load(path)
            diff = [k for k in ref.files if k not in res or not np.array_equal(ref[k], res[k], equal_nan=True)]
            diff += [k for k in res if k not in ref.files]
            bad += bool(diff)
            print(f"{model_name:15s} {preset:12s} {'IDENTICAL' if not diff else 'DIFFERS: ' + ', '.join(diff[:8])}",
                  flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
