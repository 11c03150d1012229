"""Each init rule against an independent numpy reference, per tensor and per channel."""
import numpy as np
import pytest

from . import reference as ref
from ..conftest import build, run
from qresearch._compat import tf
from qresearch.errors import ConfigError
from qresearch.quantizers import create
from qresearch.quantizers.init import INIT_RULES, rules

rng = np.random.RandomState(3)


def weights(shape=(3, 3, 4, 5), seed: int = 3):
    # heavy tails (Laplace) and a different scale per output channel: MSE clips well inside the max.
    # Its own generator: the same tensor whichever tests ran before in this worker (a shared one made the
    # data, and a channel's margin to the max, depend on the order xdist ran them in)
    return (np.random.RandomState(seed).laplace(size=shape) * np.linspace(0.1, 2.0, shape[-1])).astype("float32")


def test_the_known_rules_are_registered():
    assert set(INIT_RULES.names()) >= {"paper", "max", "percentile", "mse", "mse_no_shrink"}


def test_unknown_init_name_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"init must be one of .*'max'.*'mse'.*'paper'.*'percentile'.*got 'msee'"):
        create({"name": "lsq", "init": "msee"})


@pytest.mark.parametrize("per_channel", [False, True])
def test_max_is_the_largest_magnitude_over_qp(per_channel):
    w = weights()
    q = create({"name": "lsq", "bits": 4, "per_channel": per_channel, "init": "max"}, role="weights")
    v = build(q, w.shape)
    run(q, w, v)
    x = ref.rows(w, 3 if per_channel else None)
    np.testing.assert_allclose(v["step"].numpy().reshape(-1), np.abs(x).max(0) / 7, rtol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_percentile_is_numpys(per_channel):
    w = weights()
    q = create({"name": "pact", "bits": 4, "signed": True, "per_channel": per_channel, "init": "percentile",
                "init_percentile": 97.5}, role="weights")
    v = build(q, w.shape)
    run(q, w, v)
    x = ref.rows(w, 3 if per_channel else None)
    np.testing.assert_allclose(v["alpha"].numpy().reshape(-1), np.percentile(np.abs(x), 97.5, axis=0), rtol=1e-6)


def started_lsq_weights(rule, bits, per_channel):
    """An LSQ weight quantizer initialised by ``rule`` on ``weights()``: (quantizer, its variables, the tensor,
    its rows × channels, qn, qp)."""
    w = weights()
    q = create({"name": "lsq", "bits": bits, "per_channel": per_channel, "init": rule}, role="weights")
    v = build(q, w.shape)
    run(q, w, v)
    return q, v, w, ref.rows(w, 3 if per_channel else None), 2 ** (bits - 1), 2 ** (bits - 1) - 1


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_mse_picks_the_argmin_of_a_brute_force_search(bits, per_channel):
    q, v, w, x, qn, qp = started_lsq_weights("mse", bits, per_channel)
    errors, top = ref.mse_clip(x, qn, qp)
    chosen = v["step"].numpy().reshape(-1) * qp
    # the chosen clip is one of the candidates and its error is the least (float32 vs float64: ties aside)
    k = np.round(chosen / top * ref.K).astype(int)
    np.testing.assert_allclose(chosen, k / ref.K * top, rtol=1e-5)
    best = errors.min(0)
    np.testing.assert_allclose(ref.sym_error(x, chosen, qn, qp), best, rtol=1e-5)
    if bits <= 4:  # at low bit widths the optimum clips: the rule is not max
        assert np.all(chosen < top * 0.99)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_mse_no_shrink_is_the_least_error_clip_that_keeps_the_norm(bits, per_channel):
    q, v, w, x, qn, qp = started_lsq_weights("mse_no_shrink", bits, per_channel)
    expected, kept = ref.no_shrink_clip(x, qn, qp)
    np.testing.assert_allclose(v["step"].numpy().reshape(-1) * qp, expected, rtol=1e-5)
    # what the rule promises, on the quantizer's own output: where a clip keeps the norm, the tensor is not shrunk
    # along itself (elsewhere, mostly at 2 bits, the least shrinking clip is taken: the reference above)
    admissible = kept.any(0)
    assert admissible.any() or bits == 2
    xq = ref.rows(run(q, w, v), 3 if per_channel else None)
    assert np.all(((x * xq).sum(0) >= (x * x).sum(0) * (1 - 1e-6))[admissible])


@pytest.mark.parametrize("bits", [3, 4])
def test_the_mse_clip_shrinks_the_tensor_and_mse_no_shrink_does_not(bits):
    """Why the rule exists: at the MSE optimum the error is orthogonal to Q(x), so Σ x·Q(x) = Σ Q(x)² < Σ x²."""
    gains = {}
    for rule in ("mse", "mse_no_shrink"):
        q, v, w, x, qn, qp = started_lsq_weights(rule, bits, per_channel=True)
        xq = ref.rows(run(q, w, v), 3)
        gains[rule] = (x * xq).sum(0) / (x * x).sum(0)
    _, kept = ref.no_shrink_clip(x, 2 ** (bits - 1), qp)
    admissible = kept.any(0)
    assert np.all(gains["mse"] < 1.0) and admissible.sum() >= 3
    assert np.all(gains["mse_no_shrink"][admissible] >= 1.0 - 1e-6)
    assert np.all(gains["mse_no_shrink"] > gains["mse"])


def test_mse_no_shrink_without_an_admissible_clip_takes_the_least_shrinking():
    # at 2 bits (grid -2..1 · c) a clip above 0.754 rounds 0.377 to 0 (Σ x·Q = c < 1) and one below clips 1.0
    # (Σ x·Q = 1.377·c <= 1.033 at c = 0.75): none reaches Σ x² = 1.142; the most is at c = 0.75
    x = np.array([[1.0], [0.377]], np.float32)
    expected, kept = ref.no_shrink_clip(x.astype(np.float64), 2, 1)
    q = create({"name": "lsq", "bits": 2, "init": "mse_no_shrink"}, role="weights")
    v = build(q, x.shape)
    run(q, x, v)
    assert not kept.any()
    np.testing.assert_allclose([float(v["step"].numpy()), expected[0]], [0.75, 0.75], rtol=1e-5)


def test_mse_no_shrink_from_calibration_batches_equals_the_in_graph_rule():
    """Activations start from calibration statistics (eager); weights in the training graph: one answer."""
    x = np.abs(np.random.default_rng(4).standard_normal((512, 1))).astype(np.float32) ** 2
    expected, _ = ref.no_shrink_clip(np.maximum(x.astype(np.float64), 0), 1, 7)  # unsigned 3 bits: [0, 7]·s
    from qresearch.quantizers.init import collecting
    q = create({"name": "lsq", "bits": 3, "init": "mse_no_shrink"}, role="activations")
    v = build(q, None)
    with collecting() as c:
        q(tf.constant(x), True, v)
        assert c.apply() == 1
    np.testing.assert_allclose(float(v["step"].numpy()) * 7, expected[0], rtol=1e-5)


def test_mse_per_channel_differs_from_per_tensor():
    w = weights()
    w[..., 0] *= 0.01
    per_tensor = create({"name": "lsq", "bits": 3, "init": "mse"}, role="weights")
    per_channel = create({"name": "lsq", "bits": 3, "per_channel": True, "init": "mse"}, role="weights")
    vt, vc = build(per_tensor, w.shape), build(per_channel, w.shape)
    run(per_tensor, w, vt)
    run(per_channel, w, vc)
    assert vc["step"].numpy()[0] < 0.1 * float(vt["step"].numpy())


def test_unsigned_and_asymmetric_ranges():
    x = (rng.randn(64, 10) * 2 + 1).astype("float32")
    # unsigned (after ReLU-like data): the clip bounds the positive part; negative values are cut anyway
    pact = create({"name": "pact", "bits": 4, "init": "max"}, role="activations")
    v = build(pact, None)
    run(pact, x, v)
    np.testing.assert_allclose(v["alpha"].numpy(), x.max(), rtol=1e-6)
    # asymmetric (LSQ+): step (max - min)/(2^b - 1), offset at min (zero kept in the range)
    lsqp = create({"name": "lsq_plus", "bits": 4, "init": "max"}, role="activations")
    v = build(lsqp, None)
    run(lsqp, x, v)
    np.testing.assert_allclose(v["step"].numpy(), (x.max() - x.min()) / 15, rtol=1e-6)
    np.testing.assert_allclose(v["offset"].numpy(), x.min(), rtol=1e-6)
    # asymmetric MSE: the best of k/K·[min, max] by brute force
    lsqp = create({"name": "lsq_plus", "bits": 3, "init": "mse"}, role="activations")
    v = build(lsqp, None)
    run(lsqp, x, v)
    lo, hi = float(x.min()), float(x.max())
    flat = x.reshape(-1, 1).astype(np.float64)
    errors = [ref.asym_error(flat, k / ref.K * lo, k / ref.K * hi, 0, 7)[0] for k in range(1, ref.K + 1)]
    k = int(np.argmin(errors)) + 1
    np.testing.assert_allclose(v["step"].numpy(), k / ref.K * (hi - lo) / 7, rtol=1e-5)


def test_paper_rules_are_unchanged():
    w = weights()
    lsq = create({"name": "lsq", "bits": 4}, role="weights")
    v = build(lsq, w.shape)
    run(lsq, w, v)
    np.testing.assert_allclose(v["step"].numpy(), 2 * np.abs(w).mean() / np.sqrt(7), rtol=1e-6)
    pact = create({"name": "pact", "bits": 4}, role="activations")
    v = build(pact, None)
    run(pact, np.abs(w) * 100, v)
    assert float(v["alpha"].numpy()) == 6.0 and "initialized" not in v   # PACT's fixed start


def test_dorefa_activation_clip_from_the_data():
    x = np.abs(rng.randn(32, 8) * 3).astype("float32")
    q = create({"name": "dorefa", "bits": 2, "init": "max"}, role="activations")
    v = build(q, None)
    y = run(q, x, v)
    c = x.max()
    np.testing.assert_allclose(v["clip"].numpy(), c, rtol=1e-6)
    np.testing.assert_allclose(y, np.round(np.clip(x / c, 0, 1) * 3) / 3 * c, rtol=1e-5, atol=1e-6)
    assert "clip" not in build(create({"name": "dorefa", "bits": 2}, role="activations"), None)  # paper: fixed 1
    weights = create({"name": "dorefa", "bits": 2, "init": "mse"}, role="weights")  # nothing to set: ignored
    w = rng.randn(3, 4).astype("float32")
    np.testing.assert_array_equal(run(weights, w, build(weights, w.shape)),
                                  run(create({"name": "dorefa", "bits": 2}, role="weights"), w, build(weights, w.shape)))


def test_pot_range_from_the_rule():
    w = weights()
    q = create({"name": "pot", "bits": 4, "init": "percentile", "init_percentile": 90.0}, role="activations")
    v = build(q, None)
    run(q, w, v)  # first training batch: the rule sets the range, then EMA tracking continues from it
    c = np.percentile(np.abs(w), 90.0)
    assert float(v["seen"].numpy()) == 1.0
    assert float(v["max"].numpy()) < np.abs(w).max()
    np.testing.assert_allclose(v["max"].numpy(), 0.99 * c + 0.01 * w.max(), rtol=1e-5)


def test_init_fields_round_trip_through_the_config():
    q = create({"name": "lsq_plus", "bits": 3, "init": "percentile", "init_percentile": 99.0})
    assert q.get_config()["init"] == "percentile" and q.get_config()["init_percentile"] == 99.0
    assert create(q.to_spec()) == q
    with pytest.raises(ConfigError, match="init_percentile must be"):
        create({"name": "lsq", "init": "percentile", "init_percentile": 150})
    with pytest.raises(ConfigError, match="data_init: false keeps step_init"):
        create({"name": "lsq", "init": "mse", "data_init": False})


@pytest.mark.parametrize("spec, role", [({"name": "lsq", "bits": 3}, "activations"),
                                        ({"name": "lsq", "bits": 4, "per_channel": True}, "weights"),
                                        ({"name": "lsq_plus", "bits": 2}, "activations")])
def test_eager_mse_search_equals_the_per_candidate_graph_bit_for_bit(spec, role):
    """Calibration runs the MSE search eagerly through one traced function; its errors are those of
    ``quantization_error`` per candidate (as a graph traced for training computes them), to the bit."""
    q = create({**spec, "init": "mse"}, role=role)
    x = tf.constant((np.random.default_rng(1).standard_normal((777, 5)) * [0.1, 1, 3, 7, 0.01] + 0.3)
                    .astype(np.float32))
    lo, hi = tf.minimum(tf.reduce_min(x, 0), 0.0), tf.maximum(tf.reduce_max(x, 0), 0.0)
    if q.init_range == "symmetric":
        hi = tf.reduce_max(tf.abs(x), 0)
        lo = -hi
    elif q.init_range == "unsigned":
        lo = tf.zeros_like(hi)
    fractions = tf.range(1, rules.MSE_CANDIDATES + 1, dtype=tf.float32) / float(rules.MSE_CANDIDATES)
    per_candidate = np.stack([rules.quantization_error(q, x, f * lo, f * hi).numpy() for f in fractions])
    searched = rules.candidate_errors(q, x, fractions, lo, hi).numpy()
    assert np.array_equal(per_candidate.view(np.uint32), searched.view(np.uint32))
