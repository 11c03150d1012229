"""LSQ (Esser et al. 2020) against a numpy transcription of the paper."""
import numpy as np
import pytest

from . import reference as ref
from .conftest import BITS, assert_grid_close, build, grads, run
from qresearch._compat import keras, tf
from qresearch.quantizers import create

rng = np.random.RandomState(1)


def weight_case(per_channel):
    x = (rng.randn(3, 3, 4, 5) * np.linspace(0.05, 1.0, 5)).astype("float32")
    axes = (3,) if per_channel else None
    return x, axes


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_weights_forward_and_init(bits, per_channel):
    x, axes = weight_case(per_channel)
    q = create({"name": "lsq", "bits": bits, "per_channel": per_channel}, role="weights")
    w = build(q, x.shape)
    y = run(q, x, w)
    qn, qp = ref.grid(bits, signed=True)
    s = ref.lsq_init(x, qp, axes)
    np.testing.assert_allclose(w["step"].numpy(), s, rtol=1e-6)
    assert w["initialized"].numpy() == 1.0
    assert_grid_close(y, ref.lsq_forward(x, ref.bcast(s, x, axes), qn, qp), s)
    # Inference: TF FakeQuant over [-Qn·s, Qp·s], the same grid.
    s_var = w["step"].numpy()
    if axes is None:
        expected = ref.fake_quant(x, -qn * s_var, qp * s_var, bits, False)
    else:
        expected = ref.fake_quant_per_channel(x, -qn * s_var, qp * s_var, bits, False)
    y_inf = run(q, x, w, training=False)
    assert_grid_close(y_inf, expected, s)
    assert_grid_close(y_inf, y, s)


@pytest.mark.parametrize("per_channel", [False, True])
def test_max_abs_init_rule_covers_the_whole_range(per_channel):
    x, axes = weight_case(per_channel)
    q = create({"name": "lsq", "bits": 8, "per_channel": per_channel, "init_rule": "max_abs"}, role="weights")
    w = build(q, x.shape)
    y = run(q, x, w)
    red = tuple(a for a in range(x.ndim) if axes is None or a not in axes)
    s = np.abs(x).max(axis=red) / 127.0
    np.testing.assert_allclose(w["step"].numpy(), s, rtol=1e-6)
    # Nothing is clipped: the largest magnitude of each channel lands on ±Qp·s.
    np.testing.assert_allclose(np.abs(y).max(axis=red), 127.0 * s, rtol=1e-5)
    with pytest.raises(Exception, match="init_rule must be one of 'mean_abs', 'max_abs'"):
        create({"name": "lsq", "init_rule": "mse"})


@pytest.mark.parametrize("bits", BITS)
def test_activations_unsigned_forward(bits):
    x = np.maximum(rng.randn(8, 6, 3) * 2, 0).astype("float32")
    q = create({"name": "lsq", "bits": bits}, role="activations")
    assert not q.signed
    w = build(q, None)
    y = run(q, x, w)
    qn, qp = ref.grid(bits, signed=False)
    assert qn == 0
    s = ref.lsq_init(x, qp)
    assert_grid_close(y, ref.lsq_forward(x, s, qn, qp), s)
    assert_grid_close(run(q, x, w, training=False), ref.fake_quant(x, 0.0, qp * w["step"].numpy(), bits, False), s)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_gradients_follow_the_paper(bits, per_channel):
    x, axes = weight_case(per_channel)
    q = create({"name": "lsq", "bits": bits, "per_channel": per_channel}, role="weights")
    w = build(q, x.shape)
    r = rng.randn(*x.shape).astype("float32")
    gx, gs = grads(q, x, w, r, [w["step"]])
    qn, qp = ref.grid(bits, signed=True)
    s = ref.bcast(w["step"].numpy(), x, axes)
    n = x.size / (x.shape[3] if per_channel else 1)  # weights sharing one step
    red = ref.channel_reduce(x, axes)
    expected = ref.lsq_g(n, qp) * np.sum(r * ref.lsq_step_grad(x, s, qn, qp), axis=red)
    np.testing.assert_allclose(gs, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gx, r * ref.lsq_input_grad(x, s, qn, qp), rtol=1e-6, atol=1e-7)


def test_activation_step_gradient_uses_features_per_example():
    x = (rng.randn(8, 5, 3) * 2).astype("float32")
    q = create({"name": "lsq", "bits": 3, "signed": True}, role="activations")
    w = build(q, None)  # as tfmot builds activation quantizers: no shape
    r = rng.randn(*x.shape).astype("float32")
    _, gs = grads(q, x, w, r, [w["step"]])
    qn, qp = ref.grid(3, signed=True)
    s = w["step"].numpy()
    expected = ref.lsq_g(5 * 3, qp) * np.sum(r * ref.lsq_step_grad(x, s, qn, qp))
    np.testing.assert_allclose(gs, expected, rtol=1e-4)


def test_grad_scaling_off_gives_the_raw_gradient():
    x = rng.randn(50).astype("float32")
    q = create({"name": "lsq", "bits": 4, "grad_scaling": False}, role="weights")
    w = build(q, x.shape)
    r = np.ones_like(x)
    _, gs = grads(q, x, w, r, [w["step"]])
    qn, qp = ref.grid(4, signed=True)
    np.testing.assert_allclose(gs, np.sum(ref.lsq_step_grad(x, w["step"].numpy(), qn, qp)), rtol=1e-4)


def test_initialises_once_and_only_in_training():
    q = create({"name": "lsq", "bits": 4}, role="weights")
    w = build(q, (20,))
    x = rng.randn(20).astype("float32")
    run(q, x, w, training=False)
    assert w["initialized"].numpy() == 0 and w["step"].numpy() == 1.0
    run(q, x, w)
    s0 = w["step"].numpy()
    run(q, 10 * x, w)
    assert w["step"].numpy() == s0
    q2 = create({"name": "lsq", "bits": 4, "data_init": False, "step_init": 0.25}, role="weights")
    w2 = build(q2, (20,))
    run(q2, x, w2)
    assert w2["step"].numpy() == 0.25


def test_pot_scale_format():
    x = rng.randn(40).astype("float32")
    q = create({"name": "lsq", "bits": 4, "scale_format": "pot"}, role="weights")
    w = build(q, x.shape)
    y = run(q, x, w)
    qn, qp = ref.grid(4, signed=True)
    s = np.float32(2.0) ** np.ceil(np.log2(ref.lsq_init(x, qp)))
    assert_grid_close(y, ref.lsq_forward(x, s, qn, qp), s)
    assert_grid_close(run(q, x, w, training=False), y, s)


def test_step_floor_keeps_outputs_finite():
    q = create({"name": "lsq", "bits": 4, "data_init": False}, role="weights")
    w = build(q, (10,))
    w["step"].assign(-1.0)  # an optimizer overshoot
    x = rng.randn(10).astype("float32")
    assert np.isfinite(run(q, x, w)).all()
    assert np.isfinite(run(q, x, w, training=False)).all()


@pytest.mark.parametrize("case", ["zeros", "constant", "huge", "nan"])
def test_edge_cases(case):
    x = rng.randn(6, 4).astype("float32")
    if case == "zeros":
        x[:] = 0
    elif case == "constant":
        x[:] = -0.75
    elif case == "huge":
        x[0, 0] = 1e30
    else:
        x[1, 2] = np.nan
        x[2, 1] = -np.inf
    q = create({"name": "lsq", "bits": 4, "per_channel": True}, role="weights")
    w = build(q, x.shape)
    y = run(q, x, w)
    s = w["step"].numpy()
    assert np.isfinite(s).all() and (s > 0).all()
    finite = np.isfinite(x)
    assert np.isfinite(y[finite]).all()
    qn, qp = ref.grid(4, signed=True)
    if case == "zeros":  # nothing to learn a step from: keep step_init, try again next batch
        np.testing.assert_array_equal(y, 0.0)
        assert w["initialized"].numpy() == 0.0 and (s == 1.0).all()
    elif case == "nan":
        s_ref = np.array([ref.lsq_init(x[:, c][finite[:, c]], qp) for c in range(4)], "float32")
        np.testing.assert_allclose(s, s_ref, rtol=1e-6)
        assert_grid_close(y[finite], ref.lsq_forward(x, s, qn, qp)[finite], s)
    else:
        assert_grid_close(y, ref.lsq_forward(x, s, qn, qp), s)
    assert np.isfinite(run(q, x, w, training=False)[finite]).all()


def test_symmetric_false_is_rejected_with_the_fix():
    with pytest.raises(Exception, match="symmetric.*lsq_plus"):
        create({"name": "lsq", "symmetric": False})


def test_depthwise_per_channel_steps_cover_in_times_multiplier():
    layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    layer.build((None, 8, 8, 4))
    q = create({"name": "lsq", "bits": 4, "per_channel": True}, role="weights")
    w = q.build(layer.depthwise_kernel.shape, "depthwise_kernel", layer)
    assert w["step"].shape == (4, 2)
    x = layer.depthwise_kernel.numpy()
    y = run(q, x, w)
    qn, qp = ref.grid(4, signed=True)
    s = ref.lsq_init(x, qp, (2, 3))
    assert_grid_close(y, ref.lsq_forward(x, ref.bcast(s, x, (2, 3)), qn, qp), s)


def test_data_init_inside_tf_function():
    q = create({"name": "lsq", "bits": 4}, role="activations")
    w = build(q, None)
    x = np.abs(rng.randn(4, 10)).astype("float32")
    step = tf.function(lambda t: q(t, True, w))
    y = step(tf.constant(x)).numpy()
    s = ref.lsq_init(x, 15)
    np.testing.assert_allclose(w["step"].numpy(), s, rtol=1e-6)
    assert_grid_close(y, ref.lsq_forward(x, s, 0, 15), s)
    step(tf.constant(3 * x))  # same graph, flag set: no second initialisation
    np.testing.assert_allclose(w["step"].numpy(), s, rtol=1e-6)
