"""Integer grids: a tensor's (scale, zero point, qmin, qmax) as a runtime stores it, derived from the
FakeQuant range a quantizer hands TensorFlow, and the moves between float values and grid offsets."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from typing import Optional, Tuple

from qresearch._compat import tf
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
    original = ops.fake_quant

    def record(x, range_min, range_max, bits, narrow_range, channel_axes=None):
        seen.append(((range_min, range_max, bits, narrow_range), x is like))
        return x

    ops.fake_quant = record
    try:
        quantizer(like, False, weights=qvars)
    finally:
        ops.fake_quant = original
    return seen[0] if len(seen) == 1 else (None, False)


@dataclasses.dataclass
class Grid:
    """A tensor's integer grid as the TFLite converter derives it from a FakeQuant range."""

    scale: tf.Tensor        # float64 holding the float32 scale stored in the flatbuffer
    zero_point: tf.Tensor   # float64, integer-valued
    qmin: int
    qmax: int


def grid_of(range_min, range_max, bits: int, narrow_range: bool) -> Grid:
    """Scale ``(max - min) / (qmax - qmin)`` in double, stored as float32; the zero point from whichever
    end has the smaller error, clamped and rounded half away (tflite-int8-spec.md §4.2). A zero range
    gets scale 1 (the converter's rule)."""
    qmin = -(2 ** (bits - 1)) + (1 if narrow_range else 0)
    qmax = 2 ** (bits - 1) - 1
    lo = tf.cast(tf.convert_to_tensor(range_min), tf.float64)
    hi = tf.cast(tf.convert_to_tensor(range_max), tf.float64)
    scale = (hi - lo) / float(qmax - qmin)
    scale = tf.where(tf.abs(hi - lo) < 2.220446049250313e-16, tf.ones_like(scale), scale)
    scale = tf.cast(tf.cast(scale, tf.float32), tf.float64)
    zp_min, zp_max = qmin - lo / scale, qmax - hi / scale
    err_min = abs(qmin) + tf.abs(lo / scale)
    err_max = abs(qmax) + tf.abs(hi / scale)
    zp = tf.where(err_min < err_max, zp_min, zp_max)
    zp = round_half_away(tf.clip_by_value(zp, float(qmin), float(qmax)))
    return Grid(scale, zp, qmin, qmax)


_calls = threading.local()


@contextlib.contextmanager
def one_call():
    """Scope of one model call (``QATModel.__call__``): no quantizer variable changes inside it, so each
    quantizer's grid is derived once per graph being built (the emulation asks for a tensor's grid as one
    layer's output and again as the next layer's input; each derivation is ~40 scalar ops per call)."""
    if getattr(_calls, "grids", None) is not None:  # a model called inside another's call
        yield
        return
    _calls.grids, _calls.fused, _calls.offsets = {}, {}, {}
    try:
        yield
    finally:
        _calls.grids = _calls.fused = _calls.offsets = None


def _source_key(quantizer, qvars):
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()  # a cond branch: its own
    return (id(quantizer), id(qvars), id(graph)), (quantizer, qvars, graph)


def mark_fused(quantizer, qvars) -> None:
    """Record, for this model call and graph, that an integer kernel computed the output of the ReLU layer
    whose output quantizer this is (TFLite fuses that ReLU into the kernel before it): ``fused_upstream``."""
    fused = getattr(_calls, "fused", None)
    if fused is not None:
        key, held = _source_key(quantizer, qvars)
        fused[key] = held  # holding them: no id is reused while the call lasts


def fused_upstream(quantizer, qvars) -> bool:
    """True if the kernel before has computed this ReLU layer's output in this call and graph: its values
    are already clamped onto this quantizer's grid, which a ReLU and a FakeQuant on that grid keep as they
    are, so the layer passes them on (the deployed model has no op there either)."""
    fused = getattr(_calls, "fused", None)
    if not fused:
        return False
    key, held = _source_key(quantizer, qvars)
    hit = fused.get(key)
    return hit is not None and all(a is b for a, b in zip(hit, held))


def note_offsets(y, offsets_, source=None) -> None:
    """Record, for this model call, the integer offsets ``q - Z`` (float32) a kernel computed the tensor ``y``
    from, on the grid of ``source`` (its ``(quantizer, variables)``; None: the kernel's own output grid)."""
    table = getattr(_calls, "offsets", None)
    if table is not None:
        key, held = _source_key(*source) if source is not None else _source_key(None, None)
        table[(id(y),) + key] = (y, held, offsets_)


def offsets_of(y, source=None):
    """The offsets ``note_offsets`` recorded for the tensor ``y`` on the grid of ``source``, or None."""
    table = getattr(_calls, "offsets", None)
    if not table:
        return None
    key, held = _source_key(*source) if source is not None else _source_key(None, None)
    hit = table.get((id(y),) + key)
    if hit is None or hit[0] is not y or not all(a is b for a, b in zip(hit[1], held)):
        return None
    return hit[2]


def grid_of_quantizer(quantizer, qvars) -> Optional[Grid]:
    """The integer grid of a quantizer's output, or None if its inference pass is not one FakeQuant."""
    return _grid_and_purity(quantizer, qvars)[0]


def pure_fake_quant(quantizer, qvars) -> bool:
    """True if ``quantizer``'s inference pass is one FakeQuant of its input and nothing else (no clip before
    it, as signed PACT's ``max(x, -α)``): on-grid values then keep their grid points through it."""
    return _grid_and_purity(quantizer, qvars)[1]


def _grid_and_purity(quantizer, qvars):
    cache = getattr(_calls, "grids", None)
    key, held = _source_key(quantizer, qvars)
    hit = cache.get(key) if cache is not None else None
    if hit is not None and all(a is b for a, b in zip(hit[0], held)):
        return hit[1]
    rng, pure = _fake_quant_call(quantizer, qvars, tf.zeros([1]))
    found = (grid_of(*rng) if rng is not None else None, pure)
    if cache is not None:
        cache[key] = (held, found)  # holding them: no id is reused while the call lasts
    return found


def offsets(x, g: Grid):
    """``q - Z`` of float values on grid ``g`` (int64)."""
    return tf.cast(round_half_away(tf.cast(x, tf.float64) / g.scale), tf.int64)


def clamp_bounds(out_grid: Grid, fused: str):
    """The kernel's integer clamp ``[lo, hi]`` on ``q`` (output range, fused ReLU/ReLU6)."""
    lo = tf.constant(float(out_grid.qmin), tf.float64)
    hi = tf.constant(float(out_grid.qmax), tf.float64)
    if fused in ("relu", "relu6"):
        lo = tf.maximum(lo, out_grid.zero_point)
    if fused == "relu6":
        hi = tf.minimum(hi, out_grid.zero_point + round_half_away(6.0 / out_grid.scale))
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
