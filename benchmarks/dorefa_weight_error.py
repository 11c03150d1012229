"""How far DoReFa's weight transform (Zhou et al. 2016, eq. 9; ``weight_scale: max``, per channel) moves a float
model's kernels at a given width, against the same grid without the tanh (notes/accuracy.md).

``python -m benchmarks.dorefa_weight_error --weights FLOAT_WEIGHTS.h5 [--model resnet20 --depth 8 --bits 8]``
(the accuracy benchmark's cached float models: ``<cache-dir>/float/<key>/weights.h5``).
"""
from __future__ import annotations

import argparse

import numpy as np


def relative_errors(kernel: np.ndarray, bits: int):
    """``(dorefa, linear)``: ``||w_q - w|| / ||w||`` for eq. 9 times max|w| per output channel, and for the same
    ``2^bits - 1``-level grid over ``[-max|w|, max|w|]`` applied to ``w`` directly."""
    red = tuple(range(kernel.ndim - 1))
    levels = float(2**bits - 1)
    scale = np.abs(kernel).max(axis=red, keepdims=True)
    t = np.tanh(kernel)
    unit = 2 * np.round((t / (2 * np.abs(t).max(axis=red, keepdims=True)) + 0.5) * levels) / levels - 1
    linear = 2 * np.round((kernel / (2 * scale) + 0.5) * levels) / levels - 1
    norm = np.linalg.norm(kernel)
    return np.linalg.norm(unit * scale - kernel) / norm, np.linalg.norm(linear * scale - kernel) / norm


def main(argv=None) -> int:
    from qresearch import models

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--weights", required=True)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--input-shape", default="32,32,3")
    p.add_argument("--bits", type=int, default=8)
    args = p.parse_args(argv)
    model = models.build_model({"name": args.model, "depth": args.depth},
                               tuple(int(v) for v in args.input_shape.split(",")), 10)
    model.load_weights(args.weights)
    print("| layer | max abs w | DoReFa eq. 9 error | same grid, no tanh |\n|---|---:|---:|---:|")
    for layer in model.layers:
        kernel = getattr(layer, "depthwise_kernel", None)
        kernel = getattr(layer, "kernel", None) if kernel is None else kernel
        if kernel is None:
            continue
        w = kernel.numpy()
        dorefa, linear = relative_errors(w, args.bits)
        print(f"| {layer.name} | {np.abs(w).max():.3f} | {100 * dorefa:.2f}% | {100 * linear:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
