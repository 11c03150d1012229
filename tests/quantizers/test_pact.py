"""PACT (Choi et al. 2018): learned clipping level, against numpy."""
import numpy as np
import pytest

from . import reference as ref
from .conftest import BITS, assert_grid_close, build, grads, run
from qresearch._compat import keras, tf
from qresearch.quantizers import ops
from qresearch.quantizers import create

rng = np.random.RandomState(3)


@pytest.mark.parametrize("bits", BITS)
def test_activation_forward_and_inference(bits):
    x = (rng.randn(8, 10) * 2 + 1).astype("float32")
    q = create({"name": "pact", "bits": bits, "alpha_init": 2.5}, role="activations")
    w = build(q, None)
    y = run(q, x, w)
    step = 2.5 / (2**bits - 1)
    assert_grid_close(y, ref.pact_forward(x, np.float32(2.5), bits), step)
    y_inf = run(q, x, w, training=False)
    assert_grid_close(y_inf, ref.fake_quant(x, 0.0, 2.5, bits, False), step)
    assert_grid_close(y_inf, y, step)


@pytest.mark.parametrize("bits", BITS)
def test_per_channel_signed_weights(bits):
    x = (rng.randn(5, 4) * [0.1, 0.5, 1.0, 2.0]).astype("float32")
    q = create({"name": "pact", "bits": bits, "per_channel": True, "alpha_init": 1.0}, role="weights")
    w = build(q, x.shape)
    assert w["alpha"].shape == (4,) and q.signed
    alphas = np.array([0.2, 0.5, 1.0, 3.0], "float32")
    w["alpha"].assign(alphas)
    y = run(q, x, w)
    qn, qp = ref.grid(bits, signed=True)
    s = alphas / qp
    # Symmetric PACT: clip to [-α, α], then the signed grid of step α/Qp.
    expected = np.round(np.clip(x, -alphas, alphas) / s) * s
    assert_grid_close(y, expected, s)
    y_inf = run(q, x, w, training=False)
    assert_grid_close(y_inf, ref.fake_quant_per_channel(np.maximum(x, -alphas), -qn * s, qp * s, bits, False), s)
    assert_grid_close(y_inf, y, s)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gradients_follow_eq3(bits):
    x = (rng.randn(8, 25) * 3).astype("float32")
    q = create({"name": "pact", "bits": bits, "alpha_init": 2.0}, role="activations")
    w = build(q, None)
    r = rng.randn(*x.shape).astype("float32")
    gx, ga = grads(q, x, w, r, [w["alpha"]])
    np.testing.assert_allclose(ga, np.sum(r * ref.pact_alpha_grad(x, 2.0)), rtol=1e-5)
    np.testing.assert_allclose(gx, r * ref.pact_input_grad(x, 2.0), rtol=1e-6)
    # At x == α exactly the gradient goes to α (eq. 3 uses x >= α).
    (gx, ga) = grads(q, np.array([2.0], "float32"), w, np.ones(1, "float32"), [w["alpha"]])
    assert (gx[0], ga) == (0.0, 1.0)


def test_signed_alpha_gradient_counts_both_tails():
    x = np.array([-3.0, -0.5, 0.2, 1.5, 4.0], "float32")
    q = create({"name": "pact", "bits": 4, "alpha_init": 1.0, "signed": True})
    w = build(q, None)
    _, ga = grads(q, x, w, np.ones_like(x), [w["alpha"]])
    assert ga == pytest.approx(1.0 * 2 - 1.0)  # x >= α: +1 (two), x <= -α: -1 (one)


def test_alpha_decay_shows_in_model_losses():
    layer = keras.layers.Layer()
    q = create({"name": "pact", "alpha_init": 3.0, "alpha_decay": 0.01}, role="activations")
    build(q, None, layer)
    assert len(layer.losses) == 1
    assert float(layer.losses[0]) == pytest.approx(0.01 * 9.0)
    layer2 = keras.layers.Layer()
    build(create("pact", role="activations"), None, layer2)
    assert layer2.losses == []


def test_pot_scale_format_makes_the_step_a_power_of_two():
    x = np.linspace(-1, 7, 50).astype("float32")
    q = create({"name": "pact", "bits": 4, "scale_format": "pot", "alpha_init": 5.0}, role="activations")
    y = run(q, x, build(q, None))
    step = 2.0 ** np.ceil(np.log2(5.0 / 15))
    np.testing.assert_array_equal(y, np.round(np.clip(x, 0, 15 * step) / step) * step)


@pytest.mark.parametrize("case", ["zeros", "constant", "huge", "nan"])
def test_edge_cases(case):
    x = rng.randn(30).astype("float32")
    if case == "zeros":
        x[:] = 0
    elif case == "constant":
        x[:] = 0.7
    elif case == "huge":
        x[2] = 1e30
        x[3] = -1e30
    else:
        x[4] = np.nan
    q = create({"name": "pact", "bits": 4, "alpha_init": 1.0}, role="activations")
    w = build(q, None)
    r = np.ones_like(x)
    _, ga = grads(q, x, w, r, [w["alpha"]])
    assert np.isfinite(ga)
    y = run(q, x, w)
    finite = np.isfinite(x)
    assert np.isfinite(y[finite]).all()
    # clip form of eq. 1: the paper's 0.5(|x| - |x-α| + α) cancels catastrophically at |x| = 1e30
    assert_grid_close(y[finite], ref.quantize_k(np.clip(x[finite], 0, 1), 4), 1 / 15)
    assert np.isfinite(run(q, x, w, training=False)[finite]).all()


def test_data_init_sets_alpha_from_the_first_batch():
    x = (rng.rand(16, 6) * 200.0).astype("float32")  # unnormalised, e.g. pixels
    q = create({"name": "pact", "bits": 8, "data_init": True}, role="activations")
    w = build(q, None)
    assert float(w["alpha"].numpy()) == 6.0
    y = run(q, x, w)
    assert float(w["alpha"].numpy()) == float(x.max())  # no clipping at the start
    assert_grid_close(y, ref.pact_forward(x, np.float32(x.max()), 8), x.max() / 255)
    run(q, x * 3, w)
    assert float(w["alpha"].numpy()) == float(x.max())  # once only
    signed = create({"name": "pact", "bits": 8, "data_init": True, "signed": True})
    ws = build(signed, None)
    run(signed, x - 150.0, ws)
    assert np.isclose(float(ws["alpha"].numpy()), float(np.abs(x - 150.0).max()))


def test_data_init_is_off_by_default():
    q = create({"name": "pact", "bits": 8}, role="activations")
    w = build(q, None)
    run(q, np.full((4, 3), 50.0, "float32"), w)
    assert float(w["alpha"].numpy()) == 6.0 and "initialized" not in w


def _pact_autodiff(x, a, qp, signed):
    """The plain autodiff graph ``pact_ste`` replaced: its gradients must be equal bit for bit."""
    y = tf.where(x >= a, a * tf.ones_like(x), tf.nn.relu(x) if not signed else x)
    if signed:
        y = tf.where(x <= -a, -a * tf.ones_like(x), y)
    step = tf.stop_gradient(a / qp)
    return ops.round_ste(y / step) * step


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_pact_ste_gradients_bit_identical_to_autodiff(signed, per_channel):
    from qresearch.quantizers.pact import pact_ste

    r = np.random.default_rng(4)
    x = (r.standard_normal((8, 4, 4, 3)) * 3).astype("float32")
    a = (np.array([[[[1.7, 2.5, 0.9]]]]) if per_channel else np.array(2.1)).astype("float32")
    x.flat[:4] = [a.flat[0], -a.flat[0], 0.0, a.flat[0] / 2]   # the clip edges, zero, a rounding tie
    dy = r.standard_normal(x.shape).astype("float32")
    qp = 7 if signed else 15

    def run(fn):
        @tf.function
        def step(xt, at, dyt):
            with tf.GradientTape() as tape:
                tape.watch([xt, at])
                y = fn(xt, at, qp, signed)
            return [y] + tape.gradient(y, [xt, at], output_gradients=dyt)

        spec = tf.TensorSpec([None, 4, 4, 3], tf.float32)   # placeholders, as in a model
        concrete = step.get_concrete_function(spec, tf.TensorSpec(a.shape, tf.float32), spec)
        return [t.numpy() for t in concrete(tf.constant(x), tf.constant(a), tf.constant(dy))]

    for got, want in zip(run(pact_ste), run(_pact_autodiff)):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
