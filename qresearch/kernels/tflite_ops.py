"""The int8 arithmetic of TFLite ops, one function per kernel, and ``TFLITE_OPS``: the table of op handlers
the TFLite kernel sets are made of (``builtin.py``).

Each rule was measured element by element against LiteRT (ai-edge-litert 2.x, TF 2.21) with a numpy
reference until 0 mismatches; where that differs from the spec text (tflite-int8-spec.md) the docstring
says so. Inputs and outputs are float tensors on their grids (the simulation's representation);
integers are carried as int64 or as integer-valued float64.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from qresearch._compat import tf
from qresearch.kernels import stats
from qresearch.kernels.fixed_point import float32_multiplier, parts, quantize_multiplier, round_away, round_up, srdhm
from qresearch.kernels.calls import note_offsets
from qresearch.kernels.grid import Grid, clamp_bounds, clamp_dequantize, offsets_on, round_half_away, table_lookup
from qresearch.kernels.hard_swish import hard_swish
from qresearch.kernels.normalization import OUTPUT_SCALE, l2_normalization
from qresearch.quantizers.fused import xla_pass

FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
# TFLite ops whose int8 kernel is the conv / fully-connected inner loop: an int32 accumulator requantized
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
MAX_SOFTMAX_CLASSES = 1024  # the emulated sum is unrolled over the classes


@dataclasses.dataclass
class OpCall:
    """One op as the emulation hands it to a handler: its operands (float tensors on their grids, or the
    int64 accumulator of a conv), the input and output grids, the fused activation and op attributes;
    ``offsets``: per operand, the integer offsets ``q - Z`` (float32) the kernel before handed on with it
    (``calls.offsets_of``), or None: a handler may read them instead of rounding ``x / S`` again."""

    operands: List[Any]
    in_grids: List[Grid]
    out_grid: Grid
    fused: str = "linear"
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    offsets: Optional[List[Any]] = None

    def operand_offsets(self, i: int):
        return self.offsets[i] if self.offsets else None


Handler = Callable[[Any, OpCall], Any]  # (kernel set, call) -> float32 output on call.out_grid


# ----------------------------------------------------------------------------- conv / fully connected
def as_int64(dot):
    """An integer-valued dot product (int64, or a float tensor holding integers) as int64."""
    return dot if dot.dtype == tf.int64 else tf.cast(tf.round(dot), tf.int64)


def requantize_accumulator(kernels, dot, in_grid: Grid, weight_scale, out_grid: Grid,
                           activation: str = "linear", op: str = "CONV_2D", bias=None, layer=None):
    """A conv / depthwise / fully connected output as the int8 kernel computes it (tflite-int8-spec §2.3)
    from its dot product ``dot`` (int64 or integer-valued float) and integer ``bias`` (int64, or None): the
    kernel set's accumulator (``accumulate``), requantized by ``S_in·S_w[c]/S_out`` (per output channel, the
    last axis, or a scalar), the output zero point added, the fused activation applied as the kernel's
    integer clamp. Returns the dequantized float32 output on ``out_grid``.

    The multipliers, their derived constants and the bounds are computed first (per channel); the rest is
    integer arithmetic over every element, run as one XLA pass (``_conv_tail``). Recording accumulator
    statistics (eagerly) keeps the plain ops: they read the accumulator's values."""
    params = kernels.requantize_params(kernels.multiplier(in_grid.scale, weight_scale, out_grid.scale, op), op)
    lo, hi = clamp_bounds(out_grid, activation)
    bounds = (lo - out_grid.zero_point, hi - out_grid.zero_point)
    if stats.active():
        acc = kernels.accumulate(as_int64(dot), bias, layer)
        offsets_ = _requantized(kernels, op, acc, params, *bounds)
    else:
        bias = tf.zeros([], tf.int64) if bias is None else bias  # + 0: the same accumulator
        tail = kernels.fused(("conv", op, len(params)),
                             lambda: xla_pass(functools.partial(_conv_tail, kernels, op)))
        offsets_ = tail(dot, bias, *bounds, *params)
    return dequantized(offsets_, out_grid.scale)


def _requantized(kernels, op, acc, params, lo, hi):
    """The integer offsets ``q - Z`` (float32, exact below 2^24) of the requantized ``acc``, clamped:
    ``clip(q + Z, lo, hi) - Z`` without adding and removing ``Z`` over the whole tensor (every value is an
    integer below 2^53 in float64, so it is exactly ``clip(q, lo - Z, hi - Z)``)."""
    q = tf.clip_by_value(tf.cast(kernels.apply_requantize(acc, params, op), tf.float64), lo, hi)
    return tf.cast(q, tf.float32)


def _conv_tail(kernels, op, dot, bias, lo, hi, *params):
    # One output: XLA CPU does not fuse two outputs of one chain into one loop; it ran the int64 chain once
    # per output (measured: the conv tails' time nearly halved with one).
    return _requantized(kernels, op, kernels.accumulate(as_int64(dot), bias), params, lo, hi)


def clamped_offsets(q, zero_point, lo, hi):
    """A tail's one output: the integer offsets ``clip(q, lo, hi) - Z`` (float32, exact) of integer-valued
    float64 ``q``. One output, because XLA CPU runs a chain once per output it feeds (``_conv_tail``); the
    float values are made from these outside the pass (``dequantized``)."""
    return tf.cast(tf.clip_by_value(q, lo, hi) - zero_point, tf.float32)


def dequantized(offsets_, scale):
    """A tail's float output from its integer offsets ``q - Z`` (float32) on a grid of step ``scale`` (float64
    holding a float32), the integers handed on to the next kernel (``calls.note_offsets``), as TFLite hands
    the int8 tensor on. ``float32(q)·float32(S)`` in float32 is the dequantization ``float32((q - Z)·S)`` in
    float64 bit for bit: both round the exact product once (|q| < 2^24 and S's 24-bit mantissa: it has at
    most 48 significant bits, exact in float64)."""
    y = offsets_ * tf.cast(scale, tf.float32)
    note_offsets(y, offsets_)
    return y


def integers(x, scale, handed_on: bool):
    """``q - Z`` (int64) inside a tail: ``x`` itself where it holds the offsets a kernel handed on, else
    ``round_half_away(x / S)`` of its float values (the same integers)."""
    return tf.cast(x, tf.int64) if handed_on else offsets_on(x, scale)


@functools.lru_cache(maxsize=None)
def _pass(tail):
    """``tail`` as one XLA pass, built once (the elementwise rest of an op; its constants are arguments)."""
    return xla_pass(tail)


# ----------------------------------------------------------------------------- QUANTIZE
def quantize_input(x, grid: Grid):
    """TFLite QUANTIZE (float -> int8): ``clamp(round_half_away(x / S) + Z)``, float32 division; one XLA pass
    (``_quantize_tail``) to the integer offsets, handed on to the next kernel."""
    lo, hi = clamp_bounds(grid, "linear")
    offsets_ = _pass(_quantize_tail)(x, tf.cast(grid.scale, tf.float32), grid.zero_point, lo, hi)
    return dequantized(offsets_, grid.scale)


def _quantize_tail(x, scale32, zero_point, lo, hi):
    q = round_half_away(tf.cast(x / scale32, tf.float64)) + zero_point
    return clamped_offsets(q, zero_point, lo, hi)


# ----------------------------------------------------------------------------- pooling
def mean(kernels, y_mean, count: int, in_grid: Grid, out_grid: Grid):
    """MEAN over ``count`` elements (keras GlobalAveragePooling1D/2D, keepdims=False), as TFLite's
    QuantizedMeanOrSum computes it: ``(M, e) = Q(S_in/S_out)``, the multiplier divided by the count in
    fixed point (``k = min(floor(log2 n), 32, 31 + e)``, ``M' = (M << k) // n``, ``e' = e - k``), then
    ``MBQM(Σq - Z_in·n, M', e') + Z_out``. ``y_mean``: the float mean of on-grid inputs."""
    acc = tf.cast(round_half_away(tf.cast(y_mean, tf.float64) * float(count) / in_grid.scale), tf.int64)
    multiplier, shift = quantize_multiplier(in_grid.scale / out_grid.scale)
    k = tf.minimum(tf.minimum(tf.constant(int(count).bit_length() - 1, tf.int64), tf.constant(32, tf.int64)),
                   31 + shift)
    multiplier = tf.math.floordiv(tf.bitwise.left_shift(multiplier, k), tf.constant(int(count), tf.int64))
    q = tf.cast(kernels.scalar_requantize(acc, multiplier, shift - k), tf.float64) + out_grid.zero_point
    return clamp_dequantize(q, out_grid)


def mean_keepdims(kernels, y_mean, count: int, in_grid: Grid, out_grid: Grid):
    """MEAN over H, W with keepdims=True on a 4-D tensor (GlobalAveragePooling2D(keepdims=True)): LiteRT's
    optimized kernel (measured bit-exact): the raw sum ``Σq`` (zero point not subtracted) times
    ``Q(float32(S_in / float32(n·S_out)))``, plus ``Z_out - trunc(float32(Z_in·S_in)/S_out ± 0.5)``.
    Channels run 16 at a time with a shift rounding ties up; the last ``C % 16`` channels take the scalar
    path (half away). Single-threaded interpreter (the default)."""
    f32 = tf.float32
    s_in, s_out = tf.cast(in_grid.scale, f32), tf.cast(out_grid.scale, f32)
    t = (tf.cast(in_grid.zero_point, f32) * s_in) / s_out
    t = tf.where(t > 0, t + 0.5, t - 0.5)
    bias = out_grid.zero_point - tf.cast(tf.sign(t) * tf.floor(tf.abs(t)), tf.float64)  # C++ truncation
    real = tf.cast(s_in / (tf.constant(float(count), f32) * s_out), tf.float64)
    multiplier, shift = quantize_multiplier(real)
    acc = tf.cast(_raw_sum(y_mean, count, in_grid), tf.int64)
    channels = int(y_mean.shape[-1])
    vector = (channels // 16) * 16
    up = round_up(acc, multiplier, shift)
    away = round_away(acc, multiplier, shift)
    mask = tf.constant([c < vector for c in range(channels)])
    q = tf.cast(tf.where(mask, up, away), tf.float64) + bias
    return clamp_dequantize(q, out_grid)


def _raw_sum(y_mean, count: int, in_grid: Grid):
    """The int8 sum ``Σq`` (zero point not subtracted; integer-valued float64) behind the float mean ``y_mean`` of
    ``count`` values on ``in_grid``."""
    return round_half_away(float(count) * (tf.cast(y_mean, tf.float64) / in_grid.scale + in_grid.zero_point))


def xnnpack_mean(kernels, y_mean, count: int, in_grid: Grid, out_grid: Grid):
    """MEAN as XNNPACK computes it (qs8 reduce; keepdims or not), in float32: the raw int32 sum ``Σq`` (zero point
    not subtracted) times ``scale = float32(S_in/S_out)·float32(1/n)``, plus ``Z_out - float32(n·Z_in)·scale``,
    each step rounded to float32, then rounded half to even. Measured against the delegate: 0 mismatches in
    119,400 outputs over n = 25, 36, 49, 64; subtracting ``n·Z_in`` from the sum first (exact) misses where the
    float32 bias rounds a value off a tie (2 of 4,776 outputs, fuzz seed 240)."""
    f32 = tf.float32
    scale = (tf.cast(in_grid.scale, f32) / tf.cast(out_grid.scale, f32)) * (1.0 / tf.constant(float(count), f32))
    raw_sum = _raw_sum(y_mean, count, in_grid)
    bias = tf.cast(out_grid.zero_point, f32) - tf.cast(float(count) * in_grid.zero_point, f32) * scale
    q = tf.round(tf.cast(raw_sum, f32) * scale + bias)   # two float32 roundings, then to even
    return clamp_dequantize(tf.cast(q, tf.float64), out_grid)


def average_pool(y_avg, counts, grid: Grid):
    """AVERAGE_POOL_2D: the raw int8 sum over the window's valid taps divided by their number ``counts``,
    rounded half away from raw 0 (not from Z); the output keeps the input's grid. One XLA pass to the
    integer offsets (``_average_pool_tail``)."""
    lo, hi = clamp_bounds(grid, "linear")
    offsets_ = _pass(_average_pool_tail)(y_avg, tf.cast(counts, tf.float64), grid.scale, grid.zero_point, lo, hi)
    return dequantized(offsets_, grid.scale)


def _average_pool_tail(y_avg, counts, scale, zero_point, lo, hi):
    acc = round_half_away(counts * (tf.cast(y_avg, tf.float64) / scale + zero_point))
    q = tf.sign(acc) * tf.math.floordiv(tf.abs(acc) + tf.math.floordiv(counts, 2.0), counts)
    return clamped_offsets(q, zero_point, lo, hi)


def average_pool_counts(height: int, width: int, pool, strides, padding: str):
    """Valid taps per output position of a 2-D pooling window (TFLite skips padded taps), shape (1, H', W', 1)."""
    def axis(n, k, s):
        out = (n + s - 1) // s if padding == "same" else (n - k + s) // s
        pad = max(0, ((out - 1) * s + k - n) // 2) if padding == "same" else 0
        starts = np.arange(out) * s - pad
        return np.minimum(starts + k, n) - np.maximum(starts, 0)

    rows, cols = axis(height, pool[0], strides[0]), axis(width, pool[1], strides[1])
    return (rows[:, None] * cols[None, :]).astype("float64")[None, :, :, None]


# ----------------------------------------------------------------------------- elementwise
#: Per output element, how LiteRT's optimized int8 ADD rescales the two inputs (``add_paths``).
SCALAR, VECTOR, FLOORED = 0, 1, 2


def add(kernels, x1, x2, g1: Grid, g2: Grid, out_grid: Grid, fused: str = "linear", subtract: bool = False,
        offsets1=None, offsets2=None):
    """ADD / SUB of two int8 tensors of the same shape or of shapes that broadcast (tflite-int8-spec §5): inputs
    rescaled to ``2·max(S1, S2)/2^20``, summed, requantized to the output. ``x1``/``x2``: float tensors on their
    grids. SUB always takes the scalar path (measured, broadcasts too). With ``kernels.add_vector`` ADD
    rescales its inputs as LiteRT's x86 build does (``add_paths``): 16 elements at a time with one rounding
    (``SRDHM(x << (20 + e), M)``), the scalar path on what is left of a buffer (which batched inference of
    16·k elements never reaches), and, where one input broadcasts along the innermost axis, 8 at a time with the
    shift after the multiply flooring (``SRDHM(x << 20, M) >> -e``).

    The multipliers are computed first; the elementwise rest is one XLA pass (``_add_tail``). ``offsets1`` /
    ``offsets2``: the inputs' integer offsets ``q - Z`` (float32) where the kernel before handed them on: the
    integers ``round(x / S)`` would give again (``calls.note_offsets``)."""
    twice_max = 2.0 * tf.maximum(g1.scale, g2.scale)
    m1, s1 = quantize_multiplier(g1.scale / twice_max)
    m2, s2 = quantize_multiplier(g2.scale / twice_max)
    mo, so = quantize_multiplier(twice_max / (2.0 ** 20 * out_grid.scale))
    lo, hi = clamp_bounds(out_grid, fused)
    paths = add_paths(x1.shape[1:], x2.shape[1:]) if kernels.add_vector and not subtract else SCALAR
    given = (offsets1 is not None, offsets2 is not None)
    key = paths if isinstance(paths, int) else (paths.shape, paths.tobytes())
    tail = kernels.fused(("add", key, subtract, given),
                         lambda: xla_pass(functools.partial(_add_tail, kernels, paths, subtract, given)))
    offsets_ = tail(x1 if offsets1 is None else offsets1, x2 if offsets2 is None else offsets2, g1.scale, g2.scale,
                    m1, s1, m2, s2, mo, so, out_grid.zero_point, lo, hi)
    return dequantized(offsets_, out_grid.scale)


def add_paths(shape1, shape2):
    """How LiteRT's optimized int8 ADD (``BroadcastAddFivefold``) rescales each element of one example's output:
    ``VECTOR`` everywhere for equal shapes; where one input broadcasts, per run of the kernel's inner loop
    (measured against LiteRT, tests/kernels/test_elementwise.py):
    - the innermost axes equal in both (length ``n``, e.g. a (1, 1, C) scale): ``AddElementwise(n)``, the first
      ``16·floor(n/16)`` elements ``VECTOR``, the rest ``SCALAR``;
    - the innermost axes broadcast in one input (length ``n``, e.g. an (H, W, 1) map): ``AddScalarBroadcast(n)``,
      the first ``8·floor(n/8)`` ``FLOORED``, the rest ``SCALAR``.
    An int array of the output's shape, ``VECTOR`` (an int) for equal shapes, None for shapes it does not
    model (neither broadcasts to the other)."""
    shape1, shape2 = tuple(shape1), tuple(shape2)
    if shape1 == shape2:
        return VECTOR
    big = shape1 if all(b in (1, a) for a, b in zip(shape1, shape2)) else shape2
    small = shape2 if big is shape1 else shape1
    if len(big) != len(small) or not all(s in (1, b) for s, b in zip(small, big)) or None in big:
        return None
    equal = [s == b for s, b in zip(small, big)]
    inner = next((i for i in range(len(big) - 1, -1, -1) if equal[i] != equal[-1]), -1) + 1
    n = int(np.prod(big[inner:]))
    lanes, fast = (16, VECTOR) if equal[-1] else (8, FLOORED)
    position = np.arange(int(np.prod(big))).reshape(big) % n
    return np.where(position < lanes * (n // lanes), fast, SCALAR).astype(np.int8)


def _add_tail(kernels, paths, subtract, given, x1, x2, scale1, scale2, m1, s1, m2, s2, mo, so, zero_point, lo, hi):
    def rescaled(x, input_scale, multiplier, shift, handed_on):
        q = integers(x, input_scale, handed_on)
        found = {}
        if _uses(paths, VECTOR):
            left = 20 + shift
            found[VECTOR] = srdhm(tf.where(left >= 0, tf.bitwise.left_shift(q, tf.maximum(left, 0)),
                                           tf.bitwise.right_shift(q, tf.maximum(-left, 0))), multiplier)
        if _uses(paths, FLOORED):
            found[FLOORED] = tf.bitwise.right_shift(srdhm(tf.bitwise.left_shift(q, 20), multiplier),
                                                    tf.maximum(-shift, 0))
        if _uses(paths, SCALAR):
            found[SCALAR] = kernels.scalar_requantize(tf.bitwise.left_shift(q, 20), multiplier, shift)
        if isinstance(paths, int):
            return found[paths]
        out = None
        for path, value in found.items():
            out = value if out is None else tf.where(tf.constant(paths == path), value, out)
        return out

    a, b = rescaled(x1, scale1, m1, s1, given[0]), rescaled(x2, scale2, m2, s2, given[1])
    total = a - b if subtract else a + b
    q = tf.cast(kernels.scalar_requantize(total, mo, so), tf.float64) + zero_point
    return clamped_offsets(q, zero_point, lo, hi)


def _uses(paths, path) -> bool:
    return paths == path if isinstance(paths, int) else bool(np.any(paths == path))


def multiply(kernels, x1, x2, g1: Grid, g2: Grid, out_grid: Grid, fused: str = "linear", offsets1=None,
             offsets2=None):
    """MUL of two same-shape int8 tensors: ``MBQM((q1 - Z1)(q2 - Z2), S1·S2/S_out)`` with the multiplier
    formed in float32 (``float(float(S1·S2) / S_out)``, measured), scalar rounding. The multiplier's
    constants are computed first; the elementwise rest is one XLA pass (``_multiply_tail``). ``offsets1`` /
    ``offsets2``: as ``add``'s."""
    s1, s2, so = (tf.cast(tf.cast(g.scale, tf.float32), tf.float32) for g in (g1, g2, out_grid))
    real = tf.cast((s1 * s2) / so, tf.float64)
    constants, apply = parts(kernels.scalar_requantize)
    params = constants(*quantize_multiplier(real))
    lo, hi = clamp_bounds(out_grid, fused)
    given = (offsets1 is not None, offsets2 is not None)
    tail = kernels.fused(("mul", len(params), given),
                         lambda: xla_pass(functools.partial(_multiply_tail, apply, given)))
    offsets_ = tail(x1 if offsets1 is None else offsets1, x2 if offsets2 is None else offsets2, g1.scale, g2.scale,
                    out_grid.zero_point, lo, hi, *params)
    return dequantized(offsets_, out_grid.scale)


def _multiply_tail(apply, given, x1, x2, scale1, scale2, zero_point, lo, hi, *params):
    product = integers(x1, scale1, given[0]) * integers(x2, scale2, given[1])
    q = tf.cast(apply(product, *params), tf.float64) + zero_point
    return clamped_offsets(q, zero_point, lo, hi)


def batch_matmul(kernels, x1, x2, g1: Grid, g2: Grid, out_grid: Grid, adj_x: bool = False, adj_y: bool = False,
                 offsets1=None, offsets2=None):
    """BATCH_MATMUL of two int8 tensors: ``Σ (q1 - Z1)(q2 - Z2)`` over the contracted axis (``adj_x`` / ``adj_y``:
    the first / second operand transposed), requantized by ``S1·S2/S_out`` as the kernel set rounds the op
    (measured against LiteRT, tests/kernels/test_batch_matmul.py). The integer products are summed in float64:
    exact below 2^53. Operands of rank 2 (a Dot of two vectors) are one row each, as the converter's EXPAND_DIMS
    makes them; the result is then (batch, 1)."""
    q1 = offsets_on(x1, g1.scale) if offsets1 is None else tf.cast(offsets1, tf.int64)
    q2 = offsets_on(x2, g2.scale) if offsets2 is None else tf.cast(offsets2, tf.int64)
    q1, q2 = tf.cast(q1, tf.float64), tf.cast(q2, tf.float64)
    vectors = q1.shape.rank == 2
    if vectors:
        q1, q2 = q1[:, None, :], q2[:, None, :]
    dot = tf.linalg.matmul(q1, q2, adjoint_a=adj_x, adjoint_b=adj_y)
    if vectors:
        dot = dot[:, 0, :]
    return requantize_accumulator(kernels, dot, g1, g2.scale, out_grid, op="BATCH_MATMUL")


def _batch_matmul_on(kernels=None):
    """The BATCH_MATMUL handler computing with ``kernels`` (None: the kernel set that calls it)."""
    def handler(calling, c: OpCall):
        return batch_matmul(kernels or calling, c.operands[0], c.operands[1], c.in_grids[0], c.in_grids[1],
                            c.out_grid, c.attrs["adj_x"], c.attrs["adj_y"], c.operand_offsets(0), c.operand_offsets(1))
    return handler


def _where_accepted(accepted, xnnpack: Callable, builtin: Callable):
    """XNNPACK's result where its operator accepts the scales (``accepted``, a scalar), else the builtin kernel's.
    Both are computed: the per-call memo (``kernels.calls``: grids, handed-on integers) records tensors as the
    handlers make them, and one recorded inside a ``tf.cond`` branch could not be used by the ops after it."""
    return tf.where(accepted, xnnpack(), builtin())


def _float32_exponent(v):
    """The binary exponent of positive float32 ``v`` (``floor(log2 v)``, read off its bits; int32)."""
    return tf.bitwise.right_shift(tf.bitcast(v, tf.int32), 23) - 127


def xnnpack_add(builtin, x1, x2, g1: Grid, g2: Grid, out_grid: Grid, fused: str = "linear", subtract: bool = False,
                offsets1=None, offsets2=None):
    """ADD / SUB as XNNPACK's qs8 kernel computes them: ``s_i = S_i/S_out`` in float32 (SUB: ``-s_2``), shift
    ``k = 20 - exponent(max |s_i|)``, multipliers ``lrintf(s_i·2^k)`` (the largest in [2^20, 2^21)), then
    ``Z_out + ((q1 - Z1)·M1 + (q2 - Z2)·M2 + 2^(k-1)) >> k``: one rounding, half up. XNNPACK refuses ``|s_i|``
    outside ``[2^-10, 2^8)``; the delegate then leaves the op to the builtin kernel (``add`` with the kernel set
    ``builtin``). Measured against the delegate: 0 mismatches on every input pair (tests/kernels/test_xnnpack.py)
    and 1.2M outputs of trained models, where the builtin kernel's rule misses."""
    f32 = tf.float32
    scales = [tf.cast(g.scale, f32) / tf.cast(out_grid.scale, f32) for g in (g1, g2)]
    largest = tf.maximum(scales[0], scales[1])
    accepted = tf.reduce_all([(s >= 2.0 ** -10) & (s < 2.0 ** 8) for s in scales])
    shift = 20 - _float32_exponent(largest)
    multipliers = [tf.cast(tf.round(s * tf.pow(2.0, tf.cast(shift, f32))), tf.int64) for s in scales]
    if subtract:
        multipliers[1] = -multipliers[1]
    lo, hi = clamp_bounds(out_grid, fused)
    given = (offsets1 is not None, offsets2 is not None)
    tail = builtin.fused(("xnnpack_add", given), lambda: xla_pass(functools.partial(_xnnpack_add_tail, given)))

    def xnnpack():
        return dequantized(tail(x1 if offsets1 is None else offsets1, x2 if offsets2 is None else offsets2, g1.scale,
                                g2.scale, tf.cast(shift, tf.int64), *multipliers, out_grid.zero_point, lo, hi),
                           out_grid.scale)

    return _where_accepted(accepted, xnnpack,
                           lambda: add(builtin, x1, x2, g1, g2, out_grid, fused, subtract, offsets1, offsets2))


def _xnnpack_add_tail(given, x1, x2, scale1, scale2, shift, m1, m2, zero_point, lo, hi):
    total = integers(x1, scale1, given[0]) * m1 + integers(x2, scale2, given[1]) * m2
    q = tf.bitwise.right_shift(total + tf.bitwise.left_shift(tf.ones_like(shift), shift - 1), shift)
    return clamped_offsets(tf.cast(q, tf.float64) + zero_point, zero_point, lo, hi)


def xnnpack_multiply(builtin, x1, x2, g1: Grid, g2: Grid, out_grid: Grid, fused: str = "linear", offsets1=None,
                     offsets2=None):
    """MUL as XNNPACK's qs8 kernel computes it: ``(q1 - Z1)(q2 - Z2)`` in float32 times ``float32(S1·S2/S_out)``
    (float32 arithmetic), rounded half to even, plus ``Z_out``. XNNPACK refuses a scale outside ``[2^-16, 2^8)``;
    the delegate then leaves the op to the builtin kernel (``multiply`` with the kernel set ``builtin``)."""
    f32 = tf.float32
    s1, s2, so = (tf.cast(g.scale, f32) for g in (g1, g2, out_grid))
    scale = (s1 * s2) / so
    accepted = (scale >= 2.0 ** -16) & (scale < 2.0 ** 8)
    lo, hi = clamp_bounds(out_grid, fused)
    given = (offsets1 is not None, offsets2 is not None)
    tail = builtin.fused(("xnnpack_mul", given), lambda: xla_pass(functools.partial(_xnnpack_multiply_tail, given)))

    def xnnpack():
        return dequantized(tail(x1 if offsets1 is None else offsets1, x2 if offsets2 is None else offsets2, g1.scale,
                                g2.scale, scale, out_grid.zero_point, lo, hi), out_grid.scale)

    return _where_accepted(accepted, xnnpack,
                           lambda: multiply(builtin, x1, x2, g1, g2, out_grid, fused, offsets1, offsets2))


def _xnnpack_multiply_tail(given, x1, x2, scale1, scale2, scale, zero_point, lo, hi):
    product = integers(x1, scale1, given[0]) * integers(x2, scale2, given[1])   # |product| < 2^16: exact
    q = tf.round(tf.cast(product, tf.float32) * scale)
    return clamped_offsets(tf.cast(q, tf.float64) + zero_point, zero_point, lo, hi)


def concatenation(kernels, operands, in_grids: List[Grid], out_grid: Grid, axis: int, offsets):
    """CONCATENATION onto one grid. TFLite's int8 kernel needs every input on the output's (S, Z): the converter
    puts a QUANTIZE before an input on another grid (DenseNet's concatenation of a concatenation), which LiteRT
    runs as ``clamp(MBQM(q - Z_in, S_in/S_out) + Z_out)``, the multiplier from the scales in double (quantize.cc),
    rounded as the kernel set's conv outputs are (builtin: SRDHM, then a right shift rounding ties up; measured
    against LiteRT on both signs: with two roundings a value with a fraction in [0.25, 0.5) goes one step up
    where ``S_in/S_out < 0.5``). An input on the output's grid passes as it is (multiplier 1 leaves its
    integers)."""
    return dequantized(tf.concat(onto_grid(kernels, operands, in_grids, out_grid, offsets), axis=axis),
                       out_grid.scale)


def onto_grid(kernels, operands, in_grids: List[Grid], out_grid: Grid, offsets):
    """Each operand's integer offsets ``q - Z_out`` on ``out_grid``, requantized by a QUANTIZE where it is on
    another grid (``concatenation``'s rounding)."""
    _, apply = parts(kernels.requantizer("QUANTIZE"))
    lo, hi = clamp_bounds(out_grid, "linear")
    pieces = []
    for x, g, given in zip(operands, in_grids, offsets):
        ratio = tf.cast(g.scale, tf.float64) / tf.cast(out_grid.scale, tf.float64)
        params = kernels.requantize_params(ratio, "QUANTIZE")
        tail = kernels.fused(("requantize", len(params), given is not None),
                             lambda: xla_pass(functools.partial(_requantize_tail, apply, given is not None)))
        pieces.append(tail(x if given is None else given, g.scale, out_grid.zero_point, lo, hi, *params))
    return pieces


def extremum(kernels, operands, in_grids: List[Grid], out_grid: Grid, offsets, largest: bool):
    """MAXIMUM / MINIMUM of two int8 tensors (broadcasting as TF does): the integers of each on the output's grid
    (a QUANTIZE before an input on another grid, as for CONCATENATION), compared; the kernel itself only
    compares."""
    a, b = onto_grid(kernels, operands, in_grids, out_grid, offsets)
    return dequantized(tf.maximum(a, b) if largest else tf.minimum(a, b), out_grid.scale)


def _requantize_tail(apply, handed_on, x, scale, out_zero_point, lo, hi, *params):
    q = tf.cast(apply(integers(x, scale, handed_on), *params), tf.float64) + out_zero_point
    return clamped_offsets(q, out_zero_point, lo, hi)


# ----------------------------------------------------------------------------- activations
def softmax(x, in_grid: Grid, out_grid: Grid):
    """int8 SOFTMAX (beta 1, last axis) as LiteRT's x86 kernel computes it (measured bit-exact against
    ai-edge-litert 2.x builtin kernels): a float32 table ``T[d] = expf(-S_in·d)`` indexed by
    ``d = max(q) - q``, the row sum accumulated in float32 in class order, ``inv = 1/(sum·S_out)``, and
    ``q_out = round_half_away(T[d]·inv) + Z_out``. The exp is float64 rounded to float32 (glibc's expf is
    correctly rounded in all but rare cases). ``x``: float input on ``in_grid``; at most
    ``MAX_SOFTMAX_CLASSES`` classes (static)."""
    classes = int(x.shape[-1])
    q = round_half_away(tf.cast(x, tf.float64) / in_grid.scale)                   # q - Z_in (Z cancels)
    d = tf.reduce_max(q, axis=-1, keepdims=True) - q
    s_in = tf.cast(in_grid.scale, tf.float32)
    table = tf.cast(tf.exp(tf.cast(-s_in * tf.cast(d, tf.float32), tf.float64)), tf.float32)
    total = table[..., 0]
    for j in range(1, classes):
        total = total + table[..., j]
    inv = 1.0 / (total * tf.cast(out_grid.scale, tf.float32))
    scaled = table * inv[..., None]
    qo = round_half_away(tf.cast(scaled, tf.float64)) + out_grid.zero_point
    return clamp_dequantize(qo, out_grid)


def leaky_relu(kernels, x, alpha: float, in_grid: Grid, out_grid: Grid, offsets_in=None):
    """LEAKY_RELU: ``q - Z_in`` times ``S_in/S_out`` where it is >= 0, else times ``alpha·S_in/S_out``
    (two fixed-point multipliers, the kernels' scalar rounding), plus ``Z_out``. The real multipliers are formed in
    float32, as ``LeakyReluPrepare``'s C ``float`` expressions are (``float32_multiplier``). The multipliers'
    constants are computed first; the elementwise rest is one XLA pass (``_leaky_relu_tail``). ``offsets_in``: the
    input's handed-on integers, as ``add``'s."""
    constants, apply = parts(kernels.scalar_requantize)
    identity = constants(*quantize_multiplier(float32_multiplier(in_grid.scale, 1.0, out_grid.scale)))
    scaled = constants(*quantize_multiplier(float32_multiplier(in_grid.scale, float(alpha), out_grid.scale)))
    lo, hi = clamp_bounds(out_grid, "linear")
    given = offsets_in is not None
    tail = kernels.fused(("leaky_relu", len(identity), given),
                         lambda: xla_pass(functools.partial(_leaky_relu_tail, apply, len(identity), given)))
    offsets_ = tail(x if offsets_in is None else offsets_in, in_grid.scale, out_grid.zero_point, lo, hi,
                    *identity, *scaled)
    return dequantized(offsets_, out_grid.scale)


def _leaky_relu_tail(apply, n, given, x, scale, zero_point, lo, hi, *params):
    q = integers(x, scale, given)
    y = tf.cast(tf.where(q >= 0, apply(q, *params[:n]), apply(q, *params[n:])), tf.float64) + zero_point
    return clamped_offsets(y, zero_point, lo, hi)


def relu(kernels, x, in_grid: Grid, out_grid: Grid, fused: str, offsets_in=None):
    """RELU / RELU6 as an op of its own (a ReLU its producer does not fuse: the producer's output has other readers,
    or the producer is a TRANSPOSE_CONV):
    ``Z_out + (q - Z_in)·S_in/S_out`` by the kernels' scalar MultiplyByQuantizedMultiplier, clamped to the ReLU's
    range on the output grid (``fused``: "relu" or "relu6"; reference/activations ``ReluX``, multiplier from
    ``ReluPrepare``, whose ``S_in/S_out`` is a C ``float`` division: ``float32_multiplier``; in double, an input on a
    tie in float32 lands 1 LSB lower, measured on NASNetMobile). ``offsets_in``: the input's handed-on integers."""
    constants, apply = parts(kernels.scalar_requantize)
    identity = constants(*quantize_multiplier(float32_multiplier(in_grid.scale, 1.0, out_grid.scale)))
    lo, hi = clamp_bounds(out_grid, fused)
    given = offsets_in is not None
    tail = kernels.fused(("relu", given), lambda: xla_pass(functools.partial(_relu_tail, apply, given)))
    offsets_ = tail(x if offsets_in is None else offsets_in, in_grid.scale, out_grid.zero_point, lo, hi, *identity)
    return dequantized(offsets_, out_grid.scale)


def _relu_tail(apply, given, x, scale, zero_point, lo, hi, *params):
    q = integers(x, scale, given)
    return clamped_offsets(tf.cast(apply(q, *params), tf.float64) + zero_point, zero_point, lo, hi)


def xnnpack_leaky_relu(builtin, x, alpha: float, in_grid: Grid, out_grid: Grid, offsets_in=None):
    """LEAKY_RELU as XNNPACK's qs8 kernel computes it: 8-bit fractional multipliers ``M± = lrintf(256·s±)`` of
    ``s+ = S_in/S_out`` and ``s- = s+·alpha`` (float32), ``Z_out + floor(((q - Z_in)·M± + 128) / 256)``. XNNPACK
    refuses ``s+`` outside ``[2^-8, 2^7]``, ``s-`` outside ``(-2^7, 2^7]`` or ``|s-| < 2^-8``; the delegate then
    leaves the op to the builtin kernel (``leaky_relu`` with the kernel set ``builtin``). Measured against the
    delegate: 0 mismatches in 1.2M outputs (alpha 0.2) and at alpha 0.005-1.5; alpha 0.001 (``|s-| < 2^-8``) ran
    the builtin kernel, 0 mismatches."""
    f32 = tf.float32
    positive = tf.cast(in_grid.scale, f32) / tf.cast(out_grid.scale, f32)
    negative = positive * tf.constant(float(alpha), f32)
    accepted = ((positive >= 2.0 ** -8) & (positive <= 2.0 ** 7) & (negative >= -(2.0 ** 7 - 2.0 ** -8))
                & (negative <= 2.0 ** 7) & (tf.abs(negative) >= 2.0 ** -8))
    multipliers = [tf.cast(tf.round(256.0 * s), tf.float64) for s in (positive, negative)]
    lo, hi = clamp_bounds(out_grid, "linear")
    given = offsets_in is not None
    tail = builtin.fused(("xnnpack_leaky_relu", given),
                         lambda: xla_pass(functools.partial(_xnnpack_leaky_relu_tail, given)))

    def xnnpack():
        return dequantized(tail(x if offsets_in is None else offsets_in, in_grid.scale, out_grid.zero_point, lo, hi,
                                *multipliers), out_grid.scale)

    return _where_accepted(accepted, xnnpack, lambda: leaky_relu(builtin, x, alpha, in_grid, out_grid, offsets_in))


def _xnnpack_leaky_relu_tail(given, x, scale, zero_point, lo, hi, positive, negative):
    q = tf.cast(integers(x, scale, given), tf.float64)   # |q·M| < 2^16: exact in float64
    y = tf.floor((q * tf.where(q >= 0, positive, negative) + 128.0) / 256.0) + zero_point
    return clamped_offsets(y, zero_point, lo, hi)


def prelu(kernels, x, alpha, in_grid: Grid, out_grid: Grid, offsets_in=None):
    """PRELU: ``q - Z_in`` times ``S_in/S_out`` where it is >= 0, else ``(q - Z_in)·a`` times ``S_in·S_a/S_out``,
    plus ``Z_out``; ``a`` is the float alpha as the converter stores it (measured, TF 2.21): int8 per tensor,
    zero point 0, ``S_a = float32(max|alpha| / 127)``, ``a = round_half_away(alpha / S_a)``. The real multipliers
    are formed in float32, as ``PreluPrepare``'s C ``float`` expressions are."""
    alpha = tf.cast(tf.convert_to_tensor(alpha), tf.float64)
    top = tf.reduce_max(tf.abs(alpha))
    s_alpha = tf.cast(tf.cast(top / 127.0, tf.float32), tf.float64)
    a = tf.where(top > 0, round_half_away(alpha / tf.where(top > 0, s_alpha, 1.0)), tf.zeros_like(alpha))
    constants, apply = parts(kernels.scalar_requantize)
    identity = constants(*quantize_multiplier(float32_multiplier(in_grid.scale, 1.0, out_grid.scale)))
    scaled = constants(*quantize_multiplier(float32_multiplier(in_grid.scale, s_alpha, out_grid.scale)))
    lo, hi = clamp_bounds(out_grid, "linear")
    given = offsets_in is not None
    tail = kernels.fused(("prelu", len(identity), given),
                         lambda: xla_pass(functools.partial(_prelu_tail, apply, len(identity), given)))
    offsets_ = tail(x if offsets_in is None else offsets_in, tf.cast(a, tf.int64), in_grid.scale,
                    out_grid.zero_point, lo, hi, *identity, *scaled)
    return dequantized(offsets_, out_grid.scale)


def _prelu_tail(apply, n, given, x, a, scale, zero_point, lo, hi, *params):
    q = integers(x, scale, given)
    y = tf.cast(tf.where(q >= 0, apply(q, *params[:n]), apply(q * a, *params[n:])), tf.float64) + zero_point
    return clamped_offsets(y, zero_point, lo, hi)


# ----------------------------------------------------------------------------- table (LUT) activations
def _logistic32(d):
    """LiteRT's ``1.0f / (1.0f + std::exp(-x))`` in float32 (the exp correctly rounded to float32)."""
    e = tf.cast(tf.exp(-tf.cast(d, tf.float64)), tf.float32)
    return 1.0 / (1.0 + e)


def _gelu32(d):
    """LiteRT's ``0.5f * x * (1.0f + std::erf(x * M_SQRT1_2))`` in float32 (the erf correctly rounded)."""
    e = tf.cast(tf.math.erf(tf.cast(d * np.float32(np.sqrt(0.5)), tf.float64)), tf.float32)
    return 0.5 * d * (1.0 + e)


# op -> the float function LiteRT's int8 kernel tabulates (``LUTPopulate``), evaluated as its float32 code does
LUT_FUNCTIONS: Dict[str, Callable] = {
    "LOGISTIC": _logistic32,
    "TANH": lambda d: tf.cast(tf.tanh(tf.cast(d, tf.float64)), tf.float32),
    "GELU": _gelu32,
}
# XNNPACK tabulates LOGISTIC / TANH in double and rounds half to even (measured: 0 mismatches in 200 random
# input/output grids each, where the float32 rule above missed one entry; GELU stays on the builtin kernel)
XNNPACK_LUT_FUNCTIONS: Dict[str, Callable] = {
    "LOGISTIC": lambda d: 1.0 / (1.0 + tf.exp(-tf.cast(d, tf.float64))),
    "TANH": lambda d: tf.tanh(tf.cast(d, tf.float64)),
}


def lut_table(transform, in_grid: Grid, out_grid: Grid, half_even: bool = False):
    """The 256 int8 outputs LiteRT tabulates at prepare time for every int8 input ``q`` (``LUTPopulate``):
    ``clamp(round(f(S_in·(q - Z_in)) · (1/S_out)) + Z_out)``, the input dequantized and the product taken in
    float32, rounded half away from zero (``half_even``: to even, XNNPACK's ``lrint``), clamped to int8 (float64,
    integer-valued; index ``q + 128``)."""
    q = tf.range(-128.0, 128.0, dtype=tf.float64)
    d = tf.cast(in_grid.scale, tf.float32) * tf.cast(q - in_grid.zero_point, tf.float32)
    t = transform(d)
    if t.dtype == tf.float64:
        y = t / tf.cast(tf.cast(out_grid.scale, tf.float32), tf.float64)
    else:
        y = tf.cast(t * (1.0 / tf.cast(out_grid.scale, tf.float32)), tf.float64)
    r = tf.round(y) if half_even else round_half_away(y)
    return tf.clip_by_value(r + out_grid.zero_point, -128.0, 127.0)


def lut_activation(x, transform, in_grid: Grid, out_grid: Grid, offsets_in=None, half_even: bool = False):
    """An int8 table activation (LOGISTIC, TANH, GELU): each input's table entry (``lut_table``), clamped to the
    output grid. ``offsets_in``: the input's handed-on integers, as ``add``'s. Returns None (the float simulation
    stays) for a grid wider than int8: the int16 kernels compute, not tabulate."""
    if in_grid.qmax - in_grid.qmin > 255 or out_grid.qmax - out_grid.qmin > 255:
        return None
    y = table_lookup(lut_table(transform, in_grid, out_grid, half_even), x, in_grid, offsets_in)
    lo, hi = clamp_bounds(out_grid, "linear")
    return dequantized(clamped_offsets(y, out_grid.zero_point, lo, hi), out_grid.scale)


def _lut(functions: Mapping[str, Callable], half_even: bool = False) -> Dict[str, Handler]:
    def handler_of(op):
        return lambda k, c: lut_activation(c.operands[0], functions[op], c.in_grids[0], c.out_grid,
                                           c.operand_offsets(0), half_even)
    return {op: handler_of(op) for op in functions}


# ----------------------------------------------------------------------------- the handler table
def _conv(kernels, c: OpCall):
    return requantize_accumulator(kernels, c.operands[0], c.in_grids[0], c.attrs["weight_scale"], c.out_grid,
                                  c.fused, op=c.attrs["op"], bias=c.attrs.get("bias"), layer=c.attrs.get("layer"))


def _two_inputs(fn, **fixed):
    def handler(kernels, c: OpCall):
        return fn(kernels, c.operands[0], c.operands[1], c.in_grids[0], c.in_grids[1], c.out_grid, c.fused,
                  offsets1=c.operand_offsets(0), offsets2=c.operand_offsets(1), **fixed)
    return handler


def _l2_normalization(kernels, c: OpCall):
    offsets = l2_normalization(c.operands[0], c.in_grids[0], c.out_grid, c.operand_offsets(0))
    return None if offsets is None else dequantized(offsets, tf.constant(OUTPUT_SCALE, tf.float64))


def _hard_swish(kernels, c: OpCall):
    offsets = hard_swish(c.operands[0], c.in_grids[0], c.out_grid, c.operand_offsets(0))
    return None if offsets is None else dequantized(offsets, c.out_grid.scale)


def _extremum_of(largest: bool):
    def handler(kernels, c: OpCall):
        return extremum(kernels, c.operands, c.in_grids, c.out_grid, [c.operand_offsets(0), c.operand_offsets(1)],
                        largest=largest)
    return handler


def resize_bilinear_taps(size_in: int, size_out: int, half_pixel_centers: bool = True, align_corners: bool = False):
    """Per output position along one axis: the two input taps and the upper tap's weight in 1/1024 steps, as
    TFLite's int8 RESIZE_BILINEAR computes them (reference_ops, which every int8 build runs: a 10-bit fixed-point
    scale and position, C integer division). Returns int arrays (lower, upper, weight); the lower tap's weight is
    1024 - weight (negative positions near the border weigh the lower tap over 1024: the two taps coincide)."""
    def c_div(a, b):   # C's integer division: truncates toward zero
        return np.sign(a) * (np.abs(a) // b)

    if align_corners and size_out > 1:
        scale = ((1 << 10) * (size_in - 1) + (size_out - 1) // 2) // (size_out - 1)
    else:
        scale = ((1 << 10) * size_in + size_out // 2) // size_out
    pos = np.arange(size_out, dtype=np.int64) * scale
    if half_pixel_centers:
        pos = pos + scale // 2 - (1 << 9)
    lower = np.maximum(c_div(pos, 1 << 10), 0)
    upper = np.minimum(c_div(pos + (1 << 10) - 1, 1 << 10), size_in - 1)
    return lower, upper, pos - (1 << 10) * lower


def resize_bilinear(x, size, grid: Grid, half_pixel_centers: bool = True, align_corners: bool = False):
    """RESIZE_BILINEAR on an int8 NHWC tensor ``x`` (float values on ``grid``) to ``size`` (H', W'): the four raw
    int8 taps weighted in int64 (1/1024 steps per axis, so 2^20 in all), rounded half away from 0 by a truncating
    division by 2^20; the output keeps the input's grid (no clamp: a convex combination stays in range)."""
    h_in, w_in = int(x.shape[1]), int(x.shape[2])
    y0, y1, wy = resize_bilinear_taps(h_in, int(size[0]), half_pixel_centers, align_corners)
    x0, x1, wx = resize_bilinear_taps(w_in, int(size[1]), half_pixel_centers, align_corners)
    raw = tf.cast(offsets_on(x, grid.scale), tf.float64) + grid.zero_point   # the stored int8 values, exact
    rows = [tf.gather(raw, tf.constant(i), axis=1) for i in (y0, y1)]
    taps = [[tf.gather(r, tf.constant(j), axis=2) for j in (x0, x1)] for r in rows]
    wy = tf.constant(wy.reshape(1, -1, 1, 1), tf.float64)
    wx = tf.constant(wx.reshape(1, 1, -1, 1), tf.float64)
    one = float(1 << 10)
    total = (taps[0][0] * (one - wy) * (one - wx) + taps[1][0] * wy * (one - wx)
             + taps[0][1] * (one - wy) * wx + taps[1][1] * wy * wx)   # |total| <= 128·2^20: exact in float64
    q = tf.sign(total) * tf.math.floordiv(tf.abs(total) + float(1 << 19), float(1 << 20))
    return dequantized(tf.cast(q - grid.zero_point, tf.float32), grid.scale)


def xnnpack_resize_bilinear_taps(size_in: int, size_out: int, half_pixel_centers: bool = True,
                                 align_corners: bool = False):
    """Per output position along one axis: the two input taps and the upper tap's weight in 1/2048 steps, as
    XNNPACK's qs8 resize computes them (float32 positions: ``o·scale`` (+ ``scale/2 - 1/2`` with half-pixel centers,
    then clamped to the input), truncated to the lower tap, the fraction rounded to 11 bits by ``lrintf``)."""
    f32 = np.float32
    if align_corners and size_out > 1:
        scale = f32(size_in - 1) / f32(size_out - 1)
    else:
        scale = f32(size_in) / f32(size_out)
    pos = np.arange(size_out).astype(f32) * scale
    if half_pixel_centers and not align_corners:
        pos = np.clip(pos + (f32(0.5) * scale - f32(0.5)), f32(0), f32(size_in - 1))
    lower = pos.astype(np.int64)
    return lower, np.minimum(lower + 1, size_in - 1), np.rint((pos - lower.astype(f32)) * f32(2048)).astype(np.int64)


def xnnpack_resize_bilinear(x, size, grid: Grid, half_pixel_centers: bool = True, align_corners: bool = False):
    """RESIZE_BILINEAR as XNNPACK's qs8 kernel computes it: the raw int8 taps blended along W, then H, in 11-bit
    fixed point (``t = (l << 11) + (r - l)·a_w``, ``(t_top << 11) + (t_bottom - t_top)·a_h``), then
    ``(acc + 2^21) >> 22``: rounded half up. Measured against the delegate: 0 mismatches in 5 size / mode cases
    (tests/kernels/test_xnnpack.py), where the builtin kernel's rule misses 6-14% of the outputs."""
    y0, y1, wy = xnnpack_resize_bilinear_taps(int(x.shape[1]), int(size[0]), half_pixel_centers, align_corners)
    x0, x1, wx = xnnpack_resize_bilinear_taps(int(x.shape[2]), int(size[1]), half_pixel_centers, align_corners)
    raw = tf.cast(offsets_on(x, grid.scale), tf.float64) + grid.zero_point   # the stored int8 values, exact
    rows = [tf.gather(raw, tf.constant(i), axis=1) for i in (y0, y1)]
    (tl, tr), (bl, br) = [[tf.gather(r, tf.constant(j), axis=2) for j in (x0, x1)] for r in rows]
    wy = tf.constant(wy.reshape(1, -1, 1, 1), tf.float64)
    wx = tf.constant(wx.reshape(1, 1, -1, 1), tf.float64)
    top, bottom = tl * 2048.0 + (tr - tl) * wx, bl * 2048.0 + (br - bl) * wx
    total = top * 2048.0 + (bottom - top) * wy   # |total| < 2^29: exact in float64
    q = tf.floor((total + 2.0 ** 21) / 2.0 ** 22)
    return dequantized(tf.cast(q - grid.zero_point, tf.float32), grid.scale)


def _mean(fn):
    def handler(kernels, c: OpCall):
        return fn(kernels, c.operands[0], c.attrs["count"], c.in_grids[0], c.out_grid)
    return handler


# Op name -> handler. Keys are the ``integer_op`` of the layer registry (schemes/layers.py), plus the
# kernel variants a layer's attributes select (MEAN_KEEPDIMS: the keepdims=True 4-D MEAN path).
TFLITE_OPS: Dict[str, Handler] = {
    **{op: _conv for op in CONV_OPS},
    "QUANTIZE": lambda k, c: quantize_input(c.operands[0], c.out_grid),
    "MEAN": _mean(mean),
    "MEAN_KEEPDIMS": _mean(mean_keepdims),
    "AVERAGE_POOL_2D": lambda k, c: average_pool(c.operands[0], c.attrs["counts"], c.out_grid),
    "RESIZE_BILINEAR": lambda k, c: resize_bilinear(c.operands[0], c.attrs["size"], c.in_grids[0],
                                                    c.attrs.get("half_pixel_centers", True),
                                                    c.attrs.get("align_corners", False)),
    "ADD": _two_inputs(add),
    "SUB": _two_inputs(add, subtract=True),
    "MUL": _two_inputs(multiply),
    "MAXIMUM": _extremum_of(largest=True),
    "MINIMUM": _extremum_of(largest=False),
    "CONCATENATION": lambda k, c: concatenation(k, c.operands, c.in_grids, c.out_grid, c.attrs["axis"],
                                                [c.operand_offsets(i) for i in range(len(c.operands))]),
    "SOFTMAX": lambda k, c: softmax(c.operands[0], c.in_grids[0], c.out_grid),
    "L2_NORMALIZATION": _l2_normalization,
    "HARD_SWISH": _hard_swish,
    "BATCH_MATMUL": _batch_matmul_on(),
    "LEAKY_RELU": lambda k, c: leaky_relu(k, c.operands[0], c.attrs["alpha"], c.in_grids[0], c.out_grid,
                                          c.operand_offsets(0)),
    "PRELU": lambda k, c: prelu(k, c.operands[0], c.attrs["alpha"], c.in_grids[0], c.out_grid, c.operand_offsets(0)),
    "RELU": lambda k, c: relu(k, c.operands[0], c.in_grids[0], c.out_grid, "relu", c.operand_offsets(0)),
    "RELU6": lambda k, c: relu(k, c.operands[0], c.in_grids[0], c.out_grid, "relu6", c.operand_offsets(0)),
    **_lut(LUT_FUNCTIONS),
}
def xnnpack_ops(builtin) -> Dict[str, Handler]:
    """XNNPACK's own arithmetic where it differs from the builtin kernels' (``builtin.py``'s xnnpack set): MEAN in
    float32 with or without keepdims, ADD/SUB with 21-bit multipliers and one rounding, MUL in float32, LEAKY_RELU
    with 8-bit multipliers, RESIZE_BILINEAR with 11-bit weights, LOGISTIC/TANH tables in double. ``builtin``: the
    kernel set that runs an op whose scales XNNPACK's operator refuses (the delegate leaves it to the interpreter)."""
    def on_builtin(fn, **fixed):
        def handler(kernels, c: OpCall):
            return fn(builtin, c.operands[0], c.operands[1], c.in_grids[0], c.in_grids[1], c.out_grid, c.fused,
                      offsets1=c.operand_offsets(0), offsets2=c.operand_offsets(1), **fixed)
        return handler

    return {
        **_lut(XNNPACK_LUT_FUNCTIONS, half_even=True),
        "MEAN": _mean(xnnpack_mean), "MEAN_KEEPDIMS": _mean(xnnpack_mean),
        "ADD": on_builtin(xnnpack_add), "SUB": on_builtin(xnnpack_add, subtract=True),
        "MUL": on_builtin(xnnpack_multiply),
        # the delegate takes a BATCH_MATMUL whose second operand has zero point 0 (float32 requantization, the
        # kernel set's conv rule); it leaves the others to the builtin kernel (measured)
        "BATCH_MATMUL": lambda k, c: _where_accepted(tf.equal(c.in_grids[1].zero_point, 0.0),
                                                     lambda: _batch_matmul_on()(k, c),
                                                     lambda: _batch_matmul_on(builtin)(k, c)),
        "LEAKY_RELU": lambda k, c: xnnpack_leaky_relu(builtin, c.operands[0], c.attrs["alpha"], c.in_grids[0],
                                                      c.out_grid, c.operand_offsets(0)),
        "RESIZE_BILINEAR": lambda k, c: xnnpack_resize_bilinear(c.operands[0], c.attrs["size"], c.in_grids[0],
                                                                c.attrs.get("half_pixel_centers", True),
                                                                c.attrs.get("align_corners", False)),
    }


def without(table: Mapping[str, Handler], *ops: str) -> Dict[str, Handler]:
    """``table`` less ``ops`` (ops a kernel set leaves to the float simulation)."""
    missing = [op for op in ops if op not in table]
    if missing:
        raise KeyError(f"ops {missing} are not in the table ({sorted(table)})")
    return {op: h for op, h in table.items() if op not in ops}

