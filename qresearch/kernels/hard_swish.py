"""int8 HARD_SWISH (``x · relu6(x + 3) / 6``, one op after the converter's fusion) as LiteRT's kernel computes it.

The kernel is 16-bit fixed-point arithmetic, not a table or a float product
(tensorflow/lite/kernels/internal/reference/hard_swish.h; its parameters from ``HardSwishPrepare`` in
tensorflow/lite/kernels/activations.cc). Each int8 input has one output, so the emulation computes the 256
outputs of the input grid once and looks them up, as a table activation does.
"""
from __future__ import annotations

from qresearch._compat import tf
from qresearch.kernels.fixed_point import quantize_multiplier, rounding_divide_by_pot
from qresearch.kernels.grid import Grid, table_lookup

INT16_MIN, INT16_MAX = -(2 ** 15), 2 ** 15 - 1
#: the input is moved onto a grid 2^7 finer (int8 offsets times 128 still fit int16)
HIRES_SHIFT = 7
#: the "relu-ish" grid: 3.0 is 2^15 on it (float32, as the kernel's constant)
RELUISH_SCALE = 3.0 / 32768.0


def _int16_multiplier(real):
    """``(M16, exponent)``: ``QuantizeMultiplier`` of the float32 ``real`` (as a double), its int32 ``M`` rounded to
    its top 16 bits (``DownScaleInt32ToInt16Multiplier``: ``(M + 2^15) >> 16``, 32767 where that would overflow)."""
    m32, exponent = quantize_multiplier(tf.cast(real, tf.float64))
    m16 = tf.where(m32 >= 2 ** 31 - 1 - 2 ** 15, tf.constant(INT16_MAX, tf.int64),
                   tf.bitwise.right_shift(m32 + 2 ** 15, 16))
    return m16, exponent


def _saturate16(x):
    return tf.clip_by_value(x, INT16_MIN, INT16_MAX)


def _rounding_doubling_high_mul16(a, b):
    """gemmlowp's int16 SaturatingRoundingDoublingHighMul: ``(a·b + nudge) / 2^15`` truncated toward zero, nudge
    ``2^14`` for ``a·b >= 0`` else ``1 - 2^14``; ``a = b = -2^15`` saturates."""
    ab = a * b
    nudge = tf.where(ab >= 0, tf.constant(2 ** 14, tf.int64), tf.constant(1 - 2 ** 14, tf.int64))
    high = tf.truncatediv(ab + nudge, tf.constant(2 ** 15, tf.int64))
    return tf.where((a == INT16_MIN) & (b == INT16_MIN), tf.constant(INT16_MAX, tf.int64), high)


def _doubling_high_mul16(a, b):
    """The kernel's own int16 SaturatingDoublingHighMul: ``a·b / 2^15`` truncated toward zero, no rounding nudge."""
    high = tf.truncatediv(a * b, tf.constant(2 ** 15, tf.int64))
    return tf.where((a == INT16_MIN) & (b == INT16_MIN), tf.constant(INT16_MAX, tf.int64), high)


def _saturating_left_shift16(x, amount):
    return _saturate16(x * tf.bitwise.left_shift(tf.ones_like(amount), amount))


def hard_swish_table(in_grid: Grid, out_grid: Grid):
    """The int8 output (int64, index ``q + 128``) of LiteRT's int8 HARD_SWISH for every int8 input ``q``.

    With ``x = q - Z_in`` on a grid ``2^7`` finer (``S_in/128``, float32):
    ``v = SRDHM16(x·2^7, M_out)`` is ``x`` on the output grid before its shift (``M_out, e_out`` from
    ``S_in/128/S_out``); ``r``, ``x·2^7`` times ``M_r·2^e_r`` (``S_in/128/(3/2^15)``) with saturating left shifts
    or a rounding right shift, is ``x/3`` in [-1, 1] on Q15, then ``(r + 2^15) >> 1`` is ``relu6(x + 3)/6`` in
    [0, 1]; the output is ``RoundingDivideByPOT(DoublingHighMul(r, v), -e_out) + Z_out``, clamped."""
    f32 = tf.float32
    hires = tf.cast(in_grid.scale, f32) * tf.constant(1.0 / 2 ** HIRES_SHIFT, f32)
    m_out, e_out = _int16_multiplier(hires / tf.cast(out_grid.scale, f32))
    m_r, e_r = _int16_multiplier(hires / tf.constant(RELUISH_SCALE, f32))
    q = tf.range(-128, 128, dtype=tf.int64)
    x = (q - tf.cast(in_grid.zero_point, tf.int64)) * 2 ** HIRES_SHIFT
    v = _rounding_doubling_high_mul16(x, m_out)
    left = tf.maximum(e_r, 0)
    r = tf.where(e_r > 0, _saturating_left_shift16(x, tf.maximum(left - 1, 0)), x)
    r = _rounding_doubling_high_mul16(r, m_r)
    r = tf.where(e_r > 0, _saturating_left_shift16(r, tf.ones_like(left)), r)
    r = tf.where(e_r < 0, rounding_divide_by_pot(r, tf.maximum(-e_r, 0)), r)
    r = tf.bitwise.right_shift(r + 2 ** 15, 1)
    y = rounding_divide_by_pot(_doubling_high_mul16(r, v), -e_out)
    return tf.clip_by_value(y + tf.cast(out_grid.zero_point, tf.int64), -128, 127)


def hard_swish(x, in_grid: Grid, out_grid: Grid, offsets_in=None):
    """The int8 offsets ``q - Z_out`` (float32) of HARD_SWISH of ``x`` (on ``in_grid``) onto ``out_grid``: each input's
    ``hard_swish_table`` entry. ``offsets_in``: the input's handed-on integers. None (the float simulation stays) for
    grids wider than int8: LiteRT has no int16 HARD_SWISH."""
    if in_grid.qmax - in_grid.qmin > 255 or out_grid.qmax - out_grid.qmin > 255:
        return None
    table = hard_swish_table(in_grid, out_grid) - tf.cast(out_grid.zero_point, tf.int64)
    return tf.cast(table_lookup(table, x, in_grid, offsets_in), tf.float32)
