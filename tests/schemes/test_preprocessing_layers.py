"""Keras preprocessing layers inside a QAT model: an adapted Normalization keeps its statistics (its mean and
variance are constants that ``finalize_state`` computes from its weights) when it is copied into the QAT model,
saved, loaded and carried into another QAT model."""
import numpy as np
import pytest

import qresearch
from qresearch import keras, tf
from qresearch.schemes.transfer import copy_layer_weights

X = np.random.default_rng(0).uniform(0, 255, size=(128, 6)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)


def _normalized_model():
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(X)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(norm(inp))
    return keras.Model(inp, keras.layers.Dense(3)(h))


def _wrapped_norm(qat):
    return next(l for l in qat.layers if getattr(getattr(l, "layer", None), "name", None) == "norm").layer


@pytest.fixture(scope="module")
def models():
    m = _normalized_model()
    return m, qresearch.quantize(m, "tflite_int8", calibration_data=X)


def test_an_adapted_normalization_keeps_its_statistics_in_the_qat_model(models):
    m, q = models
    norm = m.get_layer("norm")
    assert np.abs(norm.mean.numpy()).min() > 50   # adapted: far from the 0 and 1 a fresh layer holds
    np.testing.assert_array_equal(_wrapped_norm(q).mean.numpy(), norm.mean.numpy())
    np.testing.assert_array_equal(_wrapped_norm(q).variance.numpy(), norm.variance.numpy())
    # 8 bits everywhere: the QAT model computes the float model's function up to rounding (without the statistics
    # its inputs reach the first Dense hundreds of times larger)
    y, yq = m(X).numpy(), q(X, training=False).numpy()
    assert np.abs(yq - y).mean() < 0.1 * np.abs(y).mean(), (np.abs(yq - y).mean(), np.abs(y).mean())


def test_the_statistics_survive_save_load_and_progressive_copy(models, tmp_path):
    m, q = models
    q.save(tmp_path / "qat")
    again = qresearch.load_model(str(tmp_path / "qat"))
    np.testing.assert_array_equal(_wrapped_norm(again).mean.numpy(), m.get_layer("norm").mean.numpy())
    np.testing.assert_array_equal(again(X, training=False).numpy(), q(X, training=False).numpy())

    lower = qresearch.quantize(_normalized_model(), "tflite_int8", calibration_data=X)
    _wrapped_norm(lower).adapt(X[:8] * 3)   # other statistics, as a model trained elsewhere would hold
    copy_layer_weights(q, lower)
    np.testing.assert_array_equal(_wrapped_norm(lower).mean.numpy(), m.get_layer("norm").mean.numpy())


# ---------------------------------------------------------------- two-op preprocessing (LayerSpec.split)
def _preprocessed(pre):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(pre(inp))
    return keras.Model(inp, keras.layers.Dense(3)(h))


def _wrapper(qat, name):
    return next(l for l in qat.layers if getattr(getattr(l, "layer", None), "name", None) == name)


def test_a_rescaling_with_an_offset_quantizes_the_tensor_between_its_mul_and_add():
    q = qresearch.quantize(_preprocessed(keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="pre")), "tflite_int8",
                           calibration_data=X)
    w = _wrapper(q, "pre")
    assert w.quantize_config.inner is not None
    probe = keras.Model(q.inputs, [w.input, w.output])
    x, y = (t.numpy() for t in probe(X, training=False))
    inner = w.quantize_config.inner(tf.constant(x * np.float32(1 / 127.5)), False, weights=w._inner_quantizer_vars)
    expected = w._output_quantizers[0](inner - 1.0, False, weights=w._output_quantizer_vars).numpy()
    np.testing.assert_array_equal(y, expected)
    # the inner grid was calibrated on x·scale: min-max over the calibration data, which holds 0
    lo, hi = (float(w._inner_quantizer_vars[k].numpy()) for k in ("min", "max"))
    assert lo == 0.0 and hi == pytest.approx(x.max() / 127.5, rel=1e-5), (lo, hi)


@pytest.mark.parametrize("pre, split", [
    (lambda: keras.layers.Rescaling(1 / 255, name="pre"), False),
    (lambda: keras.layers.Rescaling(1.0, offset=-0.5, name="pre"), False),
    (lambda: keras.layers.Normalization(mean=3.0, variance=4.0, name="pre"), True),
    (lambda: keras.layers.Normalization(mean=0.0, variance=4.0, name="pre"), False)],
    ids=["scale-only", "offset-only", "normalization", "mean-0"])
def test_only_a_two_op_layer_gets_an_inner_quantizer_and_only_where_its_output_is_quantized(pre, split):
    m = _preprocessed(lambda x: pre()(x))
    q = qresearch.quantize(m, "tflite_int8", calibration_data=X)
    assert (_wrapper(q, "pre").quantize_config.inner is not None) == split
    r = qresearch.quantize(m, "lsq", calibration_data=X)   # conv/dense inputs only: no quantized output there
    assert all(getattr(getattr(l, "quantize_config", None), "inner", None) is None for l in r.layers)
