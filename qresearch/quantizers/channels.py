"""Which axes of a layer's weight are its output channels, for per-channel quantizers.

Keyed by layer class and weight name and looked up along the class hierarchy. The layer registry
(``qresearch.schemes.register_layer(..., channel_axes=...)``) fills it for the built-in layers and a
user's; this table is where the quantizers, which sit below the schemes, read it. Unknown weights
default to the last axis.
"""
from __future__ import annotations

from typing import Dict, Tuple

_AXES: Dict[Tuple[type, str], Tuple[int, ...]] = {}
DEFAULT_AXES: Tuple[int, ...] = (-1,)


def _key(weight_name: str) -> str:
    """A weight's name as registered (``_query_dense.kernel``) and as a quantizer is built for it (a variable
    name: ``layer/_query_dense_kernel:0``) alike."""
    return weight_name.split("/")[-1].split(":")[0].replace(".", "_")


def register_channel_axes(layer_class: type, weight_name: str, axes) -> None:
    """Declare the channel axes of ``layer_class``'s weight ``weight_name`` (a dotted path for a sublayer's)."""
    _AXES[(layer_class, _key(weight_name))] = tuple(axes) if isinstance(axes, (list, tuple)) else (int(axes),)


def channel_axes_for(layer, weight_name: str) -> Tuple[int, ...]:
    """Channel axes of ``layer``'s weight (``layer`` may be a tfmot wrapper)."""
    inner = getattr(layer, "layer", layer)
    short = _key(weight_name)
    for cls in type(inner).__mro__:
        if (cls, short) in _AXES:
            return _AXES[(cls, short)]
    return DEFAULT_AXES
