"""XLA-fused elementwise passes of the quantizers' training forward and backward (the learned quantizers',
a wide per-channel min-max FakeQuant's, and DoReFa's and A2Q's weight transforms of a large kernel).

A learned quantizer's training step is a chain of cheap elementwise ops over each quantized tensor
(about 10 forward, 10 backward); TensorFlow runs each as its own kernel, one pass over memory each,
which on a small model costs more than the convolutions. Each chain here is one ``jit_compile``
function: XLA fuses it into one pass. The values are the same bits: XLA CPU's elementwise float ops are
IEEE (no fast-math), ``round`` is half to even as TF's Round. Two things would change bits: reductions
(XLA sums in another order), which stay out of XLA, and a multiply feeding an add (XLA CPU always lets LLVM
contract ``a*b + c`` into one FMA, which rounds once instead of twice), whose product a pass makes ``opaque``.
Tests compare every output bit for bit with the plain TF graph (tests/quantizers/test_ops.py,
test_pact.py, test_dorefa.py).

XLA's algebraic simplifier also rewrites some float expressions that TF computes as written: measured,
``(x/s)/s`` became ``x/(s·s)`` for a per-channel ``s`` (other bits). So a pass that divides a quotient it
computed itself first makes the quotient ``opaque``. LSQ's backward recomputes ``t = x/s``, the clip, its
mask and ``q`` from ``x`` instead of keeping them alive from the forward to the backward: peak memory of a
step drops, and in one fused pass recomputing costs less than reading them back.
"""
from __future__ import annotations

import functools

import numpy as np

from qresearch._compat import tf


def xla_pass(fn):
    """``fn`` compiled by XLA, its outputs with the static shape of its inputs broadcast together.

    ``reduce_retracing`` shares a trace between tensors of every size, which leaves the outputs' static
    shapes unknown; they are set back to what the plain TF ops would have, so shape-dependent graph
    rewrites (grappler) see what they saw before."""
    compiled = tf.function(fn, jit_compile=True, reduce_retracing=True, autograph=False)  # no tensor control flow

    def call(*args):
        if not tf.executing_eagerly():
            # Inputs through Identity ops of the graph being built: a forward tensor passed straight into a
            # compiled function from a backward inside a tf.cond branch's gradient stays an unresolved capture
            # ("Could not find external tensor capture"); an ordinary op's input becomes a branch output as
            # cond's gradient makes any other. Identity changes no bit.
            args = tuple(tf.identity(a) for a in args)
        outs = compiled(*args)
        if not tf.executing_eagerly():
            shape = functools.reduce(tf.broadcast_static_shape, [tf.convert_to_tensor(a).shape for a in args])
            for out in tf.nest.flatten(outs):
                out.set_shape(shape)
        return outs

    return call


_SAME_WIDTH_INT = {tf.float16: tf.int16, tf.bfloat16: tf.int16, tf.float32: tf.int32, tf.float64: tf.int64}


def opaque(v, zero):
    """``v`` unchanged, hidden from XLA's algebraic simplifier: its bits xor a runtime zero (an argument of
    the pass, so not a constant to fold). The simplifier would rewrite ``(x/s)/s`` as ``x/(s·s)``."""
    as_int = _SAME_WIDTH_INT[v.dtype]
    return tf.bitcast(tf.bitwise.bitwise_xor(tf.bitcast(v, as_int), tf.cast(zero, as_int)), v.dtype)


@functools.lru_cache(maxsize=None)
def uniform_backward(lo: float, hi: float, with_offset: bool = False):
    """``(dy, x, s, zero[, b]) -> (g_shifted, q·dy, g_t·(t/s))`` for ``t = (x - b)/s``: autodiff's elementwise
    gradient terms of ``ops.uniform_ste`` (see ``ops._uniform_ste_grads``); the two products are reduced by
    the caller. ``t`` is recomputed here from ``x`` (the forward's own ops: the same bits), so a training
    step keeps the input ``x``, which the layer before keeps anyway, instead of a second full-size ``t``;
    ``zero`` (int32 0) makes it ``opaque`` to the simplifier."""

    def fn(dy, x, s, zero, *offset):  # one pass per arity: a relaxed trace cannot vary it
        t = opaque((x - offset[0] if with_offset else x) / s, zero)
        c = tf.maximum(tf.minimum(t, hi), lo)
        q = c + (tf.round(c) - c)
        g_t = tf.where(tf.equal(c, t), dy * s, tf.zeros([], dy.dtype))
        return g_t / s, q * dy, g_t * (t / s)

    return xla_pass(fn)


@functools.lru_cache(maxsize=None)
def uniform_forward(lo: float, hi: float, with_offset: bool = False):
    """``(x, s, zero[, b]) -> (c + (round(c) - c))·s [+ b]`` with ``c = clip((x [- b])/s, lo, hi)``: LSQ's
    forward (``ops.uniform_ste``), and LSQ+'s with the offset ``b``, in one pass. With an offset the product
    is made ``opaque`` (``zero``: int32 0) before ``+ b``, which XLA CPU would contract with it into an FMA."""

    def fn(x, s, zero, *offset):  # one pass per arity: a relaxed trace cannot vary it
        c = tf.maximum(tf.minimum((x - offset[0] if with_offset else x) / s, hi), lo)
        y = (c + (tf.round(c) - c)) * s
        return opaque(y, zero) + offset[0] if with_offset else y

    return xla_pass(fn)


@functools.lru_cache(maxsize=None)
def pact_forward(signed: bool):
    """``(x, a, step) -> round_ste(clip(x)/step)·step``, clipped to ``[0, a]`` (``[-a, a]`` when signed).
    ``step = a/qp`` comes in computed: XLA would rewrite ``y/(a/qp)`` as ``(y·qp)/a``."""

    def fn(x, a, step):
        y = tf.where(x >= a, a, x if signed else tf.nn.relu(x))
        if signed:
            y = tf.where(x <= -a, -a, y)
        v = y / step
        return (v + (tf.round(v) - v)) * step

    return xla_pass(fn)


@functools.lru_cache(maxsize=None)
def pact_backward(signed: bool):
    """``(dy, x, a, step) -> (g_x, terms of g_a)``: autodiff's elementwise gradients of ``pact_forward`` with
    the step held constant (see ``pact.pact_ste``); the caller reduces the ``g_a`` terms."""

    def fn(dy, x, a, step):
        zero = tf.zeros([], dy.dtype)
        upper = x >= a
        g_y = (dy * step) / step   # Mul's then RealDiv's gradient
        if signed:
            lower = x <= -a
            g_inner = tf.where(lower, zero, g_y)
            return tf.where(upper, zero, g_inner), tf.where(upper, g_inner, zero), tf.where(lower, g_y, zero)
        # TF's ReluGrad kernel multiplies by the mask (a negative gradient gives -0 where x <= 0); XLA's
        # ReluGrad and a multiply by the cast mask both become a select (+0): the product by 0 written out
        g = tf.where(upper, zero, g_y)
        g_x = tf.where(x > 0, g, g * zero)
        return g_x, tf.where(upper, g_y, zero)

    return xla_pass(fn)


def _unit_scaling(levels: float, eager: bool):
    """How ``·/levels`` is computed: eagerly TF divides; in a graph grappler turns a division by a constant
    into a multiplication by its float32 reciprocal (XLA would too), so the plain graph and the plain
    eager call differ in the last bit and each mode keeps its own. Eagerly ``levels`` is an argument of
    the pass (XLA cannot fold what it does not see as a constant)."""
    if eager:
        return lambda v, lv: v / lv
    inverse = np.float32(1.0) / np.float32(levels)   # IEEE float32 division, as grappler folds it
    return lambda v, lv: v * inverse


@functools.lru_cache(maxsize=None)
def unit_forward(levels: float, eager: bool, low: float = 0.0):
    """``(x, levels, zero) -> (quantize_k(clip(x, low, 1)), kept)``: DoReFa's activation forward
    (``dorefa.clipped_unit_ste``; ``low`` -1 for its signed grid) in one pass, and the mask of where the clip
    kept ``x``. ``c·levels`` is made ``opaque`` (``zero``: int32 0): in a trace with relaxed shapes XLA CPU
    contracted it with the ``+ (round - c·levels)`` that follows into an FMA (1176 of 43758 values
    differed), though not in the first trace."""
    divide = _unit_scaling(levels, eager)

    def fn(x, lv, zero):
        c = tf.maximum(tf.minimum(x, 1.0), low)
        v = opaque(c * levels, zero)
        return divide(v + (tf.round(v) - v), lv), tf.equal(c, x)

    return xla_pass(fn)


@functools.lru_cache(maxsize=None)
def unit_backward(levels: float, eager: bool):
    """``(dy, kept, levels) -> (dy/levels)·levels`` where the clip kept ``x``, else +0."""
    divide = _unit_scaling(levels, eager)

    def fn(dy, kept, lv):
        return tf.where(kept, divide(dy, lv) * levels, tf.zeros([], dy.dtype))

    return xla_pass(fn)


@functools.lru_cache(maxsize=None)
def per_channel_forward():
    """``(x, lo, hi, inverse, quant_zero, scale, empty, zero) -> y``: TF's per-channel FakeQuant forward
    (channels last) in one pass, given the nudged range ``lo, hi, scale`` (``ops._nudge``), the recomputed
    inverse scale ``(qmax - qmin)/(max - min)``, ``quant_zero = floor(-lo·inverse + 0.5)`` and the
    zero-range channels ``empty``. The kernel's arithmetic, as ``tests/quantizers/reference.py`` documents
    it: ``index = (clamp(x, lo, hi) - lo)·inverse``, ``floor(index - quant_zero + 0.5)·scale``, and +0 in a
    zero-range channel whatever ``x`` (NaN included). The product is made ``opaque`` before
    ``- quant_zero``, which XLA CPU would contract with it into an FMA."""

    def fn(x, lo, hi, inverse, quant_zero, scale, empty, zero):
        index = opaque((tf.minimum(tf.maximum(x, lo), hi) - lo) * inverse, zero)
        y = tf.floor((index - quant_zero) + 0.5) * scale
        return tf.where(empty, tf.zeros([], x.dtype), y)

    return xla_pass(fn)


@functools.lru_cache(maxsize=None)
def per_channel_input_backward():
    """``(dy, x, lo, hi, empty) -> dy·(lo <= x <= hi or empty ? 1 : 0)``: the input's gradient of TF's
    per-channel FakeQuant for the nudged range, in one pass. TF's kernel multiplies by the mask (-0 where a
    negative ``dy`` is cut, NaN where an infinite one is); XLA would turn that product into a select of ``dy``
    and +0, so the select's other side is written as ``dy·0``."""

    def fn(dy, x, lo, hi, empty):
        inside = tf.logical_or(tf.logical_and(x >= lo, x <= hi), empty)
        return tf.where(inside, dy, dy * tf.zeros([], dy.dtype))

    return xla_pass(fn)


def _finite_masked(v):
    """``(finite, v with its non-finite entries at the float32 lowest)``: what ``ops.reduce_finite`` maxes."""
    finite = tf.math.is_finite(v)
    return finite, tf.where(finite, v, tf.constant(np.finfo(np.float32).min, v.dtype))


def _finite_max(v, reduce):
    """``(raw, any, count)`` of ``ops.reduce_finite(tf.reduce_max, v, ...)`` over ``reduce`` (kept dims): the
    max of the finite entries (the float32 lowest where none is), whether any is finite, and how many entries
    equal the max (the divisor of TF's Max gradient). A max and a count of ones are exact in any order."""
    finite, masked = _finite_masked(v)
    raw = tf.reduce_max(masked, axis=reduce, keepdims=True)
    count = tf.reduce_sum(tf.cast(tf.equal(raw, masked), v.dtype), axis=reduce, keepdims=True)
    return raw, tf.reduce_any(finite, axis=reduce, keepdims=True), count


def _max_gradient(v, g, raw, any_finite, count, floor):
    """Autodiff's gradient reaching ``v`` through ``max(reduce_finite(max, |.|), floor)`` for the gradient ``g`` of
    that maximum: Maximum's (``g`` where the max is >= ``floor``), the Select of ``reduce_finite``'s empty case,
    Max's (``(equal / count)·g``: shared between ties), the Select of its finite mask (+0 elsewhere)."""
    zero = tf.zeros([], g.dtype)
    g = tf.where(any_finite, tf.where(tf.where(any_finite, raw, zero) >= floor, g, zero), zero)
    finite, masked = _finite_masked(v)
    return tf.where(finite, (tf.cast(tf.equal(raw, masked), g.dtype) / count) * g, zero)


@functools.lru_cache(maxsize=None)
def dorefa_weights(levels: float, eager: bool, reduce: tuple, scaled: bool, floor: float):
    """DoReFa's weight transform (``dorefa.DoReFaQuantizer.quantize_weights``) as XLA passes over the
    weight, given ``t = tanh(w)`` (TF's Tanh: XLA's approximates it otherwise):

    - ``forward(t, w, lv, zero) -> (y, stats)``: the max reductions of ``|t|`` (and of ``|w|`` when ``scaled``)
      over ``reduce`` and ``y = (2·quantize_k(t/(2m) + 1/2) - 1)[·max|w|]``;
    - ``terms[k](dy, t, stats, lv, zero)``: the elementwise products whose sums over ``reduce`` are the
      gradients of ``2m`` (RealDiv's ``g·((-t/d)/d)``) and of ``max|w|`` (Mul's ``y·dy``), summed by TF's own
      reduction (an XLA sum adds in another order); a pass each, so one is summed before the next exists;
    - ``backward(dy, t, w, sum_d[, sum_s], stats, lv, zero) -> g_w``: the rest of autodiff's gradient, op for op.

    ``stats`` is ``(raw, any, count)`` of ``|t|`` then of ``|w|``. The quotient ``t/d`` is ``opaque`` (XLA would
    rewrite ``(t/d)/d``), so are ``v·levels`` before ``+ (round - v)`` and ``t·t`` before ``1 - ·`` (FMA). ``floor``
    is ``ops.EPS``."""
    divide = _unit_scaling(levels, eager)

    def scales(stats):
        m = tf.maximum(tf.where(stats[1], stats[0], tf.zeros([], stats[0].dtype)), floor)
        s = tf.maximum(tf.where(stats[4], stats[3], tf.zeros([], stats[3].dtype)), floor) if scaled else None
        return 2.0 * m, s

    def transform(t, d, lv, zero):
        r = opaque(t / d, zero)
        v = opaque((r + 0.5) * levels, zero)
        return opaque(divide(v + (tf.round(v) - v), lv), zero) * 2.0 - 1.0, r

    def upstream(dy, s, lv):
        g_y = dy * s if scaled else dy
        return divide(g_y * 2.0, lv) * levels   # Mul's (2·q), RealDiv's (/levels), Mul's (·levels) gradients

    def forward(t, w, lv, zero):
        stats = _finite_max(tf.abs(t), reduce) + (_finite_max(tf.abs(w), reduce) if scaled else ())
        d, s = scales(stats)
        y = transform(t, d, lv, zero)[0]
        return (y * s if scaled else y), stats

    def term(k):
        def fn(dy, t, *rest):
            *stats, lv, zero = rest
            d, s = scales(stats)
            y, r = transform(t, d, lv, zero)
            return upstream(dy, s, lv) * ((-r) / d) if k == 0 else dy * y
        return xla_pass(fn)

    def backward(dy, t, w, *rest):
        sums, (*stats, lv, zero) = rest[:1 + scaled], rest[1 + scaled:]
        d, s = scales(stats)
        g_r = upstream(dy, s, lv)
        g_m = _max_gradient(tf.abs(t), sums[0] * 2.0, *stats[:3], floor)
        g_t = g_m * tf.sign(t) + g_r / d   # AddN, in the order autodiff lists the two (a NaN keeps its sign)
        g_w = g_t * (1.0 - opaque(t * t, zero))   # TanhGrad: grad·(1 - y·y)
        if scaled:
            g_w = g_w + _max_gradient(tf.abs(w), sums[1], *stats[3:], floor) * tf.sign(w)
        return g_w

    compiled = tf.function(forward, jit_compile=True, reduce_retracing=True, autograph=False)
    return compiled, [term(k) for k in range(1 + scaled)], xla_pass(backward)


@functools.lru_cache(maxsize=None)
def a2q_weights(qn: float, qp: float, budget: float, reduce: tuple):
    """A2Q's training transform of a weight (``a2q.A2QQuantizer.integers`` and the product with the step) as
    XLA passes (forward, a product per gradient sum, backward), given the broadcast norm ``g_b``, the l1 norms
    ``l1`` (TF's sum: an XLA sum adds in another order), the denominator ``den = l1·s_b`` and the output step
    ``so_b`` (float64; the graph casts the step twice, so its two gradients are rounded to float32 apart):

    - ``forward(x, g_b, den, so_b, zero) -> (y, fits)``: ``u = clip((g_b·v)/den, -qn, qp)``, nearest rounding where a
      channel's ``Σ|round(u)| <= budget`` (exact: a sum of integers) else toward zero, ``y = f32((u + (q - u))·so_b)``;
    - ``terms[k](dy, x, g_b, den, so_b, fits, zero)``: one pass per product whose sum is a gradient: of ``so_b``
      (Mul's ``q·dy``), of ``den`` (RealDiv's ``g·((-n/den)/den)``), of ``g_b`` (Mul's ``(g/den)·v``), summed by
      TF; one pass each, so the caller can sum one before the next exists (three float64 weight-sized
      buffers at once were a LeNet-5 step's peak);
    - ``backward(dy, x, g_b, den, so_b, g_l1, zero) -> g_x``: ``f32((g/den)·g_b + g_l1·sign(v))`` (Mul's and, through
      the l1 norm's Sum and Abs, Abs's gradient, added as AddN adds them), ``g`` being the straight-through
      gradient cut where the clip cut ``u`` (Minimum's ``<=``, Maximum's ``>=``).

    The quotient ``(g_b·v)/den`` is ``opaque`` where it is divided again (XLA would rewrite ``(n/d)/d``)."""

    def quotient(x, g_b, den, zero):
        v = tf.cast(x, tf.float64)
        return v, opaque((g_b * v) / den, zero)

    def clipped(u_raw):
        low = tf.minimum(u_raw, qp)
        return low, tf.maximum(low, -qn)

    def integers(u, fits):
        return tf.where(fits, tf.round(u), tf.sign(u) * tf.floor(tf.abs(u)))

    def forward(x, g_b, den, so_b, zero):
        u = clipped(quotient(x, g_b, den, zero)[1])[1]
        fits = tf.reduce_sum(tf.abs(tf.round(u)), axis=reduce, keepdims=True) <= budget
        return tf.cast((u + (integers(u, fits) - u)) * so_b, tf.float32), fits

    def upstream(dy, u_raw, low, so_b):
        zero = tf.zeros([], tf.float64)
        g = tf.cast(dy, tf.float64)
        return g, tf.where(u_raw <= qp, tf.where(low >= -qn, g * so_b, zero), zero)

    def term(k):
        def fn(dy, x, g_b, den, so_b, fits, zero):
            v, u_raw = quotient(x, g_b, den, zero)
            low, u = clipped(u_raw)
            g, g_u = upstream(dy, u_raw, low, so_b)
            if k == 0:
                return (u + (integers(u, fits) - u)) * g
            return g_u * ((-u_raw) / den) if k == 1 else (g_u / den) * v
        return xla_pass(fn)

    def backward(dy, x, g_b, den, so_b, g_l1, zero):
        v, u_raw = quotient(x, g_b, den, zero)
        g_u = upstream(dy, u_raw, clipped(u_raw)[0], so_b)[1]
        return tf.cast((g_u / den) * g_b + g_l1 * tf.sign(v), tf.float32)

    compiled = tf.function(forward, jit_compile=True, reduce_retracing=True, autograph=False)
    return compiled, [term(k) for k in range(3)], xla_pass(backward)
