"""The integer arithmetic of a deployment runtime, emulated in the QAT model's inference pass.

A float fake-quant simulation rounds once per tensor (FakeQuant, half up) and keeps biases float; an
int8 runtime accumulates in int32 with the bias on the grid ``S_in·S_w`` and requantizes with a
fixed-point multiplier, rounding twice. Each difference moves an output by one LSB now and then, and
on coarse grids (learned steps, few taps) one LSB in an early layer flips argmaxes later. So, in
inference only (training keeps the float straight-through forward its gradients need), layers whose
target names a kernel set compute what those kernels compute: a conv's int32 accumulator comes from
running the layer on integer inputs and weights (exact in float32 below 2^24) plus the bias rounded
onto ``S_in·S_w``, and is requantized in int64 by the runtime's own rule. Exports never see this: inside a
Keras saving trace (``model.save``, ``tf.saved_model.save``, ``TFLiteConverter.from_keras_model``) every layer
builds the plain FakeQuant graph the TFLite converter reads (``exporting``).

Kernel sets are data (``KERNELS``); each names its requantization rule. Measured against LiteRT
(TF 2.21) on CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED outputs, bit-exact:
- ``tflite_builtin`` (the interpreter's builtin kernels without delegates, ``verify``'s default):
  SaturatingRoundingDoublingHighMul (half away from zero), then a right shift rounding ties up.
- ``tflite_reference`` (``BUILTIN_REF`` kernels): the same, the shift rounding half away from zero
  (gemmlowp ``RoundingDivideByPOT``; tflite-int8-spec.md §2.2).
- ``xnnpack`` (the interpreter's default delegate): one rounding, ``(x·M + 2^(s-1)) >> s``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Callable, Dict, Optional, Tuple

from qresearch._compat import tf
from qresearch.quantizers import ops
from qresearch.registry import Registry

_state = threading.local()


# ----------------------------------------------------------------------------- modes
def exporting() -> bool:
    """True while layers must build the plain FakeQuant graph (what the TFLite converter reads), not the
    emulation: inside a Keras saving trace, or inside ``export_mode``.

    Every export goes through such a trace: ``model.save`` and ``tf.saved_model.save`` trace each layer's
    call and the serving signature under Keras' call context with ``saving=True``, and TF 2.21's
    ``TFLiteConverter.from_keras_model`` saves the model to a temporary SavedModel (its fallback,
    ``trace_model_call``, sets the same flag). ``predict``/``model(x)`` never run with it, so inference
    keeps the emulation and a SavedModel's graphs (what ``from_saved_model`` reads) are FakeQuant graphs.
    """
    return getattr(_state, "exporting", False) or in_saving_trace()


def in_saving_trace() -> bool:
    """True while TensorFlow or Keras traces a model for export.

    TF's save context covers all of ``tf.saved_model.save`` (so also ``model.save`` and the converter's
    SavedModel step, and a QAT model nested in another model). Keras' call-context ``saving`` flag covers
    ``trace_model_call``, which the converter falls back to when saving fails: Keras sets it around the model
    call, whose ``__call__`` then opens a fresh context without it, so ``QATModel`` carries it down to its
    layers with ``export_mode``."""
    from tensorflow.python.saved_model import save_context
    from tf_keras.src.engine import base_layer_utils

    return save_context.in_save_context() or bool(base_layer_utils.call_context().saving)


@contextlib.contextmanager
def export_mode():
    """Layers build the plain FakeQuant graph, not the emulation (entered by ``QATModel`` when a saving trace
    calls it; also usable to trace an export function by hand)."""
    old = getattr(_state, "exporting", False)
    _state.exporting = True
    try:
        yield
    finally:
        _state.exporting = old


@contextlib.contextmanager
def emulated_kernels(name: Optional[str]):
    """Emulate kernel set ``name`` (or none: ``"none"``) instead of each layer's own, e.g. to compare
    with another LiteRT kernel set (``verify(kernels=...)``). Applies to eager calls and new traces."""
    if name not in (None, "none"):
        KERNELS.get(name)  # an unknown name fails here, with the known ones listed
    old = getattr(_state, "override", None)
    _state.override = name
    try:
        yield
    finally:
        _state.override = old


def active_kernels(own: Optional[str]) -> Optional["IntegerKernels"]:
    """The kernel set a layer configured with ``own`` emulates now (None: float simulation)."""
    if exporting():
        return None
    name = getattr(_state, "override", None) or own
    if not name or name == "none":
        return None
    return KERNELS.get(name)


# ----------------------------------------------------------------------------- grids
def round_half_away(x):
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


def fake_quant_range(quantizer, qvars, like) -> Optional[Tuple]:
    """``(min, max, bits, narrow_range)`` that ``quantizer`` hands TF FakeQuant in inference, or None if
    its inference pass is not one FakeQuant call. Plain arithmetic on the quantizer's variables."""
    seen = []
    original = ops.fake_quant

    def record(x, range_min, range_max, bits, narrow_range, channel_axes=None):
        seen.append((range_min, range_max, bits, narrow_range))
        return x

    ops.fake_quant = record
    try:
        quantizer(like, False, weights=qvars)
    finally:
        ops.fake_quant = original
    return seen[0] if len(seen) == 1 else None


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


# ----------------------------------------------------------------------------- fixed point
def quantize_multiplier(m):
    """``(M, shift)`` with ``m ≈ M·2^(shift-31)``, ``M`` in [2^30, 2^31) (TFLite ``QuantizeMultiplier``)."""
    m = tf.convert_to_tensor(m, tf.float64)
    positive = m > 0
    safe = tf.where(positive, m, tf.ones_like(m))
    shift = tf.floor(tf.math.log(safe) / tf.math.log(tf.constant(2.0, tf.float64))) + 1.0
    frac = safe / tf.pow(tf.constant(2.0, tf.float64), shift)
    shift = tf.where(frac >= 1.0, shift + 1.0, tf.where(frac < 0.5, shift - 1.0, shift))  # log rounding
    frac = safe / tf.pow(tf.constant(2.0, tf.float64), shift)
    fixed = tf.floor(frac * 2.0 ** 31 + 0.5)
    overflow = fixed >= 2.0 ** 31
    fixed = tf.where(overflow, fixed / 2.0, fixed)
    shift = tf.where(overflow, shift + 1.0, shift)
    flush = tf.logical_or(tf.logical_not(positive), shift < -31.0)
    fixed = tf.where(flush, tf.zeros_like(fixed), fixed)
    shift = tf.where(flush, tf.zeros_like(shift), shift)
    return tf.cast(fixed, tf.int64), tf.cast(shift, tf.int64)


def _pow2(e):
    return tf.bitwise.left_shift(tf.ones_like(e), e)


def _srdhm(x, multiplier):
    """gemmlowp SaturatingRoundingDoublingHighMul (int64 in and out): ``(x·M + nudge) / 2^31`` truncated,
    with nudge ``2^30`` for ``x·M >= 0`` and ``1 - 2^30`` below. For negative ``v = x·M + 1 - 2^30``,
    truncation is ``floor((v + 2^31 - 1) / 2^31) = floor((x·M + 2^30) / 2^31)``, the very expression of the
    non-negative case: so it is one add and one arithmetic shift, no int64 division and no select
    (tests/schemes/test_integer.py checks it against the gemmlowp formula)."""
    return tf.bitwise.right_shift(x * multiplier + tf.constant(2 ** 30, tf.int64), tf.constant(31, tf.int64))


def _double_rounding(ties: str):
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
                tf.bitwise.right_shift(_pow2(right), 1), tf.constant(31, tf.int64))
            return tf.bitwise.right_shift(x * (multiplier * _pow2(left)) + offset, right + 31)
        y = _srdhm(x * _pow2(left), multiplier)
        mask = _pow2(right) - 1
        remainder = tf.bitwise.bitwise_and(y, mask)
        threshold = tf.bitwise.right_shift(mask, 1) + tf.cast(y < 0, tf.int64)
        return tf.bitwise.right_shift(y, right) + tf.cast(remainder > threshold, tf.int64)

    return requantize


def _single_rounding(x, multiplier, shift):
    total = 31 - shift
    return tf.bitwise.right_shift(x * multiplier + tf.bitwise.right_shift(_pow2(total), 1), total)


@dataclasses.dataclass(frozen=True)
class IntegerKernels:
    """How a runtime's int8 kernels round, per kind of op (None: that op keeps the float simulation).

    ``requantize(acc, M, shift)``: conv / depthwise / fully connected outputs; ``scalar_requantize``: the
    kernels' scalar MultiplyByQuantizedMultiplier (MEAN, ADD's output); ``add_vector``: ADD rescales its
    inputs with the vector path's single rounding (``SRDHM(x << (20 + e), M)``) rather than the scalar
    double rounding (LiteRT's x86 build runs ADD 16 elements at a time; the last ``size % 16`` elements of
    a buffer take the scalar path, which batched inference of 16·k elements never reaches); None: ADD,
    SUB and MUL keep the float simulation. ``mean_keepdims``: the keepdims MEAN kernel is emulated.
    """

    name: str
    requantize: Callable
    scalar_requantize: Callable
    add_vector: Optional[bool] = None
    op_requantize: Optional[Dict[str, Callable]] = None  # per TFLite op where it differs from ``requantize``
    mean_keepdims: bool = False  # the keepdims=True 4-D MEAN kernel (per-16-channel rounding) is emulated
    description: str = ""

    def rescale(self, acc, real_multiplier, op: str = "CONV_2D"):
        """``acc`` (int64) times the real multiplier, as the kernel of TFLite op ``op`` rounds it."""
        multiplier, shift = quantize_multiplier(real_multiplier)
        fn = (self.op_requantize or {}).get(op, self.requantize)
        return fn(acc, multiplier, shift)


KERNELS: Registry[IntegerKernels] = Registry(
    "integer kernel set", how_to_add="qresearch.schemes.integer.KERNELS.register('NAME', IntegerKernels(...)) "
    "in a module passed as plugins=[your_module] (or imported in Python).")
_AWAY = _double_rounding("away")
KERNELS.register("tflite_builtin", IntegerKernels(
    "tflite_builtin", _double_rounding("up"), _AWAY, add_vector=True, op_requantize={"TRANSPOSE_CONV": _AWAY},
    mean_keepdims=True,
    description="LiteRT builtin kernels without delegates (x86-64 build, ai-edge-litert 2.x): conv/FC "
                "requantize with SRDHM then a shift rounding ties up; TRANSPOSE_CONV, MEAN and ADD's output "
                "with SRDHM then RoundingDivideByPOT (half away)"))
KERNELS.register("tflite_reference", IntegerKernels(
    "tflite_reference", _AWAY, _AWAY, add_vector=False, op_requantize={"FULLY_CONNECTED": _single_rounding},
    description="LiteRT reference kernels (BUILTIN_REF): SRDHM then RoundingDivideByPOT, except fully "
                "connected, which rounds once (measured)"))
KERNELS.register("xnnpack", IntegerKernels(
    "xnnpack", _single_rounding, _AWAY, add_vector=None,
    description="XNNPACK (LiteRT's default delegate): conv/FC with one rounding; MEAN stays on the builtin "
                "kernel; ADD/MUL are not emulated"))


# ----------------------------------------------------------------------------- layer arithmetic
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")


def requantize_accumulator(kernels: IntegerKernels, acc, in_grid: Grid, weight_scale, out_grid: Grid,
                           activation: str = "linear", op: str = "CONV_2D"):
    """A conv / depthwise / fully connected output as the int8 kernel computes it (tflite-int8-spec §2.3)
    from its int32 accumulator ``acc`` (int64, bias included): requantized by ``S_in·S_w[c]/S_out`` (per
    output channel, the last axis, or a scalar), the output zero point added, the fused activation
    applied as the kernel's integer clamp. Returns the dequantized float32 output on ``out_grid``."""
    q = kernels.rescale(acc, in_grid.scale * weight_scale / out_grid.scale, op)
    return _clamp_dequantize_offsets(tf.cast(q, tf.float64), out_grid, activation)


def quantize_input(x, grid: Grid):
    """TFLite QUANTIZE (float -> int8): ``clamp(round_half_away(x / S) + Z)``, float32 division."""
    scale32 = tf.cast(grid.scale, tf.float32)
    q = round_half_away(tf.cast(x / scale32, tf.float64)) + grid.zero_point
    q = tf.clip_by_value(q, float(grid.qmin), float(grid.qmax))
    return tf.cast((q - grid.zero_point) * grid.scale, tf.float32)


def mean(kernels: IntegerKernels, y_mean, count: int, in_grid: Grid, out_grid: Grid):
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
    q = tf.clip_by_value(q, float(out_grid.qmin), float(out_grid.qmax))
    return tf.cast((q - out_grid.zero_point) * out_grid.scale, tf.float32)


def average_pool(y_avg, counts, grid: Grid):
    """AVERAGE_POOL_2D: the raw int8 sum over the window's valid taps divided by their number ``counts``,
    rounded half away from raw 0 (not from Z); the output keeps the input's grid."""
    counts = tf.cast(counts, tf.float64)
    acc = round_half_away(counts * (tf.cast(y_avg, tf.float64) / grid.scale + grid.zero_point))
    q = tf.sign(acc) * tf.math.floordiv(tf.abs(acc) + tf.math.floordiv(counts, 2.0), counts)
    q = tf.clip_by_value(q, float(grid.qmin), float(grid.qmax))
    return tf.cast((q - grid.zero_point) * grid.scale, tf.float32)


def average_pool_counts(height: int, width: int, pool, strides, padding: str):
    """Valid taps per output position of a 2-D pooling window (TFLite skips padded taps), shape (1, H', W', 1)."""
    import numpy as np

    def axis(n, k, s):
        out = (n + s - 1) // s if padding == "same" else (n - k + s) // s
        pad = max(0, ((out - 1) * s + k - n) // 2) if padding == "same" else 0
        starts = np.arange(out) * s - pad
        return np.minimum(starts + k, n) - np.maximum(starts, 0)

    rows, cols = axis(height, pool[0], strides[0]), axis(width, pool[1], strides[1])
    return (rows[:, None] * cols[None, :]).astype("float64")[None, :, :, None]


def _offsets(x, g: Grid):
    """``q - Z`` of float values on grid ``g`` (int64)."""
    return tf.cast(round_half_away(tf.cast(x, tf.float64) / g.scale), tf.int64)


def add(kernels: IntegerKernels, x1, x2, g1: Grid, g2: Grid, out_grid: Grid, fused: str = "linear",
        subtract: bool = False):
    """ADD / SUB of two same-shape int8 tensors (tflite-int8-spec §5): inputs rescaled to
    ``2·max(S1, S2)/2^20``, summed, requantized to the output. ``x1``/``x2``: float tensors on their
    grids. SUB always takes the scalar path (measured)."""
    twice_max = 2.0 * tf.maximum(g1.scale, g2.scale)

    def rescaled(x, g):
        q = _offsets(x, g)
        multiplier, shift = quantize_multiplier(g.scale / twice_max)
        if kernels.add_vector and not subtract:
            left = 20 + shift
            shifted = tf.where(left >= 0, tf.bitwise.left_shift(q, tf.maximum(left, 0)),
                               tf.bitwise.right_shift(q, tf.maximum(-left, 0)))
            return _srdhm(shifted, multiplier)
        return kernels.scalar_requantize(tf.bitwise.left_shift(q, 20), multiplier, shift)

    a, b = rescaled(x1, g1), rescaled(x2, g2)
    total = a - b if subtract else a + b
    multiplier, shift = quantize_multiplier(twice_max / (2.0 ** 20 * out_grid.scale))
    q = tf.cast(kernels.scalar_requantize(total, multiplier, shift), tf.float64) + out_grid.zero_point
    return _clamp_dequantize(q, out_grid, fused)


def multiply(kernels: IntegerKernels, x1, x2, g1: Grid, g2: Grid, out_grid: Grid, fused: str = "linear"):
    """MUL of two same-shape int8 tensors: ``MBQM((q1 - Z1)(q2 - Z2), S1·S2/S_out)`` with the multiplier
    formed in float32 (``float(float(S1·S2) / S_out)``, measured), scalar rounding."""
    s1, s2, so = (tf.cast(tf.cast(g.scale, tf.float32), tf.float32) for g in (g1, g2, out_grid))
    real = tf.cast((s1 * s2) / so, tf.float64)
    product = _offsets(x1, g1) * _offsets(x2, g2)
    multiplier, shift = quantize_multiplier(real)
    q = tf.cast(kernels.scalar_requantize(product, multiplier, shift), tf.float64) + out_grid.zero_point
    return _clamp_dequantize(q, out_grid, fused)


def _clamp_bounds(out_grid: Grid, fused: str):
    """The kernel's integer clamp ``[lo, hi]`` on ``q`` (output range, fused ReLU/ReLU6)."""
    lo = tf.constant(float(out_grid.qmin), tf.float64)
    hi = tf.constant(float(out_grid.qmax), tf.float64)
    if fused in ("relu", "relu6"):
        lo = tf.maximum(lo, out_grid.zero_point)
    if fused == "relu6":
        hi = tf.minimum(hi, out_grid.zero_point + round_half_away(6.0 / out_grid.scale))
    return lo, hi


def _clamp_dequantize(q, out_grid: Grid, fused: str):
    lo, hi = _clamp_bounds(out_grid, fused)
    q = tf.clip_by_value(q, lo, hi)
    return tf.cast((q - out_grid.zero_point) * out_grid.scale, tf.float32)


def _clamp_dequantize_offsets(offsets, out_grid: Grid, fused: str):
    """``_clamp_dequantize(offsets + Z)`` without adding and removing ``Z`` on the whole tensor: every value
    is an integer below 2^53 in float64, so ``clip(q + Z, lo, hi) - Z`` is exactly ``clip(q, lo - Z, hi - Z)``
    (the bounds are per-tensor scalars)."""
    lo, hi = _clamp_bounds(out_grid, fused)
    q = tf.clip_by_value(offsets, lo - out_grid.zero_point, hi - out_grid.zero_point)
    return tf.cast(q * out_grid.scale, tf.float32)


MAX_SOFTMAX_CLASSES = 1024  # the emulated sum is unrolled over the classes


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
    qo = tf.clip_by_value(qo, float(out_grid.qmin), float(out_grid.qmax))
    return tf.cast((qo - out_grid.zero_point) * out_grid.scale, tf.float32)


def leaky_relu(kernels: IntegerKernels, x, alpha: float, in_grid: Grid, out_grid: Grid):
    """LEAKY_RELU: ``q - Z_in`` times ``S_in/S_out`` where it is >= 0, else times ``alpha·S_in/S_out``
    (two fixed-point multipliers, the kernels' scalar rounding), plus ``Z_out``."""
    q = _offsets(x, in_grid)
    identity = kernels.scalar_requantize(q, *quantize_multiplier(in_grid.scale / out_grid.scale))
    scaled = kernels.scalar_requantize(q, *quantize_multiplier(float(alpha) * in_grid.scale / out_grid.scale))
    y = tf.cast(tf.where(q >= 0, identity, scaled), tf.float64) + out_grid.zero_point
    return _clamp_dequantize(y, out_grid, "linear")


def mean_keepdims(kernels: IntegerKernels, y_mean, count: int, in_grid: Grid, out_grid: Grid):
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
    acc = tf.cast(round_half_away(float(count) * (tf.cast(y_mean, tf.float64) / in_grid.scale + in_grid.zero_point)),
                  tf.int64)
    channels = int(y_mean.shape[-1])
    vector = (channels // 16) * 16
    up = _double_rounding("up")(acc, multiplier, shift)
    away = _AWAY(acc, multiplier, shift)
    mask = tf.constant([c < vector for c in range(channels)])
    q = tf.cast(tf.where(mask, up, away), tf.float64) + bias
    q = tf.clip_by_value(q, float(out_grid.qmin), float(out_grid.qmax))
    return tf.cast((q - out_grid.zero_point) * out_grid.scale, tf.float32)
