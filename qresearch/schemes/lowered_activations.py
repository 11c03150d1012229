"""Activations a runtime computes as several ops, with a tensor between them on a fixed grid.

TFLite has no SWISH op: TF 2.21's converter turns ``x·sigmoid(x)`` into LOGISTIC, whose int8 output lies on
sigmoid's fixed grid (S = 1/256, Z = -128), and MUL. A float ``x·sigmoid(x)`` before the output quantizer skips
that rounding: on a digits CNN the deployed model was up to 5 output LSB off the simulation (notes/schemes.md,
outside QA pass). A lowering says which fixed-range op the intermediate tensor is the output of (a key of the
scheme's ``fixed_output_ranges``, so it takes that op's grid on every target) and computes the activation from a
quantizer of that tensor. ``configs.layer_config`` gives such an activation an ``inner`` quantizer; the wrapper
and the integer emulation run ``lowered(fn, quantize_inner)`` in place of ``fn``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

from qresearch._compat import tf
from qresearch.schemes.layers import activation_name


@dataclasses.dataclass(frozen=True)
class Lowering:
    #: the fixed-range op (``fixed_output_ranges`` key) whose output the intermediate tensor is, and its float form
    inner: str
    inner_fn: Callable
    #: the op joining the input and the intermediate tensor (a kernel set's handler name), and its float form
    combine: str
    combine_fn: Callable

    def compute(self, x, quantize_inner):
        return self.combine_fn(x, quantize_inner(self.inner_fn(x)))


_LOWERINGS: Dict[str, Lowering] = {}


def register_lowering(name: str, lowering_: Lowering) -> None:
    """Teach the simulation that the activation function named ``name`` runs as ``lowering_``'s two ops."""
    _LOWERINGS[name] = lowering_


def lowering(fn) -> Optional[Lowering]:
    """The lowering of activation function ``fn`` (by its name), or None where it runs as one op."""
    return _LOWERINGS.get(activation_name(fn))


def lowered(fn, quantize_inner: Callable) -> Callable:
    """``fn`` as its ops run, the intermediate tensor through ``quantize_inner``."""
    rule = lowering(fn)
    return lambda x: rule.compute(x, quantize_inner)


_SWISH = Lowering("sigmoid", tf.sigmoid, "MUL", tf.multiply)  # LOGISTIC, then MUL
register_lowering("swish", _SWISH)  # keras.activations.swish, tf.nn.silu
register_lowering("silu", _SWISH)
