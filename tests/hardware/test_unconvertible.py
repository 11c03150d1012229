"""What TF 2.21's converter cannot convert from a QAT model in 16x8 mode, and what it converts only in float
(hardware/unconvertible.py): each entry is converted for real, so a converter that learns the op (or quantizes it)
fails the test and the entry goes. The errors and the warnings before training name the layers and the fix, not the
converter's MLIR dump."""
from pathlib import Path

import numpy as np
import pytest

import qresearch
from qresearch import hardware as hw
from qresearch._compat import keras, tf

L = keras.layers


def _gelu(h):
    return L.Activation("gelu", name="gelu")(h)


def _conv_gelu(h):
    return L.Conv2D(8, 3, padding="same", activation="gelu", name="conv_gelu")(h)


def _normalization(h):
    n = L.Normalization(axis=-1, name="norm")
    n.adapt(np.random.default_rng(0).random((16,) + tuple(h.shape[1:]), dtype=np.float32))
    return n(h)


#: (refusal, layer name in the message, the layer applied to an 8-channel map)
CASES = [
    ("int16_concatenation", "concat", lambda h: L.Concatenate(name="concat")([h, L.Conv2D(4, 1)(h)])),
    ("int16_concatenation", "tf_concat", lambda h: tf.concat([h, L.Conv2D(4, 1)(h)], axis=-1, name="tf_concat")),
    ("int16_gelu", "gelu", _gelu),
    ("int16_gelu", "conv_gelu", _conv_gelu),
    ("int16_hard_swish", "hswish", lambda h: L.Activation(qresearch.hard_swish, name="hswish")(h)),
    # four layers the plan fuses into that activation (graph.fuse_hard_swish), under the last one's name
    ("int16_hard_swish", "hswish_div",
     lambda h: L.Rescaling(1 / 6, name="hswish_div")(L.Multiply()([h, L.ReLU(6.0)(h + 3.0)]))),
    ("int16_prelu", "prelu", lambda h: L.PReLU(shared_axes=[1, 2], name="prelu")(h)),
    ("int16_selu", "selu", lambda h: L.Activation("selu", name="selu")(h)),
    ("int16_constant_operand", "rescale", lambda h: L.Rescaling(0.5, name="rescale")(h)),
    ("int16_constant_operand", "norm", _normalization),
    ("int16_constant_operand", "avg", lambda h: L.Average(name="avg")([h, L.Conv2D(8, 1)(h)])),
    ("int16_constant_operand", "tf.math.subtract", lambda h: 1.0 - h),   # TF op layers, named by Keras
    ("int16_constant_operand", "tf.math.truediv", lambda h: 2.0 / L.Activation("sigmoid")(h)),
    ("int16_threshold", "thr", lambda h: L.ReLU(threshold=0.5, name="thr")(h)),
    ("int16_threshold", "thresholded", lambda h: L.ThresholdedReLU(theta=0.5, name="thresholded")(h)),
    # converts; LiteRT refuses it when the model is loaded (convert loads it to say so)
    ("int16_l2_normalization", "unit_norm", lambda h: L.UnitNormalization(name="unit_norm")(h)),
]


def _model(layer):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = layer(L.Conv2D(8, 3, padding="same", activation="relu")(inp))
    return keras.Model(inp, L.Dense(10)(L.Flatten()(h)))


X = np.random.default_rng(1).random((32, 8, 8, 1), dtype=np.float32)


@pytest.mark.parametrize("refusal, name, layer", CASES, ids=[c[1] for c in CASES])
def test_a_refused_layer_is_named_before_training_and_when_converting(refusal, name, layer, caplog, capfd,
                                                                     converter_log_dir):
    with caplog.at_level("WARNING", logger="qresearch.hardware.deploy"):
        q = qresearch.quantize(_model(layer), "tflite_int8", hardware="tflite_int16x8", adapt=True,
                               calibration_data=X)
    what = hw.REFUSALS.get(refusal).what
    assert "verify will fail" in caplog.text and f"'{name}" in caplog.text and what in caplog.text, caplog.text
    assert "not integer-only" not in caplog.text, caplog.text   # a refused layer is not also called float-kept
    with pytest.raises(qresearch.errors.ConfigError) as err:
        hw.convert(q, "tflite_int16x8")
    message = str(err.value)
    assert f"'{name}" in message and what in message and "Fix: deploy on tflite_int8" in message, message
    assert "loc(" not in message and isinstance(err.value.__cause__, Exception)
    if refusal != "int16_l2_normalization":   # a converter failure (not a model LiteRT refuses to load):
        # its MLIR dump went to the file the message names, not to the terminal before the message
        log = Path(message.split("converter's own log: ")[1].rsplit(".)", 1)[0])
        assert log.parent == converter_log_dir and "error:" in log.read_text()
        assert "loc(" not in capfd.readouterr().err


def test_the_refused_layers_convert_on_tflite_int8_as_the_fix_says(caplog):
    """One model holding every 16x8 refusal: int8 converts it and names no refusal; a model with none of them is
    not warned about on 16x8."""
    def every(h):
        for _, _, layer in CASES:
            h = L.Conv2D(8, 1)(layer(h))
        return h

    with caplog.at_level("WARNING", logger="qresearch.hardware.deploy"):
        q = qresearch.quantize(_model(every), "tflite_int8", hardware="tflite_int8", calibration_data=X)
        hw.convert(q, "tflite_int8")
        qresearch.quantize(_model(lambda h: L.Add()([h, L.Conv2D(8, 1)(h)])), "tflite_int8",
                           hardware="tflite_int16x8", adapt=True, calibration_data=X)
    assert "verify will fail" not in caplog.text, caplog.text


#: (FLOAT_KEPT entry, layer name in the message, the layer applied to an 8-channel map)
FLOAT_CASES = [
    ("hard_sigmoid", "hsig", lambda h: L.Activation("hard_sigmoid", name="hsig")(h)),
    ("hard_sigmoid", "conv_hsig", lambda h: L.Conv2D(8, 1, activation="hard_sigmoid", name="conv_hsig")(h)),
    ("elu", "elu_layer", lambda h: L.ELU(name="elu_layer")(h)),
    ("elu", "conv_elu", lambda h: L.Conv2D(8, 1, activation="elu", name="conv_elu")(h)),
    ("selu", "selu", lambda h: L.Activation("selu", name="selu")(h)),
    ("softplus", "softplus", lambda h: L.Activation("softplus", name="softplus")(h)),
    ("softsign", "softsign", lambda h: L.Activation("softsign", name="softsign")(h)),
    ("mish", "mish", lambda h: L.Activation("mish", name="mish")(h)),
    ("layer_normalization", "ln", lambda h: L.LayerNormalization(name="ln")(h)),
    ("multi_head_attention", "mha", lambda h: L.MultiHeadAttention(2, 4, name="mha")(*[L.Reshape((64, 8))(h)] * 2)),
    ("unit_normalization_axes", "unit_norm_hw", lambda h: L.UnitNormalization(axis=[1, 2], name="unit_norm_hw")(h)),
    ("clipped_relu", "relu2", lambda h: L.ReLU(max_value=2.0, name="relu2")(h)),
    ("clipped_relu", "leaky_clipped", lambda h: L.ReLU(max_value=6.0, negative_slope=0.1, name="leaky_clipped")(h)),
    ("thresholded_relu", "leaky_thr", lambda h: L.ReLU(negative_slope=0.1, threshold=0.2, name="leaky_thr")(h)),
]
_RUNTIME_CASES = [(target, *case) for target in ("tflite_int8", "tflite_int16x8") for case in FLOAT_CASES
                  if case[0] in hw.RUNTIMES.get(target).keeps_float]


@pytest.mark.parametrize("target, entry, name, layer", _RUNTIME_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in _RUNTIME_CASES])
def test_a_float_kept_layer_is_named_before_training_and_deploys_with_float_ops(target, entry, name, layer, caplog):
    with caplog.at_level("WARNING", logger="qresearch.hardware.deploy"):
        q = qresearch.quantize(_model(layer), "tflite_int8", hardware=target, adapt=True, calibration_data=X)
    what, fix = hw.FLOAT_KEPT.get(entry).what, hw.FLOAT_KEPT.get(entry).fix
    text = caplog.text
    assert "not integer-only" in text and f"'{name}" in text and what in text and fix in text, text
    assert "verify will fail" not in text, text
    r = hw.verify(q, target, X, np.zeros(len(X), dtype=np.int64))
    assert not r["integer_only"] and {"DEQUANTIZE", "QUANTIZE"} <= set(r["ops"]), r["ops"]


def test_the_hard_sigmoid_fix_deploys_integer_only_without_a_warning(caplog):
    """MobileNetV3's hard sigmoid, which the FLOAT_KEPT entry's fix names, converts to integer ops."""
    def hard_sigmoid(h):
        return L.ReLU(6.0)(L.Conv2D(8, 1)(h) + 3.0) * (1.0 / 6.0)

    with caplog.at_level("WARNING", logger="qresearch.hardware.deploy"):
        q = qresearch.quantize(_model(hard_sigmoid), "tflite_int8", hardware="tflite_int8", calibration_data=X)
    assert "integer-only" not in caplog.text, caplog.text
    r = hw.verify(q, "tflite_int8", X, np.zeros(len(X), dtype=np.int64))
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
