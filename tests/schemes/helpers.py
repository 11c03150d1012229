"""Inspection helpers for QAT models built by qresearch.quantize."""
from __future__ import annotations

import numpy as np

from qresearch._compat import keras
from qresearch.schemes import QuantizeInput, QuantizeWrapper, quantized_weights

COMPUTE = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
           keras.layers.SeparableConv2D, keras.layers.SeparableConv1D)


def wrappers(qmodel):
    return {l.layer.name: l for l in qmodel.layers if isinstance(l, QuantizeWrapper)}


def input_quantizers(qmodel):
    return [l for l in qmodel.layers if isinstance(l, QuantizeInput)]


def has_output_quantizer(qmodel, name) -> bool:
    w = wrappers(qmodel).get(name)
    return w is not None and w.quantize_config.output is not None


def channel_levels(value: np.ndarray, axes) -> np.ndarray:
    """Number of distinct values in each output channel (``axes``: the channel axes)."""
    axes = tuple(a % value.ndim for a in axes)
    moved = np.moveaxis(value, axes, tuple(range(value.ndim - len(axes), value.ndim)))
    flat = moved.reshape(-1, int(np.prod([value.shape[a] for a in axes])))
    return np.array([len(np.unique(flat[:, c])) for c in range(flat.shape[1])])


def levels(qmodel, layer_name, attr="kernel"):
    return channel_levels(quantized_weights(qmodel)[layer_name][attr], (-1,))


def randomize_bn(model, seed=0):
    """Give every BatchNormalization non-trivial statistics, so folding is tested for real."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0, 0.2, n).astype("float32"))
    return model


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def compute_layer_names(model):
    """Names of the QAT layers with weights a scheme quantizes (compute layers and ScaledDense)."""
    out = []
    for layer in _all_layers(model):
        if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
            out += [f"{layer.name}_depthwise", f"{layer.name}_pointwise"]  # split as TFLite runs it
        elif isinstance(layer, COMPUTE) or type(layer).__name__ == "ScaledDense":
            out.append(layer.name)
    return out
