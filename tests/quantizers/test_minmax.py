"""minmax: ranges observed from data, forward = TF FakeQuant (nudged zero point)."""
import numpy as np
import pytest

from . import reference as ref
from .conftest import BITS, build, grads, run
from qresearch._compat import keras, tf
from qresearch.errors import ConfigError
from qresearch.quantizers import create
from qresearch.quantizers.init import collecting

rng = np.random.RandomState(0)


@pytest.mark.parametrize("narrow", [False, True])
def test_8bit_equals_tf_fake_quant_and_numpy_nudging(narrow):
    x = (rng.randn(64, 9) * 3 + 0.7).astype("float32")
    q = create({"name": "minmax", "bits": 8, "narrow_range": narrow, "range_tracking": "last_value"})
    w = build(q, None)
    y = run(q, x, w)
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    tf_y = tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=narrow).numpy()
    np.testing.assert_array_equal(y, tf_y)
    np.testing.assert_array_equal(y, ref.fake_quant(x, lo, hi, 8, narrow))
    # Inference reads the stored range and gives the same numbers.
    np.testing.assert_array_equal(run(q, x, w, training=False), y)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_per_tensor_matches_numpy(bits, symmetric):
    x = (rng.randn(32, 5) * 2 + 0.3).astype("float32")
    q = create({"name": "minmax", "bits": bits, "symmetric": symmetric, "narrow_range": symmetric,
                "range_tracking": "last_value"})
    y = run(q, x, build(q, None))
    if symmetric:
        qn, qp = ref.grid(bits, True, narrow=True)
        m = np.float32(np.abs(x).max())
        s = m * np.float32(1 / qp)  # the scale is formed by a multiplication (ops.reciprocal)
        lo, hi = -qn * s, qp * s
    else:
        lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    np.testing.assert_array_equal(y, ref.fake_quant(x, lo, hi, bits, symmetric))


@pytest.mark.parametrize("bits", BITS)
def test_per_channel_matches_numpy(bits):
    x = (rng.randn(3, 3, 4, 6) * np.linspace(0.1, 3, 6)).astype("float32")
    q = create({"name": "minmax", "bits": bits, "per_channel": True}, role="weights")
    layer = keras.layers.Conv2D(6, 3)
    layer.build((None, 8, 8, 4))
    w = build(q, x.shape, layer)
    assert w["min"].shape == (6,)
    y = run(q, x, w)
    qn, qp = ref.grid(bits, True, narrow=True)
    m = np.abs(x).max(axis=(0, 1, 2)).astype("float32")
    s = m * np.float32(1 / qp)
    np.testing.assert_array_equal(y, ref.fake_quant_per_channel(x, -qn * s, qp * s, bits, True))


def test_ema_tracking():
    q = create({"name": "minmax", "ema_decay": 0.9})
    w = build(q, None)
    a = np.array([-1.0, 2.0], "float32")
    b = np.array([-3.0, 4.0], "float32")
    run(q, a, w)
    assert (w["min"].numpy(), w["max"].numpy()) == (-1.0, 2.0)  # first batch sets the range
    run(q, b, w)
    np.testing.assert_allclose([w["min"].numpy(), w["max"].numpy()], [-1.2, 2.2], rtol=1e-6)
    run(q, b, w, training=False)  # inference does not move the range
    np.testing.assert_allclose([w["min"].numpy(), w["max"].numpy()], [-1.2, 2.2], rtol=1e-6)


def test_a_step_traced_after_the_first_batch_tracks_the_same_range_without_the_flag():
    """A graph traced once ``seen`` is set leaves out the first-batch test and the flag's write, and moves
    the range to the same bits as a graph traced before it."""
    q = create({"name": "minmax", "ema_decay": 0.9})
    w = build(q, None)
    a, b = np.array([-1.0, 2.0], "float32"), np.array([-3.1, 4.7], "float32")
    before = tf.function(lambda x: q(x, True, w), autograph=False)
    before(a)                                    # traced with seen = 0: the first batch sets the range
    assert (w["min"].numpy(), w["max"].numpy()) == (-1.0, 2.0)
    after = tf.function(lambda x: q(x, True, w), autograph=False)

    def count(fn, op_type):
        graph = fn.get_concrete_function(tf.TensorSpec([2])).graph
        return len([op for op in graph.get_operations() if op.type == op_type])

    assert (count(before, "AssignVariableOp"), count(after, "AssignVariableOp")) == (3, 2)  # seen, min, max
    assert count(after, "Equal") == count(before, "Equal") - 1                             # seen == 0
    start = [v.numpy() for v in (w["min"], w["max"])]
    after(b)
    got = [v.numpy() for v in (w["min"], w["max"])]
    w["min"].assign(start[0]), w["max"].assign(start[1])
    before(b)
    np.testing.assert_array_equal([v.numpy().view("uint32") for v in (w["min"], w["max"])],
                                  [v.view("uint32") for v in got])
    assert got[0] != -1.0 and w["seen"].numpy() == 1.0


def test_gradient_is_straight_through_inside_the_nudged_range():
    x = (rng.randn(200) * 2).astype("float32")
    q = create({"name": "minmax", "bits": 4, "range_tracking": "last_value"})
    w = build(q, None)
    run(q, x * 0.5, w)  # range from a narrower batch, so some of x is clipped
    q2 = create({"name": "minmax", "bits": 4, "range_tracking": "last_value"})
    r = rng.randn(200).astype("float32")
    (gx,) = grads(q2, x, build(q2, None), r, [])
    np.testing.assert_array_equal(gx, r * ref.fake_quant_ste_mask(x, min(x.min(), 0), max(x.max(), 0), 4, False))
    (gx,) = grads(q, x, w, r, [], training=False)
    lo, hi = w["min"].numpy(), w["max"].numpy()
    np.testing.assert_array_equal(gx, r * ref.fake_quant_ste_mask(x, lo, hi, 4, False))
    assert (gx == 0).any()


@pytest.mark.parametrize("case", ["zeros", "constant", "huge", "nan"])
def test_edge_cases(case):
    x = rng.randn(40).astype("float32")
    if case == "zeros":
        x[:] = 0
    elif case == "constant":
        x[:] = 2.5
    elif case == "huge":
        x[3] = 1e30
    else:
        x[[1, 7]] = np.nan
        x[5] = np.inf
    q = create({"name": "minmax", "bits": 8, "range_tracking": "last_value"})
    w = build(q, None)
    y = run(q, x, w)
    lo, hi = w["min"].numpy(), w["max"].numpy()
    assert np.isfinite([lo, hi]).all()
    finite = np.isfinite(x)
    assert np.isfinite(y[finite]).all()
    if case == "zeros":
        np.testing.assert_array_equal(y, 0.0)
    elif case == "constant":
        assert (lo, hi) == (2.5, 2.5)
        np.testing.assert_allclose(y, 2.5, rtol=1e-6)
    elif case == "nan":
        assert (lo, hi) == (x[finite].min(), x[finite].max())
        np.testing.assert_array_equal(y[finite], ref.fake_quant(x, min(lo, 0), max(hi, 0), 8, False)[finite])


def test_mse_range_rule_closed_form():
    """2-bit narrow grid {-s, 0, s} over ten 0.3s and one 1.0: 10(f - 0.3)² + (1 - f)² is least at f = 4/11; of the
    candidates k/20, 0.35 (0.4475) beats 0.4 (0.46) and 1.0 (0.9, every 0.3 on 0)."""
    x = np.array([1.0] + [0.3] * 10, "float32")
    q = create({"name": "minmax", "bits": 2, "range_rule": "mse"}, role="weights")
    w = build(q, x.shape)
    np.testing.assert_allclose(run(q, x, w), np.full(11, 0.35, "float32"), rtol=1e-6)
    np.testing.assert_allclose(run(q, x, w, training=False), np.full(11, 0.35, "float32"), rtol=1e-6)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_mse_range_rule_picks_the_fraction_with_the_least_error(bits, per_channel):
    """``range_rule: mse``: the FakeQuant range is ``f·`` the max range, with f the candidate whose grid has the least
    squared error on the weights (numpy reference, per channel); the gradient is straight through inside it."""
    x = (rng.randn(3, 3, 8, 6) * np.linspace(0.1, 3, 6)).astype("float32")
    x[0, 0, 0] = 6 * np.linspace(0.1, 3, 6)   # an outlier per channel: the max range puts most weights on 0
    q = create({"name": "minmax", "bits": bits, "per_channel": per_channel, "range_rule": "mse"}, role="weights")
    layer = keras.layers.Conv2D(6, 3)
    layer.build((None, 8, 8, 8))
    w = build(q, x.shape, layer)
    y = run(q, x, w)
    axes = [3] if per_channel else None
    lo, hi = (t.numpy() for t in q.range_of(tf.constant(x), w["min"], w["max"], axes))
    qn, qp = ref.grid(bits, True, narrow=True)
    top = np.abs(x).max(axis=(0, 1, 2)) if per_channel else np.abs(x).max()
    fractions = np.atleast_1d(hi / top)
    channels = [x[..., c] for c in range(6)] if per_channel else [x]
    for f, xc, m in zip(fractions, channels, np.atleast_1d(top)):
        errors = ref.mse_fraction_errors(xc, -m, m, bits, True, 20)
        chosen = errors[20 - int(round(f * 20))]
        assert chosen <= errors.min() * (1 + 1e-5), (f, errors)
    if bits <= 3:
        assert np.all(fractions < 1)   # clipping the outlier pays at 2-3 bits
    expected = (ref.fake_quant_per_channel(x, lo, hi, bits, True) if per_channel
                else ref.fake_quant(x, lo, hi, bits, True))
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(run(q, x, w, training=False), y)
    (gx,) = grads(q, x, w, np.ones_like(x), [], training=False)
    if per_channel:
        inside = np.stack([ref.fake_quant_ste_mask(x[..., c], lo[c], hi[c], bits, True) for c in range(6)], -1)
    else:
        inside = ref.fake_quant_ste_mask(x, lo, hi, bits, True)
    np.testing.assert_array_equal(gx, inside)
    assert (gx == 0).any() == (fractions < 1).any()


def test_mse_range_rule_needs_float_scales():
    with pytest.raises(ConfigError, match="range_rule 'mse' .* not powers of two.* pot_rounding: mse"):
        create({"name": "minmax", "range_rule": "mse", "scale_format": "pot"}, role="weights")
    with pytest.raises(ConfigError, match="range_rule"):
        create({"name": "minmax", "range_rule": "percentile"}, role="weights")


def test_mse_activation_range_averages_each_batch_least_error_range():
    """With ``ema`` (activations) the tracked range is the moving average of f·(batch min, batch max), f searched on
    the batch every ``range_search_every`` steps (numpy reference): the fraction cuts each batch's range, never the
    average, so it does not compound; run on one batch, the range settles at that batch's least-error range."""
    outlier = np.concatenate([[6.0], np.linspace(-0.5, 1.0, 200)]).astype("float32")   # 2 bits: f = 0.45
    spread = np.linspace(-1.0, 3.0, 201).astype("float32")   # f = 0.8
    d, bits = 0.9, 2
    q = create({"name": "minmax", "bits": bits, "range_rule": "mse", "range_search_every": 2, "ema_decay": d},
               role="activations")
    assert (q.range_tracking, q.symmetric) == ("ema", False)
    w = build(q, None)

    def least_error(x):
        lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
        return ref.mse_fraction(x, lo, hi, bits, False)

    f_out, f_spread = least_error(outlier), least_error(spread)
    assert f_out < 0.5 and f_spread > f_out   # the outlier is cut; the spread batch keeps more of its range
    lo, hi = f_out * outlier.min(), f_out * outlier.max()        # first batch: its range, no average yet
    expected = [(lo, hi)]
    for x, f in ((spread, f_out), (spread, f_spread), (spread, f_spread)):   # searched on calls 1 and 3
        lo, hi = d * lo + (1 - d) * f * x.min(), d * hi + (1 - d) * f * x.max()
        expected.append((lo, hi))
    got = []
    for x in (outlier, spread, spread, spread):
        y = run(q, x, w)
        got.append((float(w["min"].numpy()), float(w["max"].numpy())))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_array_equal(y, ref.fake_quant(spread, min(got[-1][0], 0), max(got[-1][1], 0), bits, False))
    for _ in range(80):
        run(q, spread, w)
    np.testing.assert_allclose(w["max"].numpy(), f_spread * spread.max(), rtol=1e-3)


def test_mse_activation_range_keeps_an_mse_start():
    """An ``init: mse`` start (calibration) is the range training averages from: with ``range_rule: mse`` the batches
    of the same data keep it near that start, where the max rule pulls it back to the max range (by 0.9^60 of the
    way here; the benchmark's 158 steps at decay 0.99 went 80% of the way)."""
    x = np.concatenate([rng.exponential(0.3, 2000), [8.0]]).astype("float32")   # a heavy tail, one far outlier
    ranges = {}
    for rule in ("max", "mse"):
        q = create({"name": "minmax", "bits": 2, "init": "mse", "range_rule": rule, "ema_decay": 0.9},
                   role="activations")
        w = build(q, None)
        with collecting() as calibration:
            run(q, x, w)
        calibration.apply()
        start = float(w["max"].numpy())
        for _ in range(60):
            run(q, x, w)
        ranges[rule] = (start, float(w["max"].numpy()))
    start = ranges["mse"][0]
    assert start < 0.5 * x.max()
    assert ranges["max"][1] == pytest.approx(x.max(), rel=1e-2)
    # the calibration's search (init: mse, over the accumulated sample) and the batches' pick nearby fractions
    assert ranges["mse"][1] == pytest.approx(start, rel=0.25)


def test_mse_fraction_is_searched_every_range_search_every_steps():
    """Between searches the range is the kept fraction times each step's max|x|; the search runs on the first call
    and every ``range_search_every`` calls after it."""
    outlier = np.array([1.0] + [0.3] * 10, "float32")   # 2 bits: f = 0.35 (test_mse_range_rule_closed_form)
    spread = np.linspace(-2.0, 2.0, 11).astype("float32")   # evenly spread: f = 0.7 at 2 bits
    q = create({"name": "minmax", "bits": 2, "range_rule": "mse", "range_search_every": 3}, role="weights")
    w = build(q, outlier.shape)

    def top(x):
        run(q, x, w)
        return float(w["max"].numpy()), float(w["fraction"].numpy())

    assert top(outlier) == pytest.approx((0.35, 0.35))
    assert top(spread) == pytest.approx((0.35 * 2.0, 0.35))   # kept: 0.35 · max|x|
    assert top(spread) == pytest.approx((0.35 * 2.0, 0.35))
    searched = top(spread)
    assert searched[1] == pytest.approx(ref.mse_fraction(spread, -2.0, 2.0, 2, True))
    assert searched[1] != pytest.approx(0.35)
    assert searched[0] == pytest.approx(2.0 * searched[1])
    with pytest.raises(ConfigError, match="range_search_every"):
        create({"name": "minmax", "range_rule": "mse", "range_search_every": 2.5}, role="weights")
