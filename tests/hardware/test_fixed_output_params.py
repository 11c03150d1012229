"""16x8 LOGISTIC: the converter stores its int16 output at (1/65536, -32768), LiteRT's kernel computes on (1/32768, 0)
and refuses any other (fixed_output_params.py)."""
import numpy as np
import pytest

import qresearch
from qresearch import hardware as hw
from qresearch._compat import keras, tf
from qresearch.hardware.deploy import _converter, run_tflite
from qresearch.hardware.fixed_output_params import pin_fixed_outputs

from deploy_models import SCHEMES, train

INT16X8 = dict(SCHEMES["minmax"], activations={"quantizer": "minmax", "bits": 16, "symmetric": True})


def _logistic_outputs(flatbuffer):
    """(type, scale, zero point) of every LOGISTIC output, read from the flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    graph = model.subgraphs[0]
    return [(t.type, float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0]))
            for t in (graph.tensors[op.outputs[0]] for op in graph.operators
                      if codes[op.opcodeIndex] == schema.BuiltinOperator.LOGISTIC)]


def _sigmoid_cnn():
    """A sigmoid layer and a swish (LOGISTIC, MUL: lowered_activations.py) as a conv's activation."""
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", activation="swish")(inp)
    h = L.Conv2D(8, 3, padding="same")(h)
    h = L.Activation("sigmoid")(h)
    return keras.Model(inp, L.Dense(10)(L.Flatten()(h)))


@pytest.fixture(scope="module")
def qat16(data):
    xtr, ytr, _, _ = data
    keras.utils.set_random_seed(0)
    m = train(_sigmoid_cnn(), xtr, ytr, epochs=3)
    q = qresearch.quantize(m, INT16X8, hardware="tflite_int16x8", adapt=True, calibration_data=xtr[:256])
    return train(q, xtr, ytr, epochs=1, lr=1e-3)


def test_16x8_logistic_outputs_are_pinned_to_the_kernels_grid(qat16, data):
    converter = _converter(qat16)   # the converter as deploy.convert sets it, before the pinning
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int16
    raw = converter.convert()
    int16 = _logistic_outputs(raw)[0][0]
    assert [(s, z) for _, s, z in _logistic_outputs(raw)] == [(1 / 65536, -32768)] * 2   # what TF 2.21 writes
    with pytest.raises(RuntimeError, match="32768"):
        run_tflite(raw, data[2][:4])   # LiteRT's int16 LOGISTIC refuses it
    target = hw.get("tflite_int16x8")
    pinned, names = pin_fixed_outputs(raw, target.fixed_output_params, "int16")
    assert len(names) == 2 and _logistic_outputs(pinned) == [(int16, 1 / 32768, 0)] * 2
    assert pin_fixed_outputs(pinned, target.fixed_output_params, "int16") == (pinned, [])   # nothing left
    assert pin_fixed_outputs(raw, target.fixed_output_params, "int8") == (raw, [])   # int8 tensors only there

    r = hw.verify(qat16, "tflite_int16x8", data[2], data[3])   # convert() pins them itself
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert r["ops"]["LOGISTIC"] == 2 and r["ops"]["MUL"] == 1 and "QUANTIZE" not in r["ops"], r["ops"]
    # the float simulation against the interpreter (16x8 has no integer emulation; LiteRT's int16 LOGISTIC is an
    # interpolated table): a few of the output's 65,536 steps (1-2 measured)
    assert r["argmax_agreement"] >= 0.99 and abs(r["deployed_accuracy"] - r["simulated_accuracy"]) <= 0.005, r
    assert r["deployed_accuracy"] > 0.5 and r["max_abs_diff_lsb"] <= 16, r


def test_a_16x8_model_ending_in_a_sigmoid_outputs_the_kernels_grid(data):
    """The model's output is the LOGISTIC's: the removed requantization's output was the graph's and signature's."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    keras.utils.set_random_seed(0)
    m = keras.Model(inp, L.Dense(10, activation="sigmoid")(L.Flatten()(h)))
    m.compile("adam", "sparse_categorical_crossentropy")   # on probabilities, not logits
    m.fit(xtr, ytr, epochs=3, verbose=0)
    q = qresearch.quantize(m, INT16X8, hardware="tflite_int16x8", adapt=True, calibration_data=xtr[:256])
    r = hw.verify(q, "tflite_int16x8", xte, yte)
    assert set(r["ops"]) == {"CONV_2D", "FULLY_CONNECTED", "LOGISTIC", "RESHAPE"}, r["ops"]
    assert r["output_quantization"] == (1 / 32768, 0) and r["structural_issues"] == []
    assert r["argmax_agreement"] >= 0.99 and r["deployed_accuracy"] > 0.5 and r["max_abs_diff_lsb"] <= 16, r
