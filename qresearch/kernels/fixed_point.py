"""Fixed-point requantization as int8 runtimes compute it: a real multiplier ``m`` becomes an int32
``M`` and a shift, and an int64 accumulator is multiplied and shifted back with the runtime's rounding.

All functions take and return int64 tensors; multipliers and shifts may be per-channel vectors
broadcast against the accumulator's last axis.
"""
from __future__ import annotations

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


def srdhm(x, multiplier):
    """gemmlowp SaturatingRoundingDoublingHighMul (int64 in and out): ``(x·M + nudge) / 2^31`` truncated,
    with nudge ``2^30`` for ``x·M >= 0`` and ``1 - 2^30`` below. For negative ``v = x·M + 1 - 2^30``,
    truncation is ``floor((v + 2^31 - 1) / 2^31) = floor((x·M + 2^30) / 2^31)``, the very expression of the
    non-negative case: so it is one add and one arithmetic shift, no int64 division and no select
    (tests/kernels/test_kernels.py checks it against the gemmlowp formula)."""
    return tf.bitwise.right_shift(x * multiplier + tf.constant(2 ** 30, tf.int64), tf.constant(31, tf.int64))


def double_rounding(ties: str):
    """SRDHM, then a right shift by ``-shift`` rounding ties ``"up"`` or ``"away"`` from zero
    (gemmlowp ``RoundingDivideByPOT``; tflite-int8-spec.md §2.2)."""
    def requantize(x, multiplier, shift):
        left = tf.maximum(shift, 0)
        right = tf.maximum(-shift, 0)
        if ties == "up":
            # floor((floor((x·2^l·M + 2^30) / 2^31) + h) / 2^r), h = 2^(r-1) (0 if r = 0), is
            # floor((x·(M·2^l) + 2^30 + h·2^31) / 2^(31+r)): nested floor divisions by powers of two are one,
            # an integer added inside a floor moves out of it, and the product is the same integer. So the
            # whole requantization is one multiply, one add and one shift of the accumulator; the
            # constants are per-channel vectors (|sum| < 2^62 + 2^61 + 2^30 for r <= 31: no overflow).
            offset = tf.constant(2 ** 30, tf.int64) + tf.bitwise.left_shift(
                tf.bitwise.right_shift(pow2(right), 1), tf.constant(31, tf.int64))
            return tf.bitwise.right_shift(x * (multiplier * pow2(left)) + offset, right + 31)
        y = srdhm(x * pow2(left), multiplier)
        mask = pow2(right) - 1
        remainder = tf.bitwise.bitwise_and(y, mask)
        threshold = tf.bitwise.right_shift(mask, 1) + tf.cast(y < 0, tf.int64)
        return tf.bitwise.right_shift(y, right) + tf.cast(remainder > threshold, tf.int64)

    return requantize


def single_rounding(x, multiplier, shift):
    """One rounding: ``(x·M + 2^(s-1)) >> s`` with ``s = 31 - shift`` (XNNPACK)."""
    total = 31 - shift
    return tf.bitwise.right_shift(x * multiplier + tf.bitwise.right_shift(pow2(total), 1), total)


round_up = double_rounding("up")
round_away = double_rounding("away")
