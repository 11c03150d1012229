"""BatchNormalization in inference mode as a per-channel affine, and folding it into the layer before it.

One formula: ``g = γ/√(σ²+ε)``, ``b' = β + (b-μ)·g``. Folded into a linear conv/dense with bias ``b``:
``w' = w·g`` (over the weight's output-channel axis, per the layer's fold rule) and ``b'``. A BN that
cannot be folded becomes a ``ChannelAffine`` with kernel ``g`` and bias ``b'`` for ``b = 0``.
The fold rules are registered per layer kind in ``layers.py`` (``LayerSpec.fold``). The factor and the rules
take numpy arrays (the static fold, at build time) or TF tensors (``BatchStatsFold``, every step: the folded
kernel is recomputed from the trained weights), with the same float32 operations in the same order.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from qresearch._compat import tf


def _is_tf(x) -> bool:
    return not isinstance(x, (np.ndarray, np.generic, float, int))


def fold_factor(gamma, variance, epsilon):
    """``γ/√(σ²+ε)``, per channel."""
    if _is_tf(variance):
        return gamma / tf.sqrt(variance + epsilon)
    return (gamma / np.sqrt(variance + epsilon)).astype(np.float32)


def _reshape(g, shape):
    if _is_tf(g):
        return tf.reshape(g, shape)
    return np.reshape(g, shape)


def bn_affine(bn, bias=0.0) -> Tuple[np.ndarray, np.ndarray]:
    """``(g, b')`` per channel (float32) of ``bn`` in inference mode after a bias ``bias``:
    ``bn(x + bias) = x·g + b'``."""
    mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    gamma = bn.gamma.numpy() if bn.gamma is not None else np.ones_like(mean)
    beta = bn.beta.numpy() if bn.beta is not None else np.zeros_like(mean)
    g = fold_factor(gamma, var, bn.epsilon)
    return g, (beta + (bias - mean) * g).astype(np.float32)


# Fold rules: how the per-output-channel factor g multiplies a weight of that shape.
def scale_last_axis(kernel: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Dense, Conv*D, a separable conv's pointwise kernel: output channels on the last axis."""
    return kernel * g


def scale_depthwise(kernel: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Depthwise kernels ``(..., in, multiplier)``: output channel ``c = i·multiplier + m``."""
    return kernel * _reshape(g, (kernel.shape[-2], kernel.shape[-1]))


def scale_transposed(kernel: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Transposed convs ``(..., out, in)``: output channels on the second-to-last axis."""
    return kernel * _reshape(g, (-1, 1))


def fold_weights(layer, bn, fold, weight=None) -> Dict[str, np.ndarray]:
    """Folded ``{weight attr: w', "bias": b'}`` for ``layer`` followed by ``bn``; ``fold`` is the layer's
    ``LayerSpec.fold``: ``(weight attr, rule)``. ``weight``: the value to fold in place of the layer's own (a
    trained quantizer's output, folded at deployment: ``refold.py``)."""
    attr, rule = fold
    bias = layer.bias.numpy() if getattr(layer, "use_bias", False) and layer.bias is not None else 0.0
    g, folded_bias = bn_affine(bn, bias)
    w = getattr(layer, attr).numpy() if weight is None else np.asarray(weight, np.float32)
    return {attr: rule(w, g), "bias": folded_bias}


def affine_weights(bn):
    """``[kernel (1, 1, C, 1), bias (C,)]`` of the ``ChannelAffine`` that computes ``bn``."""
    g, bias = bn_affine(bn)
    return [g.reshape(1, 1, -1, 1), bias]
