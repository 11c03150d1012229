"""LSQ+ (Bhalgat et al. 2020): learned step and offset, against numpy."""
import numpy as np
import pytest

from . import reference as ref
from .conftest import BITS, assert_grid_close, build, grads, run
from qresearch.quantizers import create

rng = np.random.RandomState(2)


def nudged(beta, s, qn, qp):
    """β moved so that real 0 is a grid point (what TF FakeQuant does to the range)."""
    return -np.clip(np.round(-beta / s), -qn, qp) * s


def act_case(per_channel):
    if per_channel:  # asymmetric per-channel weights, channels last
        return (rng.randn(16, 4) * [0.5, 1, 2, 3] + [0.2, -0.5, 1.0, 4.0]).astype("float32"), (1,)
    return (rng.randn(8, 5, 3) * 1.5 + 0.8).astype("float32"), None


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("nudge", [True, False])
def test_asymmetric_forward_init_and_inference(bits, per_channel, nudge):
    x, axes = act_case(per_channel)
    q = create({"name": "lsq_plus", "bits": bits, "per_channel": per_channel, "nudge_zero_point": nudge},
               role="activations")
    w = build(q, x.shape if per_channel else None)
    y = run(q, x, w)
    qn, qp = ref.grid(bits, signed=False)
    red = ref.channel_reduce(x, axes)
    lo, hi = x.min(axis=red), x.max(axis=red)
    s0 = ((hi - lo) / np.float32(qp - (-qn))).astype("float32")
    b0 = (lo - (-qn) * s0).astype("float32")  # paper: β = min - n·s with n = -Qn
    np.testing.assert_allclose(w["step"].numpy(), s0, rtol=1e-6)
    np.testing.assert_allclose(w["offset"].numpy(), b0, rtol=1e-6, atol=1e-7)
    s, b = ref.bcast(s0, x, axes), ref.bcast(b0, x, axes)
    b_used = nudged(b, s, qn, qp) if nudge else b
    assert_grid_close(y, ref.lsq_forward(x, s, qn, qp, b_used), s0)
    # Inference: FakeQuant over [β - Qn·s, β + Qp·s]; with nudging it equals training.
    lo_fq, hi_fq = b0 - qn * s0, b0 + qp * s0
    if per_channel:
        expected = ref.fake_quant_per_channel(x, lo_fq, hi_fq, bits, False)
    else:
        expected = ref.fake_quant(x, lo_fq, hi_fq, bits, False)
    y_inf = run(q, x, w, training=False)
    assert_grid_close(y_inf, expected, s0)
    if nudge:
        assert_grid_close(y_inf, y, s0)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_symmetric_weights_use_the_paper_init(bits, per_channel):
    x = (rng.randn(3, 3, 2, 4) * [0.1, 0.3, 1, 2] + 0.05).astype("float32")
    axes = (3,) if per_channel else None
    q = create({"name": "lsq_plus", "bits": bits, "per_channel": per_channel}, role="weights")
    w = build(q, x.shape)
    assert "offset" not in w
    y = run(q, x, w)
    red = ref.channel_reduce(x, axes)
    mu, sd = x.mean(axis=red), x.std(axis=red)
    s0 = np.maximum(np.abs(mu - 3 * sd), np.abs(mu + 3 * sd)) / 2 ** (bits - 1)
    np.testing.assert_allclose(w["step"].numpy(), s0, rtol=1e-5)
    qn, qp = ref.grid(bits, signed=True)
    s = ref.bcast(w["step"].numpy(), x, axes)
    assert_grid_close(y, ref.lsq_forward(x, s, qn, qp), s)


@pytest.mark.parametrize("nudge", [True, False])
def test_step_and_offset_gradients(nudge):
    bits = 3
    x = (rng.randn(8, 6) * 2 + 0.5).astype("float32")
    q = create({"name": "lsq_plus", "bits": bits, "nudge_zero_point": nudge}, role="activations")
    w = build(q, None)
    # Start from a range that clips both ends, so every branch of the rule is used.
    w["step"].assign(0.4)
    w["offset"].assign(-1.3)
    w["initialized"].assign(1.0)
    r = rng.randn(*x.shape).astype("float32")
    gx, gs, gb = grads(q, x, w, r, [w["step"], w["offset"]])
    qn, qp = ref.grid(bits, signed=False)
    s, b = np.float32(0.4), np.float32(-1.3)
    b_used = nudged(b, s, qn, qp) if nudge else b
    g = ref.lsq_g(6, qp)  # 6 features per example
    np.testing.assert_allclose(gs, g * np.sum(r * ref.lsq_step_grad(x, s, qn, qp, b_used)), rtol=1e-4)
    np.testing.assert_allclose(gb, g * np.sum(r * ref.lsq_offset_grad(x, s, qn, qp, b_used)), rtol=1e-4)
    np.testing.assert_allclose(gx, r * ref.lsq_input_grad(x, s, qn, qp, b_used), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", ["zeros", "constant", "huge", "nan"])
def test_edge_cases(case):
    x = rng.randn(10, 4).astype("float32")
    if case == "zeros":
        x[:] = 0
    elif case == "constant":
        x[:] = 1.5
    elif case == "huge":
        x[0, 0] = 1e30
    else:
        x[3, 1] = np.nan
        x[0, 0] = np.inf
    q = create({"name": "lsq_plus", "bits": 4}, role="activations")
    w = build(q, None)
    y = run(q, x, w)
    s, b = w["step"].numpy(), w["offset"].numpy()
    assert np.isfinite([s, b]).all() and s > 0
    finite = np.isfinite(x)
    assert np.isfinite(y[finite]).all()
    assert np.isfinite(run(q, x, w, training=False)[finite]).all()
    if case in ("zeros", "constant"):  # no spread to size a step from: defaults kept
        assert w["initialized"].numpy() == 0.0 and (s, b) == (1.0, 0.0)
    if case == "nan":
        xf = x[finite]
        np.testing.assert_allclose(s, (xf.max() - xf.min()) / 15, rtol=1e-6)
        np.testing.assert_allclose(b, xf.min(), rtol=1e-6)
