"""Power-of-two scales: 2^ceil(log2(max|x|/Qp)), symmetric FakeQuant forward."""
import numpy as np
import pytest

from . import reference as ref
from .conftest import BITS, build, grads, run
from qresearch.errors import ConfigError
from qresearch.quantizers import create
from qresearch.quantizers.minmax import MinMaxQuantizer

rng = np.random.RandomState(5)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("rounding", ["ceil", "round"])
def test_forward_matches_numpy(bits, per_channel, rounding):
    x = (rng.randn(4, 3, 5) * np.linspace(0.05, 3, 5)).astype("float32")
    q = create({"name": "pot", "bits": bits, "per_channel": per_channel, "pot_rounding": rounding},
               role="weights")
    w = build(q, x.shape)
    y = run(q, x, w)
    qn, qp = ref.grid(bits, signed=True, narrow=True)
    m = np.abs(x).max(axis=(0, 1)) if per_channel else np.abs(x).max()
    scale = ref.pot_scale(m, qp, rounding)
    np.testing.assert_array_equal(y, ref.pot_forward(x, scale, qn, qp))
    np.testing.assert_array_equal(run(q, x, w, training=False), y)
    # Every output is an integer multiple of its (power-of-two) scale.
    k = y / (scale if not per_channel else scale.reshape(1, 1, -1))
    np.testing.assert_array_equal(k, np.round(k))
    assert np.all(np.log2(scale) == np.round(np.log2(scale)))


def test_ceil_never_clips_round_may():
    x = np.array([-0.595, 0.1, 0.3], "float32")  # max|x|/Qp = 1.2·2^-8: rounds down to 2^-8
    for rounding, clipped in (("ceil", False), ("round", True)):
        q = create({"name": "pot", "pot_rounding": rounding}, role="weights")
        y = run(q, x, build(q, x.shape))
        assert (np.abs(y[0]) < 0.59) == clipped


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_mse_rounding_picks_the_power_with_the_smaller_error(bits, per_channel):
    """``pot_rounding: mse``: per channel, the ceil power or the one below, whichever quantizes the weights with the
    smaller squared error (numpy reference); at 2 bits the lower power wins where ceil leaves most weights at 0."""
    x = (np.random.RandomState(bits).randn(4, 3, 6) * np.linspace(0.05, 3, 6)).astype("float32")
    q = create({"name": "pot", "bits": bits, "per_channel": per_channel, "pot_rounding": "mse"}, role="weights")
    w = build(q, x.shape)
    y = run(q, x, w)
    qn, qp = ref.grid(bits, signed=True, narrow=True)
    scale = ref.pot_mse_scale(x, qn, qp, channel_axis=-1 if per_channel else None)
    np.testing.assert_array_equal(y, ref.pot_forward(x, scale, qn, qp))
    np.testing.assert_array_equal(run(q, x, w, training=False), y)
    ceil = ref.pot_scale(np.abs(x).max(axis=(0, 1)) if per_channel else np.abs(x).max(), qp)
    assert np.all((scale == ceil) | (scale == ceil / 2))
    if bits == 2:   # ternary: the ceil step puts every |w| < max|w|/2 on 0
        assert np.all(scale == ceil / 2)
    (gx,) = grads(q, x, w, np.ones_like(x), [], training=False)   # straight through inside the chosen range
    np.testing.assert_array_equal(gx, (np.abs(x) <= qp * (scale if not per_channel else scale.reshape(1, 1, -1)))
                                  .astype("float32"))


def test_mse_rounding_is_for_weights_only():
    with pytest.raises(ConfigError, match="pot_rounding 'mse' .* needs range_tracking 'last_value' .* batch"):
        create({"name": "pot", "pot_rounding": "mse"}, role="activations")


def test_activation_ranges_are_tracked_like_minmax():
    q = create({"name": "pot", "bits": 4, "signed": False, "ema_decay": 0.5}, role="activations")
    assert isinstance(q, MinMaxQuantizer)
    w = build(q, None)
    a = np.abs(rng.randn(50)).astype("float32")
    run(q, a, w)
    run(q, 3 * a, w)
    assert w["max"].numpy() == pytest.approx(0.5 * a.max() + 0.5 * 3 * a.max(), rel=1e-6)
    y = run(q, a, w, training=False)
    scale = ref.pot_scale(w["max"].numpy(), 15)
    np.testing.assert_array_equal(y, ref.pot_forward(a, scale, 0, 15))


def test_gradient_is_straight_through_inside_the_range():
    x = np.array([-3.0, -0.2, 0.1, 2.5], "float32")
    q = create({"name": "pot", "bits": 3}, role="weights")
    w = build(q, x.shape)
    run(q, x, w)
    (gx,) = grads(q, np.array([-5.0, -0.2, 0.1, 5.0], "float32"), w, np.ones(4, "float32"), [], training=False)
    np.testing.assert_array_equal(gx, [0, 1, 1, 0])


@pytest.mark.parametrize("case", ["zeros", "constant", "huge", "nan"])
def test_edge_cases(case):
    x = rng.randn(20).astype("float32")
    if case == "zeros":
        x[:] = 0
    elif case == "constant":
        x[:] = 0.3
    elif case == "huge":
        x[0] = 1e30
    else:
        x[1] = np.nan
    q = create({"name": "pot", "bits": 8}, role="weights")
    w = build(q, x.shape)
    y = run(q, x, w)
    assert np.isfinite([w["min"].numpy(), w["max"].numpy()]).all()
    finite = np.isfinite(x)
    assert np.isfinite(y[finite]).all()
    if case == "zeros":
        np.testing.assert_array_equal(y, 0.0)
    else:
        scale = ref.pot_scale(np.abs(x[finite]).max(), 127)
        np.testing.assert_array_equal(y[finite], ref.pot_forward(x[finite], scale, 127, 127))


def test_config_is_forced():
    with pytest.raises(ConfigError, match="symmetric"):
        create({"name": "pot", "symmetric": False})
    with pytest.raises(ConfigError, match="scale_format"):
        create({"name": "pot", "scale_format": "float32"})
    with pytest.raises(ConfigError, match="pot_rounding.*ceil"):
        create({"name": "pot", "pot_rounding": "floor"})
