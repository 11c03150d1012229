"""Calibration statistics cover every batch; variables are set once, after the last batch."""
import numpy as np
import pytest

from ..conftest import build, run
from qresearch._compat import tf
from qresearch.errors import QResearchError
from qresearch.quantizers import create
from qresearch.quantizers.init import collecting

rng = np.random.RandomState(5)


def batches(n=4, size=(16, 8)):
    xs = [np.abs(rng.randn(*size)).astype("float32") for _ in range(n)]
    xs[-1][3, 2] = 40.0  # the largest value only in the last batch
    return xs


def collect(q, xs):
    v = build(q, None)
    with collecting() as c:
        outs = [run(q, x, v) for x in xs]
    assert float(v[q.init_flag].numpy()) == 0.0  # nothing set before the end
    c.apply()
    return v, outs


def test_max_and_percentile_use_every_batch():
    xs = batches()
    v, outs = collect(create({"name": "lsq", "bits": 4, "init": "max"}, role="activations"), xs)
    np.testing.assert_allclose(v["step"].numpy(), 40.0 / 15, rtol=1e-6)
    for x, y in zip(xs, outs):  # statistics of the float activations: batches pass through unquantized
        np.testing.assert_array_equal(x, y)
    q = create({"name": "pact", "bits": 4, "init": "percentile", "init_percentile": 99.9}, role="activations")
    v, _ = collect(q, xs)
    np.testing.assert_allclose(v["alpha"].numpy(), np.percentile(np.concatenate(xs), 99.9), rtol=1e-6)
    assert float(v["initialized"].numpy()) == 1.0


def test_paper_rule_over_every_batch():
    xs = batches()
    v, _ = collect(create({"name": "lsq", "bits": 4}, role="activations"), xs)
    np.testing.assert_allclose(v["step"].numpy(), 2 * np.concatenate(xs).mean() / np.sqrt(15), rtol=1e-5)


def test_mse_over_every_batch_equals_mse_on_all_the_data():
    xs = batches(3)
    v, _ = collect(create({"name": "lsq", "bits": 3, "init": "mse"}, role="activations"), xs)
    q = create({"name": "lsq", "bits": 3, "init": "mse"}, role="activations")
    w = build(q, None)
    run(q, np.concatenate(xs), w)  # one batch holding all the data, initialised in the graph
    np.testing.assert_allclose(v["step"].numpy(), w["step"].numpy(), rtol=1e-6)


def test_memory_is_bounded_and_exact_statistics_stay_exact():
    from qresearch.quantizers.init.stats import Accumulator

    acc = Accumulator(max_values=1000)
    xs = [rng.randn(700, 1) for _ in range(5)]
    xs[4][0] = 100.0
    for x in xs:
        acc.update(x)
    stats = acc.stats()
    assert stats.sample.shape == (1000, 1)
    assert float(stats.max_abs[0]) == 100.0
    np.testing.assert_allclose(float(stats.mean_abs[0]), np.abs(np.concatenate(xs)).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(stats.std[0]), np.concatenate(xs).std(), rtol=1e-5)


def test_weights_initialise_from_their_tensor_not_from_batches():
    w = rng.randn(3, 3, 2, 4).astype("float32")
    q = create({"name": "lsq", "bits": 4, "per_channel": True, "init": "max"}, role="weights")
    v = build(q, w.shape)
    with collecting() as c:
        run(q, w, v)
    assert c.apply() == 0
    np.testing.assert_allclose(v["step"].numpy(), np.abs(w).max((0, 1, 2)) / 7, rtol=1e-6)


def test_collecting_inside_a_tf_function_is_refused():
    q = create({"name": "lsq", "bits": 4, "init": "max"}, role="activations")
    v = build(q, None)
    with collecting():
        with pytest.raises(QResearchError, match="eagerly"):
            tf.function(lambda t: q(t, True, v))(tf.ones((2, 3)))
