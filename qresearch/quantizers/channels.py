"""Which axes of a layer's weight are its output channels, for per-channel quantizers.

Keyed by layer class and weight name; a custom layer registers its own with
``register_channel_axes``. Unknown layers default to the last axis.
"""
from __future__ import annotations

from typing import Dict, Tuple

from qresearch._compat import keras

_AXES: Dict[Tuple[type, str], Tuple[int, ...]] = {}
DEFAULT_AXES: Tuple[int, ...] = (-1,)


def register_channel_axes(layer_class: type, weight_name: str, axes) -> None:
    """Declare the channel axes of ``layer_class``'s weight ``weight_name``."""
    _AXES[(layer_class, weight_name)] = tuple(axes) if isinstance(axes, (list, tuple)) else (int(axes),)


def channel_axes_for(layer, weight_name: str) -> Tuple[int, ...]:
    """Channel axes of ``layer``'s weight (``layer`` may be a tfmot wrapper)."""
    inner = getattr(layer, "layer", layer)
    short = weight_name.split("/")[-1].split(":")[0]
    for cls in type(inner).__mro__:
        if (cls, short) in _AXES:
            return _AXES[(cls, short)]
    return DEFAULT_AXES


# Depthwise kernels are (kh, kw, in, multiplier): every in·multiplier pair is an output channel
# (TFLite quantized_dimension 3 of [1, H, W, in·mult]); transposed convs are (kh, kw, out, in).
register_channel_axes(keras.layers.DepthwiseConv2D, "depthwise_kernel", (2, 3))
register_channel_axes(keras.layers.SeparableConv2D, "depthwise_kernel", (2, 3))
register_channel_axes(keras.layers.SeparableConv1D, "depthwise_kernel", (1, 2))
register_channel_axes(keras.layers.DepthwiseConv1D, "depthwise_kernel", (1, 2))
register_channel_axes(keras.layers.Conv2DTranspose, "kernel", (-2,))
register_channel_axes(keras.layers.Conv1DTranspose, "kernel", (-2,))
register_channel_axes(keras.layers.Conv3DTranspose, "kernel", (-2,))
