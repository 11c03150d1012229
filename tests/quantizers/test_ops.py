"""Shared math in qresearch.quantizers.ops, against numpy."""
import numpy as np
import pytest

from . import reference as ref
from qresearch._compat import tf
from qresearch.quantizers import ops

rng = np.random.RandomState(6)


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("narrow", [False, True])
def test_integer_grid(bits, signed, narrow):
    assert ops.integer_grid(bits, signed, narrow) == ref.grid(bits, signed, narrow)
    qn, qp = ops.integer_grid(bits, signed, narrow)
    assert qn + qp + 1 == 2**bits - (1 if narrow else 0)  # levels


def grad(fn, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y.numpy(), tape.gradient(y, x).numpy()


def test_round_ste_and_grad_scale():
    x = np.array([-1.5, -0.4, 0.5, 1.5, 2.6], "float32")
    y, g = grad(ops.round_ste, x)
    np.testing.assert_array_equal(y, np.round(x))  # half to even, like numpy
    np.testing.assert_array_equal(g, 1.0)
    y, g = grad(lambda t: ops.grad_scale(t, 0.25), x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(g, 0.25)


@pytest.mark.parametrize("mode, fn", [("ceil", np.ceil), ("round", np.round), ("floor", np.floor)])
def test_pot_ste(mode, fn):
    s = np.array([0.003, 0.1, 0.25, 0.3, 5.0], "float32")
    y, g = grad(lambda t: ops.pot_ste(t, mode), s)
    np.testing.assert_array_equal(y, 2.0 ** fn(np.log2(s)))
    np.testing.assert_array_equal(g, 1.0)


def test_reduce_finite_ignores_nan_and_inf():
    x = np.array([[1.0, np.nan, -2.0], [np.inf, np.nan, 4.0]], "float32")
    finite = np.where(np.isfinite(x), x, np.nan)
    for fn, npfn in ((tf.reduce_min, np.nanmin), (tf.reduce_max, np.nanmax), (tf.reduce_mean, np.nanmean)):
        out = ops.reduce_finite(fn, tf.constant(x), [0], empty=-7.0).numpy()
        np.testing.assert_allclose(out[[0, 2]], npfn(finite[:, [0, 2]], axis=0))
        assert out[1] == -7.0  # a column with no finite value gets ``empty``


def test_reduce_finite_range_equals_the_two_reductions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5, 5, 8)).astype("float32")
    x[3, 1, 2, 5], x[0, 0, 0, 2], x[1, 1, 1, 2] = np.nan, np.inf, -np.inf
    x[..., 6] = np.nan                      # a channel without a finite value
    x[..., 7] = np.finfo(np.float32).max    # a finite channel at the neutral value
    x[0, 0, 0, 7] = np.inf

    @tf.function
    def both(t):
        lo, hi = ops.reduce_finite_range(t, [0, 1, 2], -7.0)
        return lo, hi, ops.reduce_finite(tf.reduce_min, t, [0, 1, 2], -7.0), \
            ops.reduce_finite(tf.reduce_max, t, [0, 1, 2], -7.0)

    lo, hi, want_lo, want_hi = both(tf.constant(x))
    np.testing.assert_array_equal(lo.numpy(), want_lo.numpy())
    np.testing.assert_array_equal(hi.numpy(), want_hi.numpy())
    assert lo.numpy()[6] == hi.numpy()[6] == -7.0


def test_tf_min_and_max_show_every_non_finite_entry():
    """What ``reduce_finite_range``'s fast path rests on: a slice with a NaN or an infinity has a
    non-finite plain min or max (TF's kernels propagate NaN), whatever its size, layout and position."""
    rng = np.random.default_rng(1)
    reduce = tf.function(lambda t, axes: (tf.reduce_min(t, axes), tf.reduce_max(t, axes)))
    for shape in [(7,), (4097,), (32, 5), (16, 12, 12, 6), (3, 3, 6, 16)]:
        for trial in range(8):
            x = rng.standard_normal(shape).astype("float32")
            x.reshape(-1)[rng.integers(0, x.size, 2)] = [np.nan, np.inf, -np.inf][trial % 3]
            axes = list(range(len(shape) - 1)) if trial % 2 and len(shape) > 1 else None
            lo, hi = (np.atleast_1d(v.numpy()) for v in reduce(tf.constant(x), axes))
            rows = np.moveaxis(x, -1, 0).reshape(shape[-1], -1) if axes else x.reshape(1, -1)
            np.testing.assert_array_equal(np.isfinite(lo) & np.isfinite(hi), np.isfinite(rows).all(axis=1))


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("axes", [None, [0, 1, 2]])
def test_reduce_finite_range_bits_with_and_without_non_finite_entries(mode, axes):
    """The same bits as the masked reductions (zeros' signs included) for finite and non-finite inputs;
    under XLA (which reduces in its own order, so a zero's sign may differ) the same values."""
    rng = np.random.default_rng(2)
    finite = np.maximum(rng.standard_normal((8, 6, 6, 4)).astype("float32"), 0.0)  # ReLU-like: min is 0
    finite[..., 1] = -0.0
    broken = finite.copy()
    broken[1, 2, 3, 0], broken[0, 0, 0, 2] = np.nan, -np.inf
    fn = {"eager": ops.reduce_finite_range,
          "graph": tf.function(ops.reduce_finite_range, autograph=False),
          "xla": tf.function(ops.reduce_finite_range, jit_compile=True, autograph=False)}[mode]
    for x in (finite, broken):
        lo, hi = fn(tf.constant(x), axes, -7.0)
        want_lo, want_hi = ops._masked_range(tf.constant(x), axes, -7.0)
        assert lo.shape == want_lo.shape
        bits = (lambda v: v.numpy()) if mode == "xla" else (lambda v: v.numpy().view("uint32"))
        np.testing.assert_array_equal(bits(lo), bits(want_lo))
        np.testing.assert_array_equal(bits(hi), bits(want_hi))
    if axes:  # per channel: only the broken channels move off the plain min
        np.testing.assert_array_equal(lo.numpy()[[1, 3]], finite[..., [1, 3]].min(axis=(0, 1, 2)))
        assert lo.numpy()[2] == finite[..., 2].min()


def _ranges_with_zero_points_near_ties(rng, channels, bits, narrow):
    """Per-channel (min, max) whose unrounded zero points ``qmin - min/scale`` include values within an
    ulp of ``k + 0.5`` (where half-up and half-even rounding, or ``floor(v + 0.5)``, could part), zero,
    clamped ones and ordinary ones."""
    qmin, qmax = (1 if narrow else 0), 2 ** bits - 1
    span = rng.uniform(0.05, 4.0, channels).astype("float32")
    scale = span / np.float32(qmax - qmin)
    zp = rng.uniform(qmin, qmax, channels).astype("float32")
    zp[: channels // 2] = np.floor(zp[: channels // 2]) + 0.5
    zp[1: channels // 2: 3] = np.nextafter(zp[1: channels // 2: 3], np.float32(0))
    zp[2: channels // 2: 3] = np.nextafter(zp[2: channels // 2: 3], np.float32(1e9))
    zp[-3:] = [qmin - 1.0, qmax + 2.0, qmin]
    lo = np.minimum((np.float32(qmin) - zp) * scale, 0).astype("float32")
    hi = (lo + span).astype("float32")
    lo[-4] = hi[-4] = 0.0   # a zero range (an all-zero channel): TF's kernel gives zeros
    return lo, hi


@pytest.mark.parametrize("mode", ["graph", "eager"])
@pytest.mark.parametrize("bits,narrow", [(8, False), (8, True), (4, False), (2, True)])
def test_per_channel_input_backward_has_the_bits_of_tf_gradient(bits, narrow, mode, monkeypatch):
    """``fake_quant(..., range_gradients=False)`` through the XLA passes (every size sent there): the same
    forward and the same input gradient, bit for bit, as TF's per-channel FakeQuant and its gradient, on
    ranges whose zero points sit on rounding ties, inputs on the nudged edges and on the midpoints between
    levels, NaN and infinities."""
    monkeypatch.setattr(ops, "FUSED_MIN_ELEMENTS", 0)
    rng = np.random.default_rng(bits + narrow)
    lo, hi = _ranges_with_zero_points_near_ties(rng, 60, bits, narrow)
    x = (rng.standard_normal((60, 60)) * 2).astype("float32")
    n_lo, n_hi = (t.numpy() for t in ops.nudged_range(tf.constant(lo), tf.constant(hi), bits, narrow))
    x[:3], x[3:6] = n_lo, n_hi                             # on the edges (NaN in the zero-range channel)
    x[26, :20], x[27, :20], x[28, :20] = np.nan, np.inf, -np.inf
    step = (n_hi - n_lo) / np.float32(2 ** bits - 1 - narrow)
    for r in range(6, 26):                                 # on and next to midpoints between levels
        mid = (n_lo + (rng.integers(0, 2 ** bits - 1 - narrow, 60) + np.float32(0.5)) * step).astype("float32")
        x[r] = np.nextafter(mid, np.float32(r % 3 - 1) * np.float32(1e9)) if r % 3 != 1 else mid
    dy = rng.standard_normal((60, 60)).astype("float32")
    v_lo, v_hi = tf.Variable(lo), tf.Variable(hi)   # variables: grappler folds no range into constants

    def both(x, dy):
        out = []
        for fast in (False, True):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = ops.fake_quant(x, tf.identity(v_lo), tf.identity(v_hi), bits, narrow, [1],
                                   range_gradients=not fast)
            out += [y, tape.gradient(y, x, output_gradients=dy)]
        return out

    run = tf.function(both, autograph=False) if mode == "graph" else both
    y_tf, g_tf, y_fast, g_fast = (t.numpy().view("uint32") for t in run(tf.constant(x), tf.constant(dy)))
    np.testing.assert_array_equal(y_fast, y_tf)
    np.testing.assert_array_equal(g_fast, g_tf)
    assert (g_tf == np.float32(-0.0).view("uint32")).any()   # some cut negative gradients: -0, as TF's


def test_a_tracked_per_channel_fake_quant_runs_tf_kernel_when_small_and_xla_passes_when_large():
    """The size rule of ``_per_channel_tracked``: TF's per-channel kernel below
    ``FUSED_MIN_ELEMENTS``, the XLA passes (no per-channel FakeQuant op) from it on."""
    def ops_in_training_graph(shape):
        lo, hi = -tf.ones(shape[-1:]), tf.ones(shape[-1:])

        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = ops.fake_quant(x, lo, hi, 4, True, [len(shape) - 1], range_gradients=False)
            return tape.gradient(y, x)

        graph = tf.function(step, autograph=False).get_concrete_function(tf.TensorSpec(shape)).graph
        return {op.type for op in graph.get_operations()}

    small = (ops.FUSED_MIN_ELEMENTS // 16 - 1, 16)
    large = (ops.FUSED_MIN_ELEMENTS // 16, 16)
    tf_kernels = {"FakeQuantWithMinMaxVarsPerChannel", "FakeQuantWithMinMaxVarsPerChannelGradient"}
    assert tf_kernels <= ops_in_training_graph(small)
    assert not {t for t in ops_in_training_graph(large) if t.startswith("FakeQuant")}
    assert not {t for t in ops_in_training_graph((None, 16)) if t.startswith("FakeQuant")}  # size unknown


def test_a_per_channel_fake_quant_of_unknown_batch_size_has_the_bits_of_tf_kernel():
    """An activation-like input (batch size unknown when traced) goes through the XLA passes and gives TF's
    kernel's bits, forward and input gradient, for every batch size it is called with."""
    rng = np.random.default_rng(7)
    lo, hi = _ranges_with_zero_points_near_ties(rng, 12, 4, False)
    v_lo, v_hi = tf.Variable(lo), tf.Variable(hi)

    def step(x, dy, tracked):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.fake_quant(x, tf.identity(v_lo), tf.identity(v_hi), 4, False, [1], range_gradients=not tracked)
        return y, tape.gradient(y, x, output_gradients=dy)

    spec = [tf.TensorSpec((None, 12)), tf.TensorSpec((None, 12))]
    ours = tf.function(lambda x, dy: step(x, dy, True), input_signature=spec, autograph=False)
    theirs = tf.function(lambda x, dy: step(x, dy, False), input_signature=spec, autograph=False)
    for rows in (5, 300):
        x = (rng.standard_normal((rows, 12)) * 2).astype("float32")
        x[0, :4] = [np.nan, np.inf, -np.inf, 0.0]
        dy = rng.standard_normal((rows, 12)).astype("float32")
        for got, want in zip(ours(x, dy), theirs(x, dy)):
            np.testing.assert_array_equal(got.numpy().view("uint32"), want.numpy().view("uint32"))


def test_nudged_range_matches_the_reference_nudge():
    rng = np.random.default_rng(5)
    for bits, narrow in [(8, False), (8, True), (3, False)]:
        lo, hi = _ranges_with_zero_points_near_ties(rng, 30, bits, narrow)
        got_lo, got_hi = (t.numpy() for t in ops.nudged_range(tf.constant(lo), tf.constant(hi), bits, narrow))
        with np.errstate(divide="ignore", invalid="ignore"):   # the zero range: NaN in both
            want = [ref.nudge(a, b, bits, narrow)[:2] for a, b in zip(lo, hi)]
        np.testing.assert_array_equal(got_lo, [w[0] for w in want])
        np.testing.assert_array_equal(got_hi, [w[1] for w in want])


def test_lsq_grad_factor_and_counts():
    assert float(ops.lsq_grad_factor(100.0, 7)) == pytest.approx(1 / np.sqrt(700))
    x = tf.zeros((8, 5, 3))
    assert float(ops.count_per_param(x, 1, per_example=True)) == 15
    assert float(ops.count_per_param(x, 3, per_example=False)) == 40


def test_nudged_offset_puts_zero_on_the_grid():
    s = np.float32(0.1)
    for beta in (-0.37, 0.0, 0.26, 3.0, -30.0):
        b = ops.nudged_offset(tf.constant(beta), s, 0, 15).numpy()
        k = -b / s
        assert abs(k - round(k)) < 1e-4 and 0 <= round(k) <= 15  # real 0 = grid point k


@pytest.mark.parametrize("axes", [(3,), (2,), (2, 3), (0, 3)])
def test_fake_quant_per_channel_layouts(axes):
    x = rng.randn(3, 2, 4, 5).astype("float32")
    shape = [x.shape[a] for a in axes]
    hi = rng.uniform(0.5, 2, size=shape).astype("float32")
    lo = -hi
    y = ops.fake_quant(tf.constant(x), lo, hi, 4, True, axes).numpy()
    moved = np.moveaxis(x, axes, list(range(4 - len(axes), 4))).reshape(-1, int(np.prod(shape)))
    expected = ref.fake_quant_per_channel(moved, lo.reshape(-1), hi.reshape(-1), 4, True)
    restore = expected.reshape([x.shape[a] for a in range(4) if a not in axes] + shape)
    np.testing.assert_array_equal(y, np.moveaxis(restore, list(range(4 - len(axes), 4)), axes))


def _uniform_ste_autodiff(x, scale, qn, qp, offset=None):
    """The plain autodiff graph ``uniform_ste`` replaced: the reference its gradients must equal bit for bit."""
    shifted = x if offset is None else x - offset
    q = ops.round_ste(tf.clip_by_value(shifted / scale, -float(qn), float(qp)))
    y = q * scale
    return y if offset is None else y + offset


@pytest.mark.parametrize("case", ["per_tensor", "per_channel", "offset", "unsigned"])
def test_uniform_ste_gradients_bit_identical_to_autodiff(case):
    rng = np.random.default_rng(3)
    qn, qp = {"unsigned": (0, 15)}.get(case, (8, 7))
    if case == "per_channel":
        x = rng.standard_normal((3, 3, 4, 6)).astype("float32")
        s = (0.05 + rng.random((1, 1, 1, 6))).astype("float32") * 0.3
    else:
        x = rng.standard_normal((16, 5, 5, 3)).astype("float32") * 2
        s = np.float32(0.23)
    x.flat[:7] = np.float32(s.flat[0]) * np.array([0.5, 1.5, -2.5, 7.0, -8.0, 9.0, 0.0], "float32")  # ties, edges
    b = np.float32(-0.4) if case == "offset" else None
    dy = rng.standard_normal(x.shape).astype("float32")

    def run(fn):
        # every input a placeholder, as in a model (the scale comes from a variable): grappler rewrites
        # a division by a constant into a multiplication by its reciprocal, which rounds differently
        @tf.function
        def step(xt, st, bt, dyt):
            bt = None if b is None else bt
            with tf.GradientTape() as tape:
                tape.watch([xt, st] + ([bt] if bt is not None else []))
                y = fn(xt, st, qn, qp, bt)
            return [y] + tape.gradient(y, [xt, st] + ([bt] if bt is not None else []), output_gradients=dyt)

        spec = tf.TensorSpec([None] + list(x.shape[1:]), tf.float32)
        concrete = step.get_concrete_function(spec, tf.TensorSpec(np.shape(s), tf.float32),
                                              tf.TensorSpec([], tf.float32), spec)
        return [t.numpy() for t in concrete(tf.constant(x), tf.constant(s), tf.constant(b or 0.0, tf.float32),
                                            tf.constant(dy))]

    fused, reference = run(ops.uniform_ste), run(_uniform_ste_autodiff)
    for a, r in zip(fused, reference):
        np.testing.assert_array_equal(a.view(np.uint32), r.view(np.uint32))
