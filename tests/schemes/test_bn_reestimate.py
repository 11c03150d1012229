"""BN re-estimation after QAT (schemes/bn_reestimate.py) against numpy: the moving statistics become the
average of the batch statistics of the final quantized network; nothing else moves."""
import numpy as np
import pytest

import qresearch
from qresearch._compat import keras
from qresearch.schemes.bn_reestimate import batch_norm_layers, reestimate_batch_norm, reestimate_bn_statistics


def _model():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3)(inp)
    h = keras.layers.ReLU()(h)
    h = keras.layers.BatchNormalization(name="bn")(h)   # after a ReLU: kept (academic: no_fold)
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(h)))


@pytest.fixture(scope="module")
def qat_and_data():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((256, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 256)
    q = qresearch.quantize(_model(), "lsq", hardware="academic", adapt=True, calibration_data=x[:64])
    q.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x, y, epochs=1, batch_size=64, verbose=0)   # weights move: the moving statistics now lag
    return q, x


def test_moving_statistics_become_the_average_of_the_batch_statistics(qat_and_data):
    q, x = qat_and_data
    bn = q.get_layer("bn")
    before = {v.name: np.asarray(v) for v in q.weights if "moving" not in v.name}
    inputs = keras.Model(q.inputs, bn.input)   # the BN's input in the final quantized network (inference)
    batches = [np.asarray(inputs(x[s:s + 32], training=False)) for s in range(0, 128, 32)]
    means = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    # Keras' fused BN keeps the unbiased (n - 1) batch variance in its moving statistics
    variances = np.mean([b.reshape(-1, b.shape[-1]).var(axis=0, ddof=1) for b in batches], axis=0)
    assert not np.allclose(np.asarray(bn.moving_mean), means, atol=1e-3)  # the lag the re-estimation removes
    assert reestimate_batch_norm(q, x, batch_size=32, batches=4) == 1
    np.testing.assert_allclose(np.asarray(bn.moving_mean), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), variances, rtol=1e-4, atol=1e-6)
    # quantizer variables, weights and BN's own momentum are as they were
    assert all(np.array_equal(np.asarray(v), before[v.name]) for v in q.weights if "moving" not in v.name)
    assert bn.momentum == pytest.approx(0.99)


def test_nothing_to_do_without_batch_norm():
    inp = keras.Input((4,))
    q = qresearch.quantize(keras.Model(inp, keras.layers.Dense(2)(inp)), "minmax_nbit",
                           calibration_data=np.ones((8, 4), "float32"))
    assert batch_norm_layers(q) == [] and reestimate_batch_norm(q, np.ones((8, 4), "float32")) == 0


def test_the_public_call_takes_the_batches_from_the_model_s_scheme(qat_and_data):
    # academic keeps BN (no_fold) and lsq re-estimates over 50 batches: all 8 of 32 here; batches=1 uses the first
    q, x = qat_and_data
    bn = q.get_layer("bn")
    inputs = keras.Model(q.inputs, bn.input)
    batches = [np.asarray(inputs(x[s:s + 32], training=False)) for s in range(0, 256, 32)]
    assert qresearch.reestimate_bn_statistics is reestimate_bn_statistics
    assert reestimate_bn_statistics(q, x, batch_size=32) == 1
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.mean([b.mean(axis=(0, 1, 2)) for b in batches], 0),
                               rtol=1e-5, atol=1e-6)
    assert reestimate_bn_statistics(q, x, batches=1, batch_size=32) == 1
    np.testing.assert_allclose(np.asarray(bn.moving_mean), batches[0].mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)


def test_the_public_call_does_nothing_where_the_scheme_folds_and_names_the_fix_elsewhere():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).random((64, 8, 8, 1)).astype("float32")
    no_fold = qresearch.quantize(_model(), dict(qresearch.schemes.get("lsq").to_dict(), bn_folding="no_fold"),
                                 calibration_data=x)
    assert reestimate_bn_statistics(no_fold, x) == 1   # BN stays: the preset's 50 batches re-estimate it
    fold = qresearch.quantize(_model(), "lsq", calibration_data=x)   # as shipped
    assert fold.qresearch_info["scheme"]["bn_reestimation_batches"] == 50
    assert reestimate_bn_statistics(fold, x) == 0     # fold: the scheme's 50 batches do not act
    with pytest.raises(ValueError, match="not made by qresearch.quantize.*pass batches=N"):
        reestimate_bn_statistics(_model(), x)
    with pytest.raises(ValueError, match="batches must be an integer >= 0"):
        reestimate_bn_statistics(fold, x, batches=-2)


def test_the_learned_presets_keep_bn_below_4_bits_and_re_estimate_it():
    # lsq's low_bits rule (conf/scheme/lsq.yaml): a BN after a conv folds at 4 bits, stays (and is re-estimated over
    # the preset's 50 batches) at 2 and 3
    from qresearch.config import with_bits

    inp = keras.Input((8, 8, 1))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(keras.layers.ReLU()(h))))
    x = np.random.default_rng(2).random((64, 8, 8, 1)).astype("float32")
    for bits, kept in ((2, 1), (3, 1), (4, 0)):
        q = qresearch.quantize(model, with_bits(qresearch.schemes.get("lsq").to_dict(), bits), calibration_data=x)
        assert len(batch_norm_layers(q)) == kept and reestimate_bn_statistics(q, x, batch_size=32) == kept, bits
        assert q.qresearch_info["scheme"]["bn_folding"] == ("fold" if bits == 4 else "no_fold"), bits
