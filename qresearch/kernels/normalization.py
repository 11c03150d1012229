"""int8 L2_NORMALIZATION (Keras ``UnitNormalization`` over the last axis) as LiteRT's kernel computes it."""
from __future__ import annotations

from qresearch._compat import tf
from qresearch.kernels.fixed_point import inv_sqrt_multiplier, round_away
from qresearch.kernels.grid import Grid, offsets_on

#: the kernel's output grid: scale 2^-7, zero point 0
OUTPUT_SHIFT = 7
OUTPUT_SCALE = 2.0 ** -OUTPUT_SHIFT


def l2_normalization(x, in_grid: Grid, out_grid: Grid, offsets_in=None):
    """The int8 offsets (float32) of ``x``'s rows scaled to unit L2 norm on the kernel's grid (1/128, zero point 0):
    ``q·M·2^(shift+7)`` requantized by ``MultiplyByQuantizedMultiplier`` (SRDHM, then a rounding shift) and
    clamped, with ``(M, shift)`` the fixed-point ``1/sqrt(Σ q²)`` of ``inv_sqrt_multiplier`` and ``q`` the input's
    offsets from its zero point (tensorflow/lite/kernels/internal/reference/integer_ops/l2normalization.h; the
    builtin kernels run it too). The converter gives the op that grid whatever range the model had: the plan fixes
    the range (``fixed_output_ranges``). None (the float simulation stays) for grids wider than int8."""
    if in_grid.qmax - in_grid.qmin > 255 or out_grid.qmax - out_grid.qmin > 255:
        return None
    q = offsets_on(x, in_grid.scale) if offsets_in is None else tf.cast(offsets_in, tf.int64)
    multiplier, shift = inv_sqrt_multiplier(tf.reduce_sum(q * q, axis=-1, keepdims=True))
    y = round_away(q, multiplier, shift + OUTPUT_SHIFT)
    return tf.cast(tf.clip_by_value(y, -128, 127), tf.float32)
