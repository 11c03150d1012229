"""DoReFa-Net (Zhou et al. 2016): tanh-normalised weights, clipped activations."""
import numpy as np
import pytest

from . import reference as ref
from .conftest import BITS, assert_grid_close, build, grads, run
from qresearch.errors import ConfigError
from qresearch.quantizers import create

rng = np.random.RandomState(4)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_weights_forward(bits, per_channel):
    x = (rng.randn(3, 4, 6) * np.linspace(0.1, 2, 6)).astype("float32")
    axes = (2,) if per_channel else None
    q = create({"name": "dorefa", "bits": bits, "per_channel": per_channel}, role="weights")
    w = build(q, x.shape)
    y = run(q, x, w)
    step = 2 / (2**bits - 1)
    assert_grid_close(y, ref.dorefa_weights(x, bits, axes), step)
    assert y.min() >= -1 and y.max() <= 1
    if per_channel:  # every channel's largest |w| reaches ±1
        np.testing.assert_allclose(np.abs(y).max(axis=(0, 1)), 1.0, rtol=1e-6)
    assert_grid_close(run(q, x, w, training=False), y, step)


@pytest.mark.parametrize("bits", BITS)
def test_activations_forward(bits):
    x = (rng.randn(8, 12) * 0.8 + 0.4).astype("float32")
    q = create({"name": "dorefa", "bits": bits}, role="activations")
    w = build(q, None)
    y = run(q, x, w)
    step = 1 / (2**bits - 1)
    assert_grid_close(y, ref.dorefa_activations(x, bits), step)
    # Inference: FakeQuant over [0, 1], the same grid.
    assert_grid_close(run(q, x, w, training=False), ref.fake_quant(x, 0.0, 1.0, bits, False), step)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("init", ["paper", "max"])
def test_signed_activations_keep_the_negative_half(bits, init):
    """``signed: true`` (a scheme's choice for a tensor not known non-negative): ``c·round(m·clip(x/c,-1,1))/m``,
    ``m = 2^(k-1) - 1``, against numpy; zero exact; inference is FakeQuant over [-c, c], narrow; the gradient is
    straight through inside the clip."""
    x = (rng.randn(16, 12) * 0.8).astype("float32")
    x[0, :3] = [0.0, -6.0, 5.0]
    q = create({"name": "dorefa", "bits": bits, "signed": True, "init": init}, role="activations")
    assert q.init_range == "symmetric" and q.init_grid == (2 ** (bits - 1) - 1,) * 2
    w = build(q, None)
    if init == "max":
        run(q, x, w)                                  # the first training batch sets the clip from the data
        assert w["clip"].numpy() == 6.0               # max|x|, not max(x): the symmetric range
        w["clip"].assign(3.0)                         # initialised once; a clip that cuts both tails
    c = np.float32(w["clip"].numpy()) if init == "max" else np.float32(1.0)
    m = 2 ** (bits - 1) - 1
    want = (np.round(np.clip(x / c, -1, 1) * m) / m * c).astype("float32")
    y = run(q, x, w)
    assert_grid_close(y, want, c / m)
    assert (y[x < -c / m] < 0).all() and y[0, 0] == 0.0 and np.isclose(y.min(), -c) and np.isclose(y.max(), c)
    assert_grid_close(run(q, x, w, training=False), ref.fake_quant(x, -c, c, bits, True), c / m)
    r = rng.randn(*x.shape).astype("float32")
    (gx,) = grads(q, x, w, r, [])
    np.testing.assert_allclose(gx, np.where(np.abs(x) <= c, r, 0.0), rtol=1e-6)


def test_activations_default_to_the_papers_unsigned_grid():
    assert not create("dorefa", role="activations").signed and not create("dorefa").signed


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_scale_max_keeps_the_weights_scale(per_channel):
    """``weight_scale: max``: the paper's grid times max|w| (same axes); forward and gradient against numpy."""
    x = (rng.randn(3, 4, 6) * np.linspace(0.005, 0.05, 6)).astype("float32")   # a trained conv's scale
    axes = (2,) if per_channel else None
    red = (0, 1) if per_channel else None
    q = create({"name": "dorefa", "bits": 4, "per_channel": per_channel, "weight_scale": "max"}, role="weights")
    w = build(q, x.shape)
    big = np.abs(x).max(axis=red, keepdims=per_channel)
    unit = ref.dorefa_weights(x, 4, axes)
    y = run(q, x, w)
    assert_grid_close(y, unit * big, 2 / 15 * big.max())
    assert np.abs(y - x).max() < 0.1 * np.abs(unit - x).max()   # near the weights, not in [-1, 1]
    r = rng.randn(*x.shape).astype("float32")
    (gx,) = grads(q, x, w, r, [])
    # d/dw (M·u): M·du/dw + [w = argmax |w|]·sign(w)·Σ r·u   (M = max|w| over the reduced axes)
    is_max = (np.abs(x) == big).astype(np.float64)
    want = big * ref.dorefa_weights_grad(x, r, axes) + is_max * np.sign(x) * np.sum(
        r * unit, axis=red, keepdims=per_channel)
    np.testing.assert_allclose(gx, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="weight_scale"):
        create({"name": "dorefa", "weight_scale": "mean"})


def test_auto_mode_follows_how_tfmot_builds():
    q = create({"name": "dorefa", "bits": 2})
    assert q.mode == "auto"
    x = np.array([[-2.0, 0.3], [0.5, 1.5]], "float32")
    np.testing.assert_allclose(run(q, x, build(q, x.shape)), ref.dorefa_weights(x, 2), rtol=1e-6)
    np.testing.assert_allclose(run(q, x, build(q, None)), ref.dorefa_activations(x, 2), rtol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_gradient_through_tanh_and_max(per_channel):
    x = (rng.randn(7, 5) * 0.7).astype("float32")
    axes = (1,) if per_channel else None
    q = create({"name": "dorefa", "bits": 3, "per_channel": per_channel}, role="weights")
    r = rng.randn(*x.shape).astype("float32")
    (gx,) = grads(q, x, build(q, x.shape), r, [])
    np.testing.assert_allclose(gx, ref.dorefa_weights_grad(x, r, axes), rtol=1e-4, atol=1e-6)


def test_activation_gradient_is_straight_through_in_0_1():
    x = np.array([-0.5, 0.1, 0.49, 0.9, 1.7], "float32")
    q = create({"name": "dorefa", "bits": 2}, role="activations")
    (gx,) = grads(q, x, build(q, None), np.full(5, 2.0, "float32"), [])
    np.testing.assert_array_equal(gx, [0, 2, 2, 2, 0])


@pytest.mark.parametrize("case", ["zeros", "constant", "huge", "nan"])
def test_edge_cases(case):
    x = rng.randn(12, 3).astype("float32")
    if case == "zeros":
        x[:] = 0
    elif case == "constant":
        x[:] = -0.4
    elif case == "huge":
        x[0, 0] = 1e30
    else:
        x[2, 2] = np.nan
    q = create({"name": "dorefa", "bits": 2, "per_channel": True}, role="weights")
    y = run(q, x, build(q, x.shape))
    finite = np.isfinite(x)
    assert np.isfinite(y[finite]).all()
    if case == "zeros":  # no zero on DoReFa's grid: tanh(0)/0 -> 1/2 -> round(1.5)/3 -> 1/3
        np.testing.assert_allclose(y, 1 / 3, rtol=1e-6)
    elif case == "nan":
        np.testing.assert_allclose(y[:, :2], ref.dorefa_weights(x[:, :2], 2, (1,)), rtol=1e-6)
        col = x[:, 2][finite[:, 2]]
        np.testing.assert_allclose(y[:, 2][finite[:, 2]], ref.dorefa_weights(col, 2), rtol=1e-6)
    else:
        np.testing.assert_allclose(y, ref.dorefa_weights(x, 2, (1,)), rtol=1e-6)


def test_no_pot_scales_and_no_narrow_range():
    with pytest.raises(ConfigError, match="power-of-two"):
        create({"name": "dorefa", "scale_format": "pot"})
    with pytest.raises(ConfigError, match="narrow_range"):
        create({"name": "dorefa", "narrow_range": True})
    with pytest.raises(ConfigError, match="mode"):
        create({"name": "dorefa", "mode": "both"})


def test_activation_gradient_bit_identical_to_autodiff():
    from qresearch._compat import tf
    from qresearch.quantizers import ops
    from qresearch.quantizers.dorefa import clipped_unit_ste

    r = np.random.default_rng(5)
    x = (r.standard_normal((8, 5, 5, 3)) * 0.8 + 0.5).astype("float32")
    x.flat[:4] = [0.0, 1.0, -0.0, 0.5 / 15]
    dy = r.standard_normal(x.shape).astype("float32")

    def run(fn):
        @tf.function
        def step(xt, dyt):
            with tf.GradientTape() as tape:
                tape.watch(xt)
                y = fn(xt)
            return [y, tape.gradient(y, xt, output_gradients=dyt)]

        spec = tf.TensorSpec([None, 5, 5, 3], tf.float32)
        return [t.numpy() for t in step.get_concrete_function(spec, spec)(tf.constant(x), tf.constant(dy))]

    reference = run(lambda t: ops.quantize_unit_ste(tf.clip_by_value(t, 0.0, 1.0), 4))
    for got, want in zip(run(lambda t: clipped_unit_ste(t, 4)), reference):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _linear_grid(w, bits, red):
    """The ``2^bits - 1``-level grid over ``[-M, M]``, ``M = max|w|`` over ``red``, applied to ``w`` (float64)."""
    levels = 2**bits - 1
    m = np.abs(w.astype(np.float64)).max(axis=red, keepdims=True)
    return m * (2 * np.round((w / (2 * m) + 0.5) * levels) / levels - 1), m


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 6), (64, 64, 6)])   # plain autodiff; the fused passes (> 16384)
def test_latent_init_inverse_gives_back_the_float_weights(bits, per_channel, shape):
    """``latent_init: inverse``: the transform of the latent weight is the linear grid over [-M, M] applied to the
    float weight (closed form in numpy), where the float weight itself is compressed by the tanh."""
    w = (rng.randn(*shape) * np.linspace(0.2, 2.5, shape[-1])).astype("float32")   # M up to ~9 (a folded BN)
    axes = (2,) if per_channel else None
    red = (0, 1) if per_channel else None
    q = create({"name": "dorefa", "bits": bits, "per_channel": per_channel, "weight_scale": "max",
                "latent_init": "inverse"}, role="weights")
    u = q.latent_weights(w, axes)
    assert u.dtype == np.float32 and np.isfinite(u).all()
    want, m = _linear_grid(w, bits, red)
    np.testing.assert_allclose(np.abs(u).max(axis=red, keepdims=True), m, rtol=1e-6)   # max|u| = M
    y = run(q, u, build(q, u.shape))
    step = 2 * m / (2**bits - 1)
    off = np.abs(y - want) / step
    assert off.max() <= 1 + 1e-4                            # float round-off flips a value at a level's midpoint
    assert np.mean(off < 1e-3) > 0.99
    if bits == 8:   # where the grid is fine, the tanh's compression is most of the float weight's error
        as_float = run(q, w, build(q, w.shape))
        assert np.abs(y - w).mean() < 0.5 * np.abs(as_float - w).mean()


def test_latent_init_inverse_with_the_unit_grid_keeps_the_shape():
    w = (rng.randn(5, 8) * 1.5).astype("float32")
    q = create({"name": "dorefa", "bits": 8, "weight_scale": "unit", "latent_init": "inverse"}, role="weights")
    y = run(q, q.latent_weights(w, None), build(q, w.shape))
    want, m = _linear_grid(w, 8, None)
    np.testing.assert_allclose(y, want / m, atol=2 / 255 + 1e-6)   # w/M on the paper's [-1, 1] grid


def test_latent_init_edge_cases():
    w = rng.randn(6, 3).astype("float32")
    w[:, 0] = 0.0            # an all-zero channel stays 0
    w[0, 1] = 40.0           # tanh(40) is 1 even in float64: saturates, stays finite
    q = create({"name": "dorefa", "per_channel": True, "weight_scale": "max", "latent_init": "inverse"},
               role="weights")
    u = q.latent_weights(w, (1,))
    assert np.isfinite(u).all()
    np.testing.assert_array_equal(u[:, 0], 0.0)
    np.testing.assert_allclose(u[:, 2], np.arctanh(w[:, 2] * np.tanh(np.abs(w[:, 2]).max()) / np.abs(w[:, 2]).max()),
                               rtol=1e-6)
    assert create({"name": "dorefa"}, role="weights").latent_weights(w, None) is None        # latent_init: float
    assert create({"name": "dorefa", "latent_init": "inverse"}, role="activations").latent_weights(w, None) is None
    with pytest.raises(ConfigError, match="latent_init"):
        create({"name": "dorefa", "latent_init": "atanh"})
