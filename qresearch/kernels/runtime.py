"""A kernel set: how one runtime's integer kernels compute, as data — its rounding rules and a table of op
handlers (op name -> function). The emulation runs an op through the active kernel set's handler for it;
an op the table lacks keeps the float fake-quant simulation. ``KERNELS`` is the registry of kernel sets;
``builtin.py`` registers the TFLite ones, and a plugin registers its own the same way."""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Tuple

from qresearch._compat import tf
from qresearch.kernels import stats
from qresearch.kernels.fixed_point import double_multiplier, parts, quantize_multiplier, wrap
from qresearch.kernels.grid import round_half_away
from qresearch.kernels.tflite_ops import Handler
from qresearch.registry import Registry


@dataclasses.dataclass(frozen=True)
class IntegerKernels:
    """One runtime's integer kernels.

    ``ops``: op name -> handler (``tflite_ops.TFLITE_OPS`` lists the names); ``requantize(acc, M, shift)``:
    conv / depthwise / fully connected outputs; ``op_requantize``: per op where it differs;
    ``scalar_requantize``: the kernels' scalar MultiplyByQuantizedMultiplier (MEAN, ADD's output, ...);
    ``add_vector``: ADD rescales its inputs with the vector path's single rounding (``tflite_ops.add``);
    ``accumulator_bits``: the accumulators' width, wrapping (TFLite: int32; the products of 8-bit ops do not
    reach it, but a bias saturated to ±2^31 over a dead input's collapsed scale does; ``pipeline.PipelineKernels``
    also models saturation); ``bias_bits``: the signed width the bias is saturated to (TFLite: int32).
    """

    name: str
    requantize: Callable
    scalar_requantize: Callable
    ops: Mapping[str, Handler] = dataclasses.field(default_factory=dict)
    add_vector: bool = False
    op_requantize: Optional[Mapping[str, Callable]] = None
    description: str = ""
    accumulator_bits: int = 32
    bias_bits: int = 32

    def handler(self, op: Optional[str]) -> Optional[Handler]:
        """The handler of ``op``, or None: that op keeps the float simulation."""
        return self.ops.get(op) if op else None

    def accumulate(self, dot, bias=None, layer: Optional[str] = None):
        """The accumulator as the kernel holds it from the dot product ``dot`` and the integer ``bias`` (int64;
        TFLite starts the accumulator at the bias), wrapped to ``accumulator_bits`` as the register wraps;
        recorded for ``stats`` before the wrap (its overflow count)."""
        acc = dot if bias is None else dot + bias
        stats.record(layer, acc, self.accumulator_bits)
        return wrap(acc, self.accumulator_bits)

    def quantize_bias(self, bias_over_scale):
        """The integer bias (int64) of ``bias / (S_in·S_w)`` (float64), as the converter stores it: saturated to
        ``bias_bits`` (measured on TFLite: a bias over a dead input's or an all-zero weight channel's
        ``grid.NARROWEST`` scale is stored as ±2^31)."""
        lo, hi = -(2.0 ** (self.bias_bits - 1)), 2.0 ** (self.bias_bits - 1) - 1
        return tf.cast(tf.clip_by_value(round_half_away(bias_over_scale), lo, hi), tf.int64)

    def requantizer(self, op: str):
        """The requantization rule of op ``op``'s outputs (``op_requantize``, else the conv outputs' ``requantize``)."""
        return (self.op_requantize or {}).get(op, self.requantize)

    def multiplier(self, in_scale, weight_scale, out_scale, op: str = "CONV_2D"):
        """The real multiplier ``S_in·S_w/S_out`` of op ``op`` as its kernel forms it (float64 tensor): in double
        (TFLite), or as the op's requantizer says (``Requantizer.multiplier``: XNNPACK's float32)."""
        form = getattr(self.requantizer(op), "multiplier", double_multiplier)
        return form(in_scale, weight_scale, out_scale)

    def requantize_params(self, real_multiplier, op: str = "CONV_2D") -> Tuple:
        """The constants ``apply_requantize`` needs for a real multiplier (per channel or scalar): the multiplier
        and shift and what the op's rounding derives from them (``fixed_point.parts``), or, for a floating-point
        requantizer (``Requantizer.real``), its scale; computed apart from the accumulator, so that the
        elementwise part is arithmetic on the accumulator only."""
        rule = self.requantizer(op)
        constants, _ = parts(rule)
        if getattr(rule, "real", False):
            return constants(tf.convert_to_tensor(real_multiplier, tf.float64))
        return constants(*quantize_multiplier(real_multiplier))

    def apply_requantize(self, acc, params: Tuple, op: str = "CONV_2D"):
        """``acc`` (int64) requantized with the constants of ``requantize_params``, as the kernel of op ``op``
        rounds it."""
        _, apply = parts(self.requantizer(op))
        return apply(acc, *params)

    def rescale(self, acc, real_multiplier, op: str = "CONV_2D"):
        """``acc`` (int64) times the real multiplier, as the kernel of op ``op`` rounds it."""
        return self.apply_requantize(acc, self.requantize_params(real_multiplier, op), op)

    def fused(self, key, build: Callable[[], Callable]) -> Callable:
        """The XLA pass ``build()`` makes for ``key``, built once per kernel set (``tflite_ops``' elementwise
        tails: integer arithmetic, the same bits compiled or not)."""
        cache = self.__dict__.get("_fused")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_fused", cache)  # frozen dataclass: a cache, not a field
        if key not in cache:
            cache[key] = build()
        return cache[key]


KERNELS: Registry[IntegerKernels] = Registry(
    "integer kernel set", how_to_add="qresearch.kernels.KERNELS.register('NAME', IntegerKernels(...)) "
    "in a module passed as plugins=[your_module] (or imported in Python).")
