"""Shared quantization math, written once and used by every quantizer.

Rounding with straight-through gradients, gradient scaling, power-of-two
scales, integer grids, finite-only statistics and the TensorFlow FakeQuant
call that the TFLite converter recognises.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from qresearch._compat import tf

EPS = 1e-8


def integer_grid(bits: int, signed: bool, narrow_range: bool) -> Tuple[int, int]:
    """Return ``(qn, qp)``: quantized integers lie in ``[-qn, qp]``.

    Signed grids are two's complement (``[-2^(b-1), 2^(b-1)-1]``), or
    ``[-(2^(b-1)-1), 2^(b-1)-1]`` with ``narrow_range``; unsigned grids are
    ``[0, 2^b-1]`` (``narrow_range`` drops the top level, keeping 2^b-1 levels).
    """
    if signed:
        qp = 2 ** (bits - 1) - 1
        qn = qp if narrow_range else qp + 1
    else:
        qn = 0
        qp = 2**bits - 2 if narrow_range else 2**bits - 1
    return qn, qp


def round_ste(x):
    """Round half to even forward; identity gradient (straight-through)."""
    return x + tf.stop_gradient(tf.round(x) - x)


def grad_scale(x, scale):
    """Forward ``x``; backward multiplies the gradient by ``scale`` (LSQ, Esser et al. 2020)."""
    y = x * scale
    return tf.stop_gradient(x - y) + y


def pot_ste(scale, mode: str = "ceil"):
    """Round a positive scale to a power of two; straight-through gradient.

    ``ceil`` never shrinks the range (no extra clipping), as in TQT (Jain et al. 2019);
    ``round`` picks the nearest power in the log domain.
    """
    log2 = tf.math.log(tf.maximum(scale, EPS)) / tf.math.log(2.0)
    k = {"ceil": tf.math.ceil, "round": tf.round, "floor": tf.math.floor}[mode](log2)
    return scale + tf.stop_gradient(tf.pow(2.0, k) - scale)


def reduce_finite(fn, x, axes, empty):
    """``fn`` (tf.reduce_min/max/mean) over finite entries of ``x``; ``empty`` if none."""
    finite = tf.math.is_finite(x)
    if fn is tf.reduce_mean:
        count = tf.reduce_sum(tf.cast(finite, x.dtype), axis=axes)
        total = tf.reduce_sum(tf.where(finite, x, tf.zeros_like(x)), axis=axes)
        return tf.where(count > 0, total / tf.maximum(count, 1.0), tf.cast(empty, x.dtype))
    neutral = {tf.reduce_min: x.dtype.max, tf.reduce_max: x.dtype.min}[fn]
    out = fn(tf.where(finite, x, tf.cast(neutral, x.dtype) * tf.ones_like(x)), axis=axes)
    any_finite = tf.reduce_any(finite, axis=axes)
    return tf.where(any_finite, out, tf.cast(empty, x.dtype))


def reduce_finite_range(x, axes, empty):
    """``(reduce_finite(tf.reduce_min, ...), reduce_finite(tf.reduce_max, ...))``: a min-max quantizer's
    statistics, every training step, in the two passes of the plain ``min``/``max`` when ``x`` is finite.

    TF's Min and Max propagate NaN, and an infinity shows in the min or the max, so both plain results
    are finite exactly when every entry reduced is (``tests/quantizers/test_ops.py`` checks it on the
    kernels). Then they are the finite-only ones, bit for bit: the masked reductions would see the same
    values in the same order. Otherwise a ``tf.cond`` runs the masked reductions (``_masked_range``); the
    branch not taken costs nothing. (Running them always, on ``x`` cut to length 0 when finite, cost about
    20 small ops per quantizer per step; the cond did not raise a step's peak memory: notes/performance.md,
    "ninth session".) Under XLA (``jit_compile``) the masked reductions run on all of ``x``, fused."""
    if _in_xla() or (axes is not None and not list(axes)):  # (no axis reduced: nothing to save)
        return _masked_range(x, axes, empty)
    lo, hi = tf.reduce_min(x, axis=axes), tf.reduce_max(x, axis=axes)
    finite = tf.reduce_all(tf.logical_and(tf.math.is_finite(lo), tf.math.is_finite(hi)))
    return tf.cond(finite, lambda: (lo, hi), lambda: _masked_range(x, axes, empty))


def _masked_range(x, axes, empty):
    """Min and max over the finite entries of ``x`` (``empty`` for a slice with none) in 5 passes: one
    finiteness mask for both, scalar neutral values, and "no finite entry" read from the results (the
    masked min still ``+max`` and the masked max still ``-max``; a finite ``v`` would give ``min <= v <=
    max``) instead of a ``reduce_any``. Same values as ``reduce_finite`` for each."""
    finite = tf.math.is_finite(x)
    top, bottom = tf.constant(x.dtype.max, x.dtype), tf.constant(x.dtype.min, x.dtype)
    lo = tf.reduce_min(tf.where(finite, x, top), axis=axes)
    hi = tf.reduce_max(tf.where(finite, x, bottom), axis=axes)
    none = tf.logical_and(tf.equal(lo, top), tf.equal(hi, bottom))
    fill = tf.cast(empty, x.dtype)
    return tf.where(none, fill, lo), tf.where(none, fill, hi)


def _in_xla() -> bool:
    """Whether ops built now are compiled by XLA (a ``jit_compile`` function)."""
    from tensorflow.python.ops import control_flow_util

    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph())


def move_channels_last(x, channel_axes: Sequence[int]):
    """Transpose ``channel_axes`` to the end and flatten them into one axis.

    Returns the reshaped tensor and a function that undoes it. Used so every
    per-channel layout (Dense, Conv, Conv-transpose, depthwise in·mult) can use
    TensorFlow's per-channel FakeQuant, which wants channels last.
    """
    rank = x.shape.rank
    axes = [a % rank for a in channel_axes]
    others = [a for a in range(rank) if a not in axes]
    perm = others + axes
    moved = tf.transpose(x, perm) if perm != list(range(rank)) else x
    moved_shape = tf.shape(moved)
    flat = tf.reshape(moved, tf.concat([moved_shape[: len(others)], [-1]], 0))
    inverse = [perm.index(i) for i in range(rank)]

    def restore(y):
        y = tf.reshape(y, moved_shape)
        return tf.transpose(y, inverse) if perm != list(range(rank)) else y

    return flat, restore


#: The TFLite converter stores a FakeQuant range narrower than this as ``[-NARROWEST/2, NARROWEST/2]``
#: (``kernels.grid.grid_of`` has the measurements): for a weight channel, a scale ``1e-6/254`` under which the
#: channel's bias overflows int32.
NARROWEST = 1e-6


def fake_quant(x, range_min, range_max, bits: int, narrow_range: bool, channel_axes=None,
               range_gradients: bool = True, training: bool = False):
    """TensorFlow FakeQuant (nudged range, TFLite-convertible) per tensor or per channel.

    ``range_min``/``range_max`` are scalars, or have the shape of ``channel_axes``.
    Uses ``tf.quantization.fake_quant_with_min_max_vars[_per_channel]``, the ops the
    TFLite converter reads, so 8-bit models convert unchanged (``fake_quant_op``).

    Outside training (``training=False``: inference, the converter's trace, the emulation's grids) a channel
    narrower than ``NARROWEST`` (an all-zero channel: a pruned or dead filter) quantizes on the widest channel's
    range (``deployable_channel_ranges``): its weights stay 0, and the converter does not store its bias over a
    ``1e-6/254`` scale, where it saturates int32 (measured: a bias of 0.5 deployed as 0.066).

    ``range_gradients=False`` says the caller never trains the range (a min-max quantizer's tracked
    range, while training): per channel, a large tensor's forward and input gradient then run in XLA
    passes with the bits of TF's kernels (``_per_channel_tracked``), which make a pass per channel (three
    in the gradient).
    """
    if channel_axes is not None and not training:
        range_min, range_max = deployable_channel_ranges(range_min, range_max)
    return fake_quant_op(x, range_min, range_max, bits, narrow_range, channel_axes, range_gradients)


def deployable_channel_ranges(range_min, range_max):
    """Per-channel ranges with every channel narrower than ``NARROWEST`` on the widest channel's range; unchanged
    where every channel is that narrow (nothing to borrow from: ``verify`` reports the saturated bias)."""
    width = range_max - range_min
    narrow = tf.logical_and(width < NARROWEST, tf.reduce_max(width) >= NARROWEST)
    widest = tf.argmax(tf.reshape(width, [-1]))
    lo = tf.where(narrow, tf.gather(tf.reshape(range_min, [-1]), widest), range_min)
    hi = tf.where(narrow, tf.gather(tf.reshape(range_max, [-1]), widest), range_max)
    return lo, hi


def fake_quant_op(x, range_min, range_max, bits: int, narrow_range: bool, channel_axes=None,
                  range_gradients: bool = True):
    """The FakeQuant op call of ``fake_quant`` (``kernels.grid`` records its arguments: the range the converter
    reads)."""
    if channel_axes is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, range_min, range_max, num_bits=bits, narrow_range=narrow_range
        )
    per_channel = tf.quantization.fake_quant_with_min_max_vars_per_channel
    if not range_gradients and bits <= 8:  # (TF's kernel keeps the nudged zero point in a uint8)
        per_channel = _per_channel_tracked
    rank = x.shape.rank
    if [a % rank for a in channel_axes] == [rank - 1]:
        # Channels already last: no reshape, which would hide the quantized axis from the
        # TFLite converter when the kernel is reshaped again (Conv1D's expand_dims).
        return per_channel(
            x, tf.reshape(range_min, [-1]), tf.reshape(range_max, [-1]), num_bits=bits, narrow_range=narrow_range
        )
    flat, restore = move_channels_last(x, channel_axes)
    y = per_channel(
        flat, tf.reshape(range_min, [-1]), tf.reshape(range_max, [-1]), num_bits=bits, narrow_range=narrow_range
    )
    return restore(y)


#: Below this many elements a tracked per-channel FakeQuant runs TF's own kernels and LSQ's ``uniform_ste``
#: plain autodiff; from it on, both run XLA passes. Measured on the per-channel FakeQuant, forward + input
#: gradient per call, 4 bits (notes/performance.md, "ninth session"): TF's kernel makes a strided pass per
#: channel (~15 ns an element at 784x120, ~90 at 3x3x256x512); an XLA pass costs ~3 ns an element plus a
#: launch of about a TF kernel's whole cost on a small tensor. They cross between 10k (120x84: TF's kernel
#: faster) and 94k elements (784x120: XLA 2.4x faster).
FUSED_MIN_ELEMENTS = 16384


def below_fused_size(x) -> bool:
    """Whether ``x`` has a known size under ``FUSED_MIN_ELEMENTS`` (a small kernel; not an activation, whose
    batch size is unknown when traced)."""
    size = x.shape.num_elements()
    return size is not None and size < FUSED_MIN_ELEMENTS


def _per_channel_tracked(x, range_min, range_max, num_bits, narrow_range):
    """``fake_quant_with_min_max_vars_per_channel``'s signature and bits (channels last), no gradient for the
    range. A small tensor (``FUSED_MIN_ELEMENTS``) runs TF's kernels as they are. A large one runs
    the same arithmetic in two XLA passes (``fused.per_channel_forward`` and
    ``fused.per_channel_input_backward``) from the nudged range derived once here: TF's kernels make a pass
    per channel (three in the gradient), which on a wide layer costs many times a per-tensor FakeQuant."""
    if below_fused_size(x):
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, range_min, range_max, num_bits=num_bits, narrow_range=narrow_range)
    from qresearch.quantizers import fused

    lo, hi, scale = _nudge(range_min, range_max, num_bits, narrow_range)
    qmin, qmax = _fake_quant_levels(num_bits, narrow_range)
    # TF's kernel recomputes the inverse scale (not 1/scale) and the quantized zero from it
    inverse = tf.constant(qmax - qmin, range_min.dtype) / (range_max - range_min)
    quant_zero = tf.floor(-lo * inverse + 0.5)
    empty = _zero_range(range_min, range_max)
    zero = tf.zeros([], tf.int32)

    @tf.custom_gradient
    def forward(x):
        y = fused.per_channel_forward()(x, lo, hi, inverse, quant_zero, scale, empty, zero)
        return y, lambda dy: fused.per_channel_input_backward()(dy, x, lo, hi, empty)

    return forward(x)


def _fake_quant_levels(bits: int, narrow_range: bool):
    """``(qmin, qmax)`` of TF's FakeQuant, as floats: ``[0, 2^b - 1]``, or ``[1, 2^b - 1]`` with ``narrow_range``."""
    return (1.0 if narrow_range else 0.0), float(2 ** bits - 1)


def _nudge(range_min, range_max, bits: int, narrow_range: bool):
    """``(nudged_min, nudged_max, scale)`` of TF's FakeQuant ``Nudge``
    (tensorflow/core/kernels/fake_quant_ops_functor.h), in the same float32 operations, elementwise.

    The scale is ``(max - min) / (qmax - qmin)``; the zero point ``qmin - min/scale`` is clamped to
    ``[qmin, qmax]`` or rounded half away from zero (``std::round``; non-negative there, so
    ``floor(v) + (v - floor(v) >= 0.5)``, whose subtraction is exact); the range is ``(q - zero point) ·
    scale``. The division by the constant ``qmax - qmin`` is a ``DivNoNan`` (the same IEEE quotient for a
    non-zero divisor): grappler would turn a ``RealDiv`` by a constant into a product with its
    reciprocal, another rounding. TF's CPU kernels are built without FMA (TF says so at start-up), so no
    product and sum are contracted there either."""
    qmin, qmax = _fake_quant_levels(bits, narrow_range)
    dtype = range_min.dtype
    scale = tf.math.divide_no_nan(range_max - range_min, tf.constant(qmax - qmin, dtype))
    from_min = qmin - range_min / scale
    whole = tf.floor(from_min)
    rounded = whole + tf.cast(from_min - whole >= 0.5, dtype)
    zero_point = tf.where(from_min < qmin, tf.constant(qmin, dtype),
                          tf.where(from_min > qmax, tf.constant(qmax, dtype), rounded))
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale, scale


def nudged_range(range_min, range_max, bits: int, narrow_range: bool):
    """``(nudged_min, nudged_max)``: the range TF's FakeQuant quantizes to (``_nudge``)."""
    return _nudge(range_min, range_max, bits, narrow_range)[:2]


def _zero_range(range_min, range_max):
    """Channels whose range is ``[0, 0]`` (an all-zero kernel channel): TF's kernels special-case them,
    zeros forward and the gradient passed through."""
    return tf.logical_and(tf.equal(range_min, 0.0), tf.equal(range_max, 0.0))


def symmetric_range(max_abs, bits: int, signed: bool, narrow_range: bool):
    """FakeQuant ``(min, max)`` whose nudged zero point is exact for a symmetric grid.

    The scale is ``max_abs · (1/qp)`` and the range ``[-qn·s, qp·s]``: the zero point
    lands on an integer, so TFLite stores Z = 0 (signed) and no nudging shifts it.
    """
    qn, qp = integer_grid(bits, signed, narrow_range)
    scale = tf.maximum(max_abs, 0.0) * reciprocal(qp)
    return -qn * scale, qp * scale


def reciprocal(n: int):
    """``1/n`` as a float32 constant. Scales are formed as ``x * (1/n)``, never ``x / n``: the TFLite
    converter's graph optimizations may turn a division by a constant into a multiplication by its
    reciprocal, which rounds differently (one float32 ulp), and the deployed scale must be the one the
    simulation uses."""
    return tf.constant(1.0 / n, tf.float32)


def uniform_ste(x, scale, qn, qp, offset=None):
    """``round(clip((x - offset) / scale, -qn, qp)) * scale + offset`` with STE rounding.

    The LSQ/LSQ+ forward (Esser et al. 2020, eq. 1-2; Bhalgat et al. 2020, eq. 3).
    Gradients flow through the division and the clip, so autodiff gives the
    published step-size gradient: ``round(x/s) - x/s`` inside the range, ``-qn`` /
    ``qp`` outside it, and ``1`` (inside) / ``0`` (clipped) for ``x``.

    The backward pass is written out (``tf.custom_gradient``) with the very float operations autodiff
    builds for this graph, minus its redundant passes over ``x``: one mask for the clip instead of two
    (``c == t`` is ``-qn <= t <= qp``), and ``(-t)/s`` for RealDiv's ``(-x/s)/s`` (``-x/s`` is ``-t``
    exactly, so the divide is not redone). The backward's elementwise part is one XLA-fused pass
    (``quantizers/fused.py``) that recomputes ``t``, the clip mask and ``q`` from ``x``: a step keeps no
    full-size tensor for it but ``x``, which the layer before keeps for its own gradient anyway. The forward
    is one XLA pass too (``fused.uniform_forward``), with or without the offset. (With the offset it was
    plain TF until the tenth session: grappler's arithmetic optimizer rewrote that plain chain in some graphs,
    so one step of mobilenet_tiny's LSQ+ model in ``benchmarks.identity`` took other bits than the formula;
    the pass computes the formula as written. notes/performance.md, "tenth session".)
    Gradients and trained values are bit-identical to plain autodiff (``tests/quantizers/test_ops.py``,
    ``test_fused.py``, ``benchmarks/identity.py``). A tensor of known size under
    ``FUSED_MIN_ELEMENTS`` (a small kernel) runs that plain autodiff graph instead: there an XLA
    launch costs more than the ops it fuses (notes/performance.md, "ninth session").
    """
    if below_fused_size(x):
        shifted = x if offset is None else x - offset
        y = round_ste(tf.clip_by_value(shifted / scale, -float(qn), float(qp))) * scale
        return y if offset is None else y + offset
    from qresearch.quantizers import fused

    lo, hi = -float(qn), float(qp)
    extra = () if offset is None else (offset,)
    forward_pass = fused.uniform_forward(lo, hi, offset is not None)
    backward_pass = fused.uniform_backward(lo, hi, offset is not None)

    @tf.custom_gradient
    def forward(x, scale, *offset):
        zero = tf.zeros([], tf.int32)
        y = forward_pass(x, scale, zero, *offset)

        def backward(dy):
            terms = backward_pass(dy, x, scale, zero, *offset)  # t recomputed from x
            return _uniform_ste_grads(dy, *terms, scale, offset)

        return y, backward

    return forward(*plain(x, scale, *extra))


def plain(*values):
    """``values`` with distributed variables (``tf.distribute``: a mirrored kernel or step) read as tensors.

    ``tf.custom_gradient`` recognises a variable passed as an argument only by identity; a mirrored
    variable's component is not the argument, so it would count as a captured variable and the eager
    call (calibration under a strategy's scope) fails. Others are returned as they are."""
    return tuple(tf.convert_to_tensor(v) if isinstance(v, tf.distribute.DistributedValues) else v for v in values)


def summed_to(param, g):
    """``g`` (of the broadcast shape) summed over the axes ``param`` was broadcast along, to ``param``'s shape,
    by TF's own broadcast-reduction helper: the sums autodiff makes, bit for bit (an XLA sum adds in another
    order). What every fused backward uses for the gradient of a broadcast step, clip or scale."""
    from tensorflow.python.ops import math_grad

    return math_grad._ReduceGradientArgs(g, param, None, g)[1]


def _uniform_ste_grads(dy, g_shifted, q_dy, g_t_ts, scale, offset):
    """Autodiff's gradients of ``uniform_ste`` from the fused pass's terms (``fused.uniform_backward``),
    op for op where it matters for the bits: Mul (``dy·s`` to q, ``q·dy`` to s), Maximum/Minimum (the
    gradient where the clip kept its input, else +0), RealDiv (``g/s`` to the numerator, ``g·((-n/s)/s)`` to
    s), Sub/Add (``-g`` / ``g`` to the offset), each reduced over the broadcast axes (``summed_to``). A sum of
    negated terms is the negated sum (rounding to nearest is symmetric), so negations are applied after the
    reductions, on small tensors."""
    g_scale = summed_to(scale, q_dy) - summed_to(scale, g_t_ts)
    if not offset:
        return g_shifted, g_scale
    g_offset = summed_to(offset[0], dy) - summed_to(offset[0], g_shifted)
    return g_shifted, g_scale, g_offset


def lsq_grad_factor(n_elements, qp):
    """LSQ's gradient scale ``g = 1 / sqrt(N · Qp)`` (Esser et al. 2020, §2.2)."""
    n = tf.cast(n_elements, tf.float32)
    return tf.math.rsqrt(tf.maximum(n, 1.0) * float(max(qp, 1)))


def quantize_unit_ste(r, bits: int):
    """DoReFa's ``quantize_k``: ``round((2^k - 1) r) / (2^k - 1)`` for ``r`` in [0, 1], STE."""
    levels = float(2**bits - 1)
    return round_ste(r * levels) / levels


def nudged_offset(offset, scale, qn, qp):
    """The offset moved so real 0 falls on the grid ``[-qn, qp]`` (TFLite needs an integer Z).

    Returns ``-clip(round(-offset / scale), -qn, qp) · scale`` — what TF FakeQuant's
    nudging (``tflite-int8-spec.md`` §4.1) does to a range ``[offset - qn·s, offset + qp·s]``.
    """
    zero_index = tf.clip_by_value(tf.round(-offset / scale), -float(qn), float(qp))
    return -zero_index * scale


def count_per_param(x, n_params, per_example: bool):
    """How many elements of ``x`` share one parameter (LSQ's ``N``).

    Weights: ``size(x) / n_params``. Activations (``per_example``): features of one
    example, ``size(x) / (batch · n_params)``.
    """
    size = tf.cast(tf.size(x), tf.float32)
    denom = float(max(int(n_params), 1))
    if per_example and x.shape.rank:
        denom = denom * tf.cast(tf.maximum(tf.shape(x)[0], 1), tf.float32)
    return size / denom
