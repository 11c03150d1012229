"""Integer grids: a tensor's (scale, zero point, qmin, qmax) as a runtime stores it, derived from the
FakeQuant range a quantizer hands TensorFlow, and the moves between float values and grid offsets."""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

from qresearch._compat import tf
from qresearch.kernels import calls
from qresearch.quantizers import ops
from qresearch.quantizers.fused import xla_pass


def round_half_away(x):
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


def fake_quant_range(quantizer, qvars, like) -> Optional[Tuple]:
    """``(min, max, bits, narrow_range)`` that ``quantizer`` hands TF FakeQuant in inference, or None if
    its inference pass is not one FakeQuant call. Plain arithmetic on the quantizer's variables."""
    return _fake_quant_call(quantizer, qvars, like)[0]


def _fake_quant_call(quantizer, qvars, like):
    """``(fake_quant_range, pure)``: ``pure`` when the one FakeQuant gets ``like`` itself (no clip before it)."""
    seen = []
    original = ops.fake_quant_op

    def record(x, range_min, range_max, bits, narrow_range, channel_axes=None, *_options):
        seen.append(((range_min, range_max, bits, narrow_range), x is like))
        return x

    ops.fake_quant_op = record
    try:
        quantizer(like, False, weights=qvars)
    finally:
        ops.fake_quant_op = original
    return seen[0] if len(seen) == 1 else (None, False)


@dataclasses.dataclass
class Grid:
    """A tensor's integer grid as the TFLite converter derives it from a FakeQuant range."""

    scale: tf.Tensor        # float64 holding the float32 scale stored in the flatbuffer
    zero_point: tf.Tensor   # float64, integer-valued
    qmin: int
    qmax: int
    # ``(max - min) / (qmax - qmin)`` in double, before the float32 rounding (None: ``scale``). The converter
    # quantizes a bias onto the product of these (measured, TF 2.21: a bias 0.0003 LSB from a tie was stored on
    # the other side of it than the float32 scales give)
    exact_scale: Optional[tf.Tensor] = None

    @property
    def bias_scale(self):
        """This grid's scale as the converter quantizes values onto it (a bias: the factors of ``S_in·S_w``;
        a constant operand, ``constant_operand``)."""
        return self.scale if self.exact_scale is None else self.exact_scale


#: The TFLite converter (TF 2.21) stores any FakeQuant range narrower than this as ``[-NARROWEST/2, NARROWEST/2]``
#: (measured: ``[0, 0]``, ``[0, 1e-7]`` and ``[-1e-8, 1e-8]`` all get scale ``1e-6/255``, zero point -1; a zero
#: weight channel ``1e-6/254``, zero point 0): a dead activation, or an all-zero kernel (``ops.fake_quant`` gives a
#: narrow channel of a wider kernel another channel's range).
NARROWEST = ops.NARROWEST


def grid_of(range_min, range_max, bits: int, narrow_range: bool) -> Grid:
    """Scale ``(max - min) / (qmax - qmin)`` in double, stored as float32. The zero point as the converter forms
    it (TF 2.21; ``tests/kernels/test_grid.py``): on the unsigned grid ``[0, 2^bits - 1]`` with that double scale,
    from whichever end has the smaller error, clamped, rounded half away, then shifted to the signed grid. A
    symmetric range's zero point (-0.5 on the signed grid) thus lands on 0 or -1 with the double's last bit, not
    with the float32 scale's. A range narrower than ``NARROWEST`` is the converter's ``[-NARROWEST/2,
    NARROWEST/2]``."""
    offset = 2 ** (bits - 1)
    qmin = -offset + (1 if narrow_range else 0)
    qmax = offset - 1
    lo = tf.cast(tf.convert_to_tensor(range_min), tf.float64)
    hi = tf.cast(tf.convert_to_tensor(range_max), tf.float64)
    narrow = hi - lo < NARROWEST
    half = NARROWEST / 2 * tf.ones_like(lo)
    lo, hi = tf.where(narrow, -half, lo), tf.where(narrow, half, hi)
    exact = (hi - lo) / float(qmax - qmin)
    scale = tf.cast(tf.cast(exact, tf.float32), tf.float64)
    umin, umax = float(qmin + offset), float(qmax + offset)
    zp_min, zp_max = umin - lo / exact, umax - hi / exact
    err_min = umin + tf.abs(lo / exact)
    err_max = umax + tf.abs(hi / exact)
    zp = tf.where(err_min < err_max, zp_min, zp_max)
    zp = round_half_away(tf.clip_by_value(zp, umin, umax)) - offset
    return Grid(scale, zp, qmin, qmax, exact)


def constant_operand(value, rank: int):
    """A constant operand of ADD / SUB / MUL as the converter stores it (TF 2.21; measured on 40 random constants
    and the preprocessing layers' scales and means): int8 per tensor, on the grid of the range ``[min(c, 0),
    max(c, 0)]``, each value rounded half away onto it. Returns ``(values, grid)``: the stored values as float32 on
    that grid, shaped to ``rank`` with leading ones (the operand broadcasts against a tensor of that rank)."""
    c = tf.cast(tf.convert_to_tensor(value), tf.float32)
    g = grid_of(tf.minimum(tf.reduce_min(c), 0.0), tf.maximum(tf.reduce_max(c), 0.0), 8, False)
    q = tf.clip_by_value(round_half_away(tf.cast(c, tf.float64) / g.bias_scale) + g.zero_point, -128.0, 127.0)
    values = tf.cast((q - g.zero_point) * g.scale, tf.float32)
    return tf.reshape(values, [1] * (rank - c.shape.rank) + c.shape.as_list()), g


def grid_of_quantizer(quantizer, qvars) -> Optional[Grid]:
    """The integer grid of a quantizer's output, or None if its inference pass is not one FakeQuant."""
    return _grid_and_purity(quantizer, qvars)[0]


def pure_fake_quant(quantizer, qvars) -> bool:
    """True if ``quantizer``'s inference pass is one FakeQuant of its input and nothing else (no clip before
    it, as signed PACT's ``max(x, -α)``): on-grid values then keep their grid points through it."""
    return _grid_and_purity(quantizer, qvars)[1]


def _grid_and_purity(quantizer, qvars):
    """Derived once per model call (``calls.one_call``)."""
    found = calls.recall("grids", (quantizer, qvars))
    if found is None:
        rng, pure = _fake_quant_call(quantizer, qvars, tf.zeros([1]))
        found = (grid_of(*rng) if rng is not None else None, pure)
        calls.remember("grids", (quantizer, qvars), found)
    return found


def hand_on(raw, y, quantizer, qvars):
    """``y``, ``quantizer``'s inference pass over a kernel's output ``raw``, carries the integer offsets the
    kernel noted for ``raw`` on to the next kernel (``calls.note_offsets``), where that pass is one FakeQuant
    (``pure_fake_quant``: on-grid values keep their grid points; a clip before it could move them)."""
    found = calls.offsets_of(raw)
    if found is not None and pure_fake_quant(quantizer, qvars):
        calls.note_offsets(y, found, (quantizer, qvars))
    return y


def offsets(x, g: Grid):
    """``q - Z`` of float values on grid ``g`` (int64)."""
    return offsets_on(x, g.scale)


def offsets_on(x, scale):
    """``q - Z`` (int64) of float values on a grid of step ``scale`` (float64)."""
    return tf.cast(round_half_away(tf.cast(x, tf.float64) / scale), tf.int64)


def table_lookup(table, x, in_grid: Grid, offsets_in=None):
    """Each int8 input's entry of a 256-entry ``table`` (index ``q + 128``): ``x``'s integers on ``in_grid``, or the
    handed-on ``offsets_in`` (``q - Z``)."""
    q = offsets_on(x, in_grid.scale) if offsets_in is None else tf.cast(offsets_in, tf.int64)
    index = tf.cast(q + tf.cast(in_grid.zero_point, tf.int64), tf.int32) + 128
    return tf.gather(table, tf.clip_by_value(index, 0, 255))


def clamp_bounds(out_grid: Grid, fused: str):
    """The kernel's integer clamp ``[lo, hi]`` on ``q`` (output range, fused ReLU/ReLU6): ReLU6's top is
    ``Z + round(6.0f / S)``, the division in C ``float`` (``CalculateActivationRangeQuantized``, ``QuantizedReluX``)."""
    lo = tf.constant(float(out_grid.qmin), tf.float64)
    hi = tf.constant(float(out_grid.qmax), tf.float64)
    if fused in ("relu", "relu6"):
        lo = tf.maximum(lo, out_grid.zero_point)
    if fused == "relu6":
        six = tf.constant(6.0, tf.float32) / tf.cast(out_grid.scale, tf.float32)
        hi = tf.minimum(hi, out_grid.zero_point + round_half_away(tf.cast(six, tf.float64)))
    return lo, hi


def clamp_dequantize(q, out_grid: Grid, fused: str = "linear"):
    """Integer values ``q`` (float64) clamped as the kernel clamps them, back to float32 on ``out_grid``."""
    lo, hi = clamp_bounds(out_grid, fused)
    q = tf.clip_by_value(q, lo, hi)
    return tf.cast((q - out_grid.zero_point) * out_grid.scale, tf.float32)


@functools.lru_cache(maxsize=None)
def _integer_values():
    return xla_pass(lambda x, scale: round_half_away(x / scale))


def integer_values(x, scale):
    """``round_half_away(x / scale)`` (float32 in and out): the integers a tensor on a grid holds, ``q - Z``,
    in one XLA pass (float division and rounding, IEEE: the bits of the plain ops)."""
    return _integer_values()(tf.cast(x, tf.float32), tf.cast(scale, tf.float32))
