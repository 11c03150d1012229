"""16x8 conv biases: the converter stores them as int32, LiteRT's 16x8 kernels read int64 (bias_widening.py)."""
import numpy as np

import qresearch
from qresearch import hardware as hw
from qresearch._compat import tf
from qresearch.hardware.bias_widening import widen_conv_biases
from qresearch.hardware.deploy import _converter

from deploy_models import SCHEMES, train

#: int8 per-channel weights, int16 symmetric activations: what tflite_int16x8 runs
INT16X8 = dict(SCHEMES["minmax"], activations={"quantizer": "minmax", "bits": 16, "symmetric": True})


def _biases(flatbuffer):
    """{tensor name: (type, int values)} of every CONV_2D / DEPTHWISE_CONV_2D bias, read from the flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    conv = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    out = {}
    for op in model.subgraphs[0].operators:
        if codes[op.opcodeIndex] in conv and len(op.inputs) > 2 and op.inputs[2] >= 0:
            t = model.subgraphs[0].tensors[op.inputs[2]]
            dtype = "<i8" if t.type == schema.TensorType.INT64 else "<i4"
            out[t.name] = (t.type, np.frombuffer(bytes(bytearray(model.buffers[t.buffer].data)), dtype=dtype))
    return out


def _int16x8_model(float_models, data):
    xtr, ytr, _, _ = data
    q = qresearch.quantize(float_models["mobilenet_like"], INT16X8, hardware="tflite_int16x8", adapt=True,
                           calibration_data=xtr[:256])
    return train(q, xtr, ytr, epochs=1, lr=1e-3)


def test_a_mobilenet_deploys_on_16x8_with_int64_conv_biases(float_models, data):
    q = _int16x8_model(float_models, data)
    converter = _converter(q)   # the converter as deploy.convert sets it, before the widening
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int16
    raw = converter.convert()
    widened, names = widen_conv_biases(raw)
    before, after = _biases(raw), _biases(widened)
    assert len(before) == 6 and sorted(n.decode() for n in before) == sorted(names)
    for name, (_, values) in before.items():   # the same integers, int64
        assert after[name][0] != before[name][0]
        np.testing.assert_array_equal(after[name][1], values.astype(np.int64))
    assert widen_conv_biases(widened) == (widened, [])   # nothing left to widen

    r = hw.verify(q, "tflite_int16x8", data[2], data[3])   # convert() widens them itself
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert r["input_quantization"][1] == 0 and r["output_quantization"][1] == 0
    # the float simulation against the interpreter (16x8 has no integer emulation): rounding only, a few of the
    # output's 65,536 steps (5 measured)
    assert r["argmax_agreement"] >= 0.99 and abs(r["deployed_accuracy"] - r["simulated_accuracy"]) <= 0.005, r
    assert r["deployed_accuracy"] > 0.5 and r["max_abs_diff_lsb"] <= 16, r


def test_a_bias_saturated_over_a_dead_input_is_named_on_16x8(data):
    """A squeeze-excite bottleneck whose ReLU never fires: the converter stores the next conv's bias saturated at the
    int32 limits (over the dead input's tiny scale), and the widening keeps those integers in int64. ``verify`` names
    each saturated bias as on int8 (test_integer_parity.py); it looked only at int32 biases, so 16x8 said nothing
    while the deployed squeeze-excite scale was off (a fuzzed model: 312 of 65,536 output steps, 2% argmaxes)."""
    L = qresearch.keras.layers
    qresearch.keras.utils.set_random_seed(0)
    inp = qresearch.keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    dead = L.Conv2D(4, 1, activation="relu", kernel_initializer="zeros",
                    bias_initializer=qresearch.keras.initializers.Constant(-1.0))(
        L.GlobalAveragePooling2D(keepdims=True)(h))
    s = L.Conv2D(16, 1, bias_initializer=qresearch.keras.initializers.RandomUniform(-0.5, 0.5))(dead)
    h = L.Multiply()([h, L.Activation("sigmoid")(s)])
    model = qresearch.keras.Model(inp, L.Dense(10)(L.Flatten()(h)))
    q = qresearch.quantize(model, INT16X8, hardware="tflite_int16x8", adapt=True, calibration_data=data[0][:256])
    r = hw.verify(q, "tflite_int16x8", data[2][:200], data[3][:200])
    saturated = [i for i in r["structural_issues"] if "saturates int32" in i]
    assert len(saturated) == 2, r["structural_issues"]
    assert "all-zero kernel" in saturated[0] and "constant zero" in saturated[1], saturated
