"""Fixed-point requantization as int8 runtimes compute it: a real multiplier ``m`` becomes an int32
``M`` and a shift, and an int64 accumulator is multiplied and shifted back with the runtime's rounding.

All functions take and return int64 tensors; multipliers and shifts may be per-channel vectors
broadcast against the accumulator's last axis.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Tuple

from qresearch._compat import tf


def quantize_multiplier(m):
    """``(M, shift)`` with ``m ≈ M·2^(shift-31)``, ``M`` in [2^30, 2^31) (TFLite ``QuantizeMultiplier``).

    ``m = frac·2^shift`` with ``frac`` in [0.5, 1) is read off the float64 bits (frexp: the exponent field and
    the mantissa under exponent -1), exactly and in a few integer ops; ``M = round(frac·2^31)`` (exact: a
    power-of-two scaling, then ``+ 0.5`` and floor); ``M = 2^31`` moves to ``2^30`` and ``shift + 1``.
    ``m <= 0``, subnormal, or ``shift < -31`` give ``(0, 0)``."""
    m = tf.convert_to_tensor(m, tf.float64)
    bits = tf.bitcast(m, tf.int64)
    exponent = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 52), 0x7FF)
    shift = exponent - 1022
    mantissa = tf.bitwise.bitwise_and(bits, (1 << 52) - 1)
    frac = tf.bitcast(tf.bitwise.bitwise_or(mantissa, 1022 << 52), tf.float64)   # in [0.5, 1)
    fixed = tf.cast(tf.floor(frac * 2.0 ** 31 + 0.5), tf.int64)
    overflow = fixed >= 2 ** 31
    fixed = tf.where(overflow, tf.bitwise.right_shift(fixed, 1), fixed)
    shift = tf.where(overflow, shift + 1, shift)
    flush = tf.logical_or(tf.logical_or(m <= 0.0, exponent == 0), shift < -31)
    zero = tf.zeros_like(fixed)
    return tf.where(flush, zero, fixed), tf.where(flush, zero, shift)


def pow2(e):
    """``2^e`` for non-negative int64 ``e``."""
    return tf.bitwise.left_shift(tf.ones_like(e), e)


def wrap(x, bits: int = 32):
    """int64 ``x`` as a signed ``bits``-wide register holds it (two's complement wrap-around): the identity on
    [-2^(bits-1), 2^(bits-1)). TFLite's kernels add a saturated int32 bias to the products and shift a multiplier's
    left part in int32 with no saturation, so a bias stored as ±2^31 (over a dead input's collapsed scale) or a large
    multiplier wraps; a pipeline's ``overflow: wrap`` accumulator is the same at its width."""
    half = 2 ** (int(bits) - 1)
    return tf.bitwise.bitwise_and(x + half, 2 * half - 1) - half


def srdhm(x, multiplier):
    """gemmlowp SaturatingRoundingDoublingHighMul (int64 in and out): ``(x·M + nudge) / 2^31`` truncated,
    with nudge ``2^30`` for ``x·M >= 0`` and ``1 - 2^30`` below. For negative ``v = x·M + 1 - 2^30``,
    truncation is ``floor((v + 2^31 - 1) / 2^31) = floor((x·M + 2^30) / 2^31)``, the very expression of the
    non-negative case: so it is one add and one arithmetic shift, no int64 division and no select
    (tests/kernels/test_kernels.py checks it against the gemmlowp formula)."""
    return tf.bitwise.right_shift(x * multiplier + tf.constant(2 ** 30, tf.int64), tf.constant(31, tf.int64))


def double_multiplier(in_scale, weight_scale, out_scale):
    """``S_in·S_w/S_out`` in double, as TFLite's kernels form a conv's real multiplier (float64 in and out)."""
    return in_scale * weight_scale / out_scale


@dataclasses.dataclass(frozen=True)
class Requantizer:
    """A requantization rule ``(x, M, shift) -> int64`` in two parts: ``constants(M, shift)``, the integers it
    derives from the multiplier and shift (per-channel vectors or scalars), and ``apply(x, *constants)``, the
    elementwise arithmetic. Split so that an elementwise pass (an XLA loop over the accumulator) gets the
    constants ready: a per-channel constant derived inside the loop is derived again for every element.
    Called whole it is the function it was.

    ``real``: ``constants`` takes the real multiplier itself (float64), not ``(M, shift)``: a runtime that
    requantizes in floating point; ``multiplier(S_in, S_w, S_out)``: how the runtime forms that real multiplier
    from a conv's scales (float64 tensors holding float32 values)."""

    constants: Callable
    apply: Callable
    real: bool = False
    multiplier: Callable = double_multiplier

    def __call__(self, x, multiplier, shift):
        if self.real:
            raise TypeError("a floating-point requantizer takes the real multiplier: use IntegerKernels.rescale")
        return self.apply(x, *self.constants(multiplier, shift))


def parts(requantize) -> Tuple[Callable, Callable]:
    """``(constants, apply)`` of a requantization rule; a plain function ``(x, M, shift)`` (a plugin's, a
    pipeline's) takes ``(M, shift)`` as its constants."""
    if isinstance(requantize, Requantizer):
        return requantize.constants, requantize.apply
    return (lambda multiplier, shift: (multiplier, shift)), requantize


def _shifts(shift):
    return tf.maximum(shift, 0), tf.maximum(-shift, 0)


def _up_constants(multiplier, shift):
    # floor((floor((x·2^l·M + 2^30) / 2^31) + h) / 2^r), h = 2^(r-1) (0 if r = 0), is
    # floor((x·2^l·M + 2^30 + h·2^31) / 2^(31+r)): nested floor divisions by powers of two are one, an
    # integer added inside a floor moves out of it. So the whole requantization is one shift (x·2^l, in int32:
    # ``wrap``), one multiply, one add and one shift; the constants are per-channel vectors
    # (|sum| < 2^62 + 2^61 + 2^30 for r <= 31: no overflow).
    left, right = _shifts(shift)
    offset = tf.constant(2 ** 30, tf.int64) + tf.bitwise.left_shift(
        tf.bitwise.right_shift(pow2(right), 1), tf.constant(31, tf.int64))
    return left, multiplier, offset, right + 31


def _up_apply(x, left, multiplier, offset, total_shift):
    return tf.bitwise.right_shift(wrap(tf.bitwise.left_shift(x, left)) * multiplier + offset, total_shift)


def _away_constants(multiplier, shift):
    left, right = _shifts(shift)
    mask = pow2(right) - 1
    return pow2(left), multiplier, right, mask, tf.bitwise.right_shift(mask, 1)


def _away_apply(x, scale_left, multiplier, right, mask, half_mask):
    return _divide_rounding_away(srdhm(wrap(x * scale_left), multiplier), right, mask, half_mask)


def _divide_rounding_away(y, right, mask, half_mask):
    """gemmlowp ``RoundingDivideByPOT``: ``y / 2^right`` to nearest, ties away from zero (``mask = 2^right - 1``,
    ``half_mask = mask >> 1``)."""
    remainder = tf.bitwise.bitwise_and(y, mask)
    threshold = half_mask + tf.cast(y < 0, tf.int64)
    return tf.bitwise.right_shift(y, right) + tf.cast(remainder > threshold, tf.int64)


def rounding_divide_by_pot(y, exponent):
    """gemmlowp ``RoundingDivideByPOT`` by a (tensor) exponent ``>= 0``: its mask and half mask derived here."""
    mask = tf.bitwise.left_shift(tf.ones_like(exponent), exponent) - 1
    return _divide_rounding_away(y, exponent, mask, tf.bitwise.right_shift(mask, 1))


def _single_constants(multiplier, shift):
    total = 31 - shift
    return multiplier, tf.bitwise.right_shift(pow2(total), 1), total


def _single_apply(x, multiplier, half, total):
    return tf.bitwise.right_shift(x * multiplier + half, total)


#: SRDHM, then a right shift by ``-shift`` rounding ties up (``round_up``) or away from zero
#: (``round_away``: gemmlowp ``RoundingDivideByPOT``; tflite-int8-spec.md §2.2).
round_up = Requantizer(_up_constants, _up_apply)
round_away = Requantizer(_away_constants, _away_apply)
#: One rounding: ``(x·M + 2^(s-1)) >> s`` with ``s = 31 - shift`` (LiteRT's reference FULLY_CONNECTED).
single_rounding = Requantizer(_single_constants, _single_apply)


def float32_multiplier(in_scale, weight_scale, out_scale):
    """``S_in·S_w/S_out`` in float32 arithmetic, left to right (XNNPACK's C ``float`` expression), as float64."""
    f32 = [tf.cast(s, tf.float32) for s in (in_scale, weight_scale, out_scale)]
    return tf.cast(f32[0] * f32[1] / f32[2], tf.float64)


def _float32_constants(real_multiplier):
    return (tf.cast(real_multiplier, tf.float32),)


def float32_requantizer(rounding: Callable) -> Requantizer:
    """Requantization in float32: ``rounding(float32(acc) · scale)``, ``scale = S_in·S_w/S_out`` formed in float32;
    ``rounding`` maps the exact float32 product (as float64) to integers."""
    def apply(x, scale):
        # int64 -> float64 is exact below 2^53, so the float32 cast rounds once, as C's (float) of an int32
        product = tf.cast(tf.cast(tf.cast(x, tf.float64), tf.float32) * scale, tf.float64)
        return tf.cast(rounding(product), tf.int64)

    return Requantizer(_float32_constants, apply, real=True, multiplier=float32_multiplier)


#: XNNPACK's "fp32" requantization of qs8/qc8 conv, depthwise and fully connected outputs:
#: ``round_half_even(float32(acc) · scale)`` (tf.round: the magic-bias add / cvtps2dq of its kernels rounds to
#: even), ``scale = S_in·S_w/S_out`` formed in float32. Measured against LiteRT's XNNPACK delegate
#: (tests/kernels/test_xnnpack.py; notes/schemes.md, twenty-sixth session).
float32_half_even = float32_requantizer(tf.round)


def _lanes_constants(multiplier, shift):
    return _up_constants(multiplier, shift) + _away_constants(multiplier, shift)


def _lanes_apply(x, *constants):
    channels = tf.shape(x, out_type=tf.int64)[-1]
    vector = tf.range(channels) < 8 * (channels // 8)
    return tf.where(vector, _up_apply(x, *constants[:4]), _away_apply(x, *constants[4:]))


#: LiteRT's optimized per-channel ``Quantize`` of an int32 buffer (TRANSPOSE_CONV's output): channels in lanes of 8
#: as ``round_up``, the last ``C % 8`` channels one by one as ``round_away`` (measured: 8 and 12 output channels,
#: and 4, all of them on the one-by-one path).
round_up_in_lanes_of_8 = Requantizer(_lanes_constants, _lanes_apply)


def _q8_constants(real_multiplier):
    # XNNPACK's qs8 convert takes S_in/S_out in [2^-8, 2^7]; outside, the delegate leaves the QUANTIZE to the
    # builtin kernel (``round_up``)
    scale = tf.cast(real_multiplier, tf.float32)
    accepted = (scale >= 2.0 ** -8) & (scale <= 2.0 ** 7)
    return (tf.cast(tf.round(256.0 * scale), tf.int64), accepted) + _up_constants(*quantize_multiplier(real_multiplier))


def _q8_apply(x, multiplier, accepted, *builtin):
    return tf.where(accepted, tf.bitwise.right_shift(x * multiplier + 128, 8), _up_apply(x, *builtin))


#: XNNPACK's int8 -> int8 QUANTIZE (qs8 convert): an 8-bit fractional multiplier ``M = lrintf(256·S_in/S_out)``
#: (float32), ``floor(((q - Z_in)·M + 128) / 256)``: rounded half up. Measured against the delegate: 0 mismatches
#: in 1.8M outputs (a concatenation's requantized input), where float32 rounding missed 10%. ``S_in/S_out`` is
#: taken as float32 of its double quotient.
q8_convert = Requantizer(_q8_constants, _q8_apply, real=True)


INT32_MAX = 2 ** 31 - 1


def saturating_left_shift(x, bits: int):
    """gemmlowp ``SaturatingRoundingMultiplyByPOT<bits>`` for ``bits > 0``: ``x·2^bits`` clamped to int32."""
    return tf.clip_by_value(x * (2 ** bits), -INT32_MAX - 1, INT32_MAX)


def _leading_bit(x):
    """The index of the highest set bit of positive int64 ``x`` < 2^31 (exact: a count of thresholds passed)."""
    powers = tf.constant([2 ** k for k in range(1, 31)], tf.int64)
    return tf.reduce_sum(tf.cast(x[..., None] >= powers, tf.int64), axis=-1)


def inv_sqrt_multiplier(x):
    """``(M, shift)`` with ``1/sqrt(x) ≈ M·2^(shift-31)``, elementwise on int64 ``x`` in [0, 2^31), as TFLite's
    ``GetInvSqrtQuantizedMultiplierExp(x, reverse_shift=-1)`` computes it (tensorflow/lite/kernels/internal/
    common.h): ``x`` normalised by pairs of bits into [2^27, 2^29), five Newton-Raphson steps
    ``y ← 1.5·y - (x/2)·y³`` from ``y = 1`` in gemmlowp fixed point with 3 integer bits, times ``sqrt(2)/2``;
    ``x <= 1`` gives ``(2^31 - 1, 0)``. The shift is returned as a left shift (the ``reverse_shift`` sign)."""
    small = x <= 1
    x = tf.maximum(x, 2)
    big = x >= 2 ** 29   # at most once below 2^31
    x = tf.where(big, x // 4, x)
    shift = 11 + tf.cast(big, tf.int64)
    pairs = (30 - _leading_bit(x)) // 2 - 1   # (CountLeadingZeros(x) - 1) / 2 - 1
    shift = shift - pairs
    x = tf.bitwise.left_shift(x, 2 * pairs)
    half_input = _divide_rounding_away(tf.bitwise.right_shift(x, 1), 1, 1, 0)   # F3 raw of x/2
    half_three = (1 << 28) + (1 << 27)                                       # F3 1.5
    y = tf.fill(tf.shape(x), tf.constant(1 << 28, tf.int64))                # F3 1.0
    for _ in range(5):
        cube = saturating_left_shift(srdhm(srdhm(y, y), y), 6)               # F9 -> F3
        y = saturating_left_shift(srdhm(y, half_three) - srdhm(half_input, cube), 3)   # F6 -> F3
    y = srdhm(y, 1518500250)                                                 # times sqrt(2)/2 (F0)
    y = tf.where(shift < 0, tf.bitwise.left_shift(y, tf.maximum(-shift, 0)), y)
    shift = tf.maximum(shift, 0)
    return tf.where(small, tf.constant(INT32_MAX, tf.int64), y), tf.where(small, tf.zeros_like(shift), -shift)
