"""Calibration: a freshly quantized model predicts like the float model before any training step."""
import re

import numpy as np
import pytest

import qresearch
from qresearch import keras, tfmot

from . import models as M

L = keras.layers


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    inp = keras.Input(M.SHAPE)
    x = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = L.BatchNormalization(momentum=0.5, name="bn")(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    out = L.Dense(M.CLASSES, name="logits")(x)
    model = M.compile_model(keras.Model(inp, out), lr=5e-3)
    x_train, y_train = M.data(256, seed=1)
    model.fit(x_train, y_train, batch_size=32, epochs=6, verbose=0)
    x_test, y_test = M.data(128, seed=2)
    acc = _accuracy(model, x_test, y_test)
    assert acc > 0.8, f"float model did not learn the toy task ({acc})"
    return model, x_train, x_test, y_test, acc


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model(x, training=False).numpy(), -1) == y))


@pytest.mark.parametrize("scheme", ["tflite_int8", {"weights": {"quantizer": "lsq", "bits": 8, "per_channel": True},
                                                    "activations": {"quantizer": "pact", "bits": 8}}])
def test_calibrated_model_is_accurate_before_training(trained, scheme):
    model, x_train, x_test, y_test, float_acc = trained
    q = qresearch.quantize(model, scheme, calibration_data=x_train[:64])
    assert _accuracy(q, x_test, y_test) >= float_acc - 0.1


def test_tfmot_model_is_at_chance_before_training(trained):
    """The behaviour calibration fixes: tfmot's fresh QAT model starts from placeholder ranges."""
    model, _, x_test, y_test, float_acc = trained
    tq = tfmot.quantization.keras.quantize_model(model)
    assert _accuracy(tq, x_test, y_test) < float_acc - 0.3


def test_calibration_updates_ranges_not_weights(trained):
    model, x_train, *_ = trained
    scheme = {"weights": {"quantizer": "lsq", "bits": 4}, "activations": {"quantizer": "lsq", "bits": 4},
              "bn_folding": "no_fold"}
    q0 = qresearch.quantize(model, scheme)
    q1 = qresearch.quantize(model, scheme, calibration_data=(x_train[:64], None))
    for a, b in zip(q0.weights, q1.weights):
        name = a.name.split("/")[-1]
        if name.startswith(("kernel:", "bias:", "gamma", "beta", "moving_")):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)  # weights and BN statistics
    steps0 = [v.numpy() for v in q0.weights if "kernel_step:" in v.name]
    steps1 = [v.numpy() for v in q1.weights if "kernel_step:" in v.name]
    assert steps0 and any(not np.array_equal(s0, s1) for s0, s1 in zip(steps0, steps1))
    np.testing.assert_array_equal(q1.get_layer("bn").moving_mean.numpy(), model.get_layer("bn").moving_mean.numpy())


def test_calibration_accepts_datasets_and_batches(trained):
    model, x_train, x_test, y_test, float_acc = trained
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x_train[:64], np.zeros(64))).batch(16)
    q = qresearch.quantize(model, "tflite_int8", calibration_data=ds)
    assert _accuracy(q, x_test, y_test) >= float_acc - 0.1
    q = qresearch.quantize(model, "tflite_int8", calibration_data=[x_train[:16], x_train[16:32]])
    assert _accuracy(q, x_test, y_test) >= float_acc - 0.1


def test_calibration_data_of_another_shape_names_both_shapes_and_the_fix(trained):
    model, x_train, *_ = trained
    wrong = np.zeros((16, 5, 5, 2), np.float32)
    shape = "(" + ", ".join(str(d) for d in M.SHAPE) + ")"
    with pytest.raises(qresearch.ConfigError, match=rf"samples of shape \(5, 5, 2\), but the model takes "
                                                     rf"{re.escape(shape)}\. Fix: pass samples shaped"):
        qresearch.quantize(model, "tflite_int8", calibration_data=wrong)


def test_model_inputs_start_from_the_data_with_pact(trained):
    """PACT starts at α = 6; on a model input that would clip unnormalised data, so the input quantizer
    takes α from the calibration batch instead (the layers' own PACT quantizers keep the paper's start)."""
    model, x_train, *_ = trained
    raw = x_train * 200.0  # inputs on a [0, 200]-ish scale
    q = qresearch.quantize(model, {"weights": {"quantizer": "lsq", "bits": 8},
                                   "activations": {"quantizer": "pact", "bits": 8}}, calibration_data=raw[:64])
    inputs = [layer for layer in q.layers if isinstance(layer, qresearch.schemes.QuantizeInput)]
    assert len(inputs) == 1 and inputs[0].quantizer.data_init
    alpha = [v for v in inputs[0].weights if v.name.endswith("alpha:0")][0]
    assert np.isclose(float(alpha.numpy()), float(np.abs(raw[:64]).max()), rtol=1e-6)
    others = [l for l in q.layers if isinstance(l, qresearch.schemes.QuantizeWrapper) and l._output_quantizers]
    assert others and not any(l._output_quantizers[0].data_init for l in others)


def test_calibration_statistics_cover_every_batch(trained):
    """A value that appears only in the last calibration batch sets the input's max and percentile."""
    model, x_train, *_ = trained
    calib = x_train[:64].copy()
    calib[-1, 0, 0, 0] = 50.0   # the last of 2 batches of 32
    scheme = {"weights": {"quantizer": "lsq", "bits": 8}, "activations": {"quantizer": "lsq", "bits": 8, "init": "max"}}

    def input_step(q):
        layer, = [l for l in q.layers if isinstance(l, qresearch.schemes.QuantizeInput)]
        return layer.quantizer_vars["step"].numpy()

    q = qresearch.quantize(model, scheme, calibration_data=calib)
    np.testing.assert_allclose(input_step(q), 50.0 / 127, rtol=1e-6)  # signed input grid, Qp = 127
    scheme["activations"].update(init="percentile", init_percentile=99.9)
    q = qresearch.quantize(model, scheme, calibration_data=calib)
    np.testing.assert_allclose(input_step(q), np.percentile(np.abs(calib), 99.9) / 127, rtol=1e-5)


@pytest.mark.parametrize("init", ["max", "percentile", "mse"])
def test_every_learned_parameter_starts_from_the_data(trained, init):
    model, x_train, x_test, y_test, float_acc = trained
    scheme = {"weights": {"quantizer": "lsq", "bits": 8, "per_channel": True, "init": init},
              "activations": {"quantizer": "pact", "bits": 8, "init": init}}
    q = qresearch.quantize(model, scheme, calibration_data=x_train[:64])
    alphas = [v for v in q.weights if v.name.endswith("_alpha:0")]
    assert alphas and all(float(np.max(a.numpy())) != 6.0 for a in alphas)
    assert all(float(v.numpy()) == 1.0 for v in q.weights if v.name.endswith("_initialized:0"))
    assert _accuracy(q, x_test, y_test) >= float_acc - 0.1


def test_save_and_load_with_init_and_training_fields(trained, tmp_path):
    model, x_train, x_test, *_ = trained
    scheme = {"weights": {"quantizer": "lsq", "bits": 4, "per_channel": True, "init": "mse"},
              "activations": {"quantizer": "lsq_plus", "bits": 4, "init": "percentile", "init_percentile": 99.0},
              "quantizer_lr_multiplier": 5.0, "freeze_quantizer_steps": 10}
    q = qresearch.quantize(model, scheme, calibration_data=x_train[:64])
    assert q.qresearch_info["scheme"]["quantizer_lr_multiplier"] == 5.0
    path = str(tmp_path / "qat")
    q.save(path)
    loaded = qresearch.load_model(path)
    wrappers = [l for l in loaded.layers if isinstance(l, qresearch.schemes.QuantizeWrapper)]
    quantizers = [qz for l in wrappers for _, qz, _ in l._weight_vars]
    assert quantizers and all(qz.init == "mse" for qz in quantizers)
    outputs = [l._output_quantizers[0] for l in wrappers if l._output_quantizers]
    assert outputs and all((o.init, o.init_percentile) == ("percentile", 99.0) for o in outputs)
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), q.predict(x_test, verbose=0))
