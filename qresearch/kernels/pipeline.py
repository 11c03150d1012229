"""Integer pipelines as data: a kernel set built from a hardware target's ``pipeline:`` block.

A pipeline says how a target's integer conv / fully connected kernels compute, so accuracy moves as the
hardware would:

- ``accumulator_bits`` (8-32) and ``overflow``: ``wrap`` (two's complement; the result of a wrapping sum is
  the same whatever the order of the MACs, so wrapping the final sum is exact) or ``saturate`` (clamped
  to the width; modelled on the final sum: a MAC-by-MAC saturating accumulator can clip partial sums
  that the final sum would not, so this is the order-independent best case);
- ``bias_bits``: the bias is rounded onto ``S_in·S_w`` and saturated to this signed width;
- ``bias_add``: ``accumulator`` (the accumulator starts at the bias, as TFLite's kernels: the bias counts
  against the width) or ``requantize`` (the bias is added after the MACs, at the wider precision of the
  requantization stage: only the dot product lives in the accumulator);
- ``requantize``: ``fixed_point`` (a 31-bit multiplier ``M`` and a shift, as ``quantize_multiplier``, one
  rounding of ``acc·M / 2^(31-shift)``), ``shift`` (power-of-two scales only: ``acc / 2^k`` rounded,
  no multiplier) or ``float32`` (``float32(acc)·float32(S_in·S_w/S_out)`` in float32, then rounded: XNNPACK's
  rule with ``half_even``; ops other than conv / fully connected keep the fixed-point form);
- ``rounding`` of that step: ``half_away_from_zero``, ``half_up``, ``half_even``, ``floor`` (a bare
  arithmetic shift), or ``gemmlowp`` (TFLite's two roundings: SRDHM then RoundingDivideByPOT);
- ``ops``: the ops that run integer (default: conv, depthwise, fully connected, transposed conv); other ops
  of ``tflite_ops.TFLITE_OPS`` may be listed and run with TFLite's arithmetic and this pipeline's
  rounding; the outputs are clamped to the output grid (saturating int8/int4 outputs).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from qresearch._compat import tf
from qresearch.kernels import stats
from qresearch.kernels.fixed_point import float32_requantizer, pow2, round_away, wrap
from qresearch.kernels.grid import round_half_away
from qresearch.kernels.runtime import IntegerKernels
from qresearch.kernels.tflite_ops import CONV_OPS, TFLITE_OPS

# The names a pipeline may use are validated with the target (hardware/pipeline.py, which loads without TensorFlow).


def round_shift(x, s, rounding: str):
    """``x / 2^s`` (int64; ``s`` int64, may be negative: a left shift) rounded by ``rounding``."""
    left = tf.maximum(-s, 0)
    right = tf.maximum(s, 0)
    x = tf.bitwise.left_shift(x, left)
    half = tf.bitwise.right_shift(pow2(right), 1)  # 2^(r-1), 0 when r = 0
    if rounding == "floor":
        return tf.bitwise.right_shift(x, right)
    if rounding == "half_up":
        return tf.bitwise.right_shift(x + half, right)
    if rounding == "half_away_from_zero":
        return tf.sign(x) * tf.bitwise.right_shift(tf.abs(x) + half, right)
    if rounding == "half_even":
        q = tf.bitwise.right_shift(x, right)
        rem = x - tf.bitwise.left_shift(q, right)
        up = tf.logical_or(rem > half, tf.logical_and(tf.logical_and(rem == half, right > 0),
                                                      tf.bitwise.bitwise_and(q, 1) == 1))
        return q + tf.cast(up, tf.int64)
    raise ValueError(f"unknown rounding {rounding!r} (hardware/pipeline.py lists the valid ones)")


def fixed_point(rounding: str):
    """Requantization ``(acc, M, shift) -> round(acc·M / 2^(31-shift))``."""
    if rounding == "gemmlowp":
        return round_away

    def requantize(x, multiplier, shift):
        return round_shift(x * multiplier, 31 - shift, rounding)

    return requantize


# How ``requantize: float32`` rounds the float32 product (exact in float64); gemmlowp is refused with it
FLOAT_ROUNDINGS = {"half_even": tf.round, "half_away_from_zero": round_half_away,
                   "half_up": lambda y: tf.floor(y + 0.5), "floor": tf.floor}


def float32_scale(rounding: str):
    """Requantization ``round(float32(acc)·float32(S_in·S_w/S_out))`` with ``rounding``."""
    if rounding not in FLOAT_ROUNDINGS:
        raise ValueError(f"requantize: float32 rounds with one of {sorted(FLOAT_ROUNDINGS)}, not {rounding!r}")
    return float32_requantizer(FLOAT_ROUNDINGS[rounding])


def accumulate(acc, bits: int, overflow: str):
    """``acc`` (int64) held in a signed ``bits``-wide accumulator."""
    if overflow == "saturate":
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return tf.clip_by_value(acc, tf.constant(lo, tf.int64), tf.constant(hi, tf.int64))
    return wrap(acc, bits)


@dataclasses.dataclass(frozen=True)
class PipelineKernels(IntegerKernels):
    """A kernel set from a target's pipeline (module doc)."""

    overflow: str = "saturate"
    bias_add: str = "accumulator"
    requantization: str = "fixed_point"
    rounding: str = "half_away_from_zero"

    def accumulate(self, dot, bias=None, layer: Optional[str] = None):
        if bias is None or self.bias_add == "requantize":
            stats.record(layer, dot, self.accumulator_bits)
            held = accumulate(dot, self.accumulator_bits, self.overflow)
            return held if bias is None else held + bias
        stats.record(layer, dot + bias, self.accumulator_bits)
        return accumulate(dot + bias, self.accumulator_bits, self.overflow)

    def requantize_params(self, real_multiplier, op: str = "CONV_2D"):
        if self.requantization == "shift":
            # power-of-two scales: m = 2^-k exactly (refused before training otherwise; the nearest k here)
            m = tf.convert_to_tensor(real_multiplier, tf.float64)
            return (tf.cast(tf.round(-tf.math.log(m) / tf.math.log(tf.constant(2.0, tf.float64))), tf.int64),)
        return super().requantize_params(real_multiplier, op)

    def apply_requantize(self, acc, params, op: str = "CONV_2D"):
        if self.requantization == "shift":
            rounding = self.rounding if self.rounding != "gemmlowp" else "half_away_from_zero"
            return round_shift(acc, params[0], rounding)
        return super().apply_requantize(acc, params, op)


def pipeline_kernels(name: str, accumulator_bits: int = 32, overflow: str = "saturate", bias_bits: int = 32,
                     requantize: str = "fixed_point", rounding: str = "half_away_from_zero",
                     ops: Optional[Sequence[str]] = None, description: str = "",
                     bias_add: str = "accumulator") -> PipelineKernels:
    """The kernel set of a pipeline (arguments as in the module doc; validated by the hardware target)."""
    ops = tuple(ops) if ops else CONV_OPS
    unknown = [op for op in ops if op not in TFLITE_OPS]
    if unknown:
        raise ValueError(f"pipeline {name!r}: no integer handler for ops {unknown}; known: {sorted(TFLITE_OPS)}")
    fn = fixed_point(rounding)
    conv_fn = float32_scale(rounding) if requantize == "float32" else fn
    # float32 applies to conv / fully connected outputs; a concatenation's QUANTIZE keeps the fixed-point form
    return PipelineKernels(name, conv_fn, fn, ops={op: TFLITE_OPS[op] for op in ops}, add_vector=False,
                           op_requantize={"QUANTIZE": fn} if requantize == "float32" else None,
                           accumulator_bits=int(accumulator_bits), description=description, overflow=overflow,
                           bias_bits=int(bias_bits), requantization=requantize, rounding=rounding,
                           bias_add=bias_add)
