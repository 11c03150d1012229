"""TensorFlow's own TFLite flow on a tflite_int8 QAT model gives the integer model ``hardware.convert`` gives.

The TF Model Optimization QAT guide converts with ``TFLiteConverter.from_keras_model`` (or from a saved
model) and ``optimizations=[DEFAULT]``. A tflite_int8 model emulates the integer kernels in inference;
the converter must read the plain FakeQuant graph instead, while ``predict`` keeps the emulation.
"""
import numpy as np
import pytest

import qresearch
from qresearch import hardware as hw
from qresearch._compat import keras, tf
from qresearch.hardware.deploy import make_interpreter, quantize_input, run_tflite
from qresearch.kernels import emulated_kernels


WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@pytest.fixture(scope="module")
def setup(float_models, data):
    """The session's MobileNet-like (folded BN, ReLU6, depthwise, residual ADD, MEAN, dense) quantized with the
    tflite_int8 preset, and test images snapped onto its input grid (so the float-input model's own QUANTIZE
    and the integer input of ``convert``'s model carry the same integers)."""
    xtr, _, xte, _ = data
    q = qresearch.quantize(float_models["mobilenet_like"], "tflite_int8", hardware="tflite_int8",
                           calibration_data=xtr[:256])
    reference = hw.convert(q, "tflite_int8")
    it = make_interpreter(reference)
    s_in, z_in = it.get_input_details()[0]["quantization"]
    x_int = quantize_input(xte[:64], s_in, z_in, np.int8)
    x = ((x_int.astype(np.float32) - z_in) * np.float32(s_in)).astype(np.float32)
    return q, reference, x


def _edges(it):
    inputs = {d["index"] for d in it.get_input_details()}
    outputs = {d["index"] for d in it.get_output_details()}
    return inputs, outputs


def integer_graph(tflite_model):
    """The model's ops between its edges, each with its output's (dtype, scale, zero point) and, for
    conv/FC, its int8 weights and int32 bias (values and quantization). The float-I/O model of the guide
    has a QUANTIZE at its input and a DEQUANTIZE at its output; those edges are left out."""
    it = make_interpreter(tflite_model)
    it.allocate_tensors()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    inputs, outputs = _edges(it)
    graph = []
    for op in it._get_ops_details():
        if (op["op_name"] == "QUANTIZE" and set(op["inputs"]) <= inputs) or \
                (op["op_name"] == "DEQUANTIZE" and set(op["outputs"]) <= outputs):
            continue
        out = tensors[op["outputs"][0]]
        params = out["quantization_parameters"]
        entry = [op["op_name"], np.dtype(out["dtype"]).name, params["scales"].tolist(),
                 params["zero_points"].tolist()]
        if op["op_name"] in WEIGHT_OPS:
            for i in op["inputs"][1:3]:
                t = tensors[i]
                entry += [np.dtype(t["dtype"]).name, np.asarray(it.get_tensor(i)).tolist(),
                          t["quantization_parameters"]["scales"].tolist()]
        graph.append(entry)
    return graph


def run_float_io(tflite_model, x):
    """Run the guide's float-input/float-output model; returns its outputs and its output (scale, zp),
    read from the DEQUANTIZE's integer input."""
    it = make_interpreter(tflite_model)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32  # the guide's model keeps float I/O
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    y = np.array(it.get_tensor(out["index"]))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    dequant = [op for op in it._get_ops_details() if op["op_name"] == "DEQUANTIZE"
               and op["outputs"][0] == out["index"]][0]
    s, z = tensors[dequant["inputs"][0]]["quantization"]
    return y, (s, z)


def guide_from_keras_model(q_aware_model, tmp_path):
    # The TF Model Optimization QAT guide, step for step.
    converter = tf.lite.TFLiteConverter.from_keras_model(q_aware_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    quantized_tflite_model = converter.convert()
    return quantized_tflite_model


def guide_from_saved_model(q_aware_model, tmp_path):
    saved_model_dir = str(tmp_path / "qat")
    q_aware_model.save(saved_model_dir)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def concrete_function_trace(q_aware_model, tmp_path):
    """What the converter falls back to when the SavedModel step fails: TFLite's ``trace_model_call``."""
    from tensorflow.lite.python.util import trace_model_call

    func = trace_model_call(q_aware_model).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([func], q_aware_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


@pytest.mark.parametrize("flow", [guide_from_keras_model, guide_from_saved_model, concrete_function_trace],
                         ids=["from_keras_model", "from_saved_model", "trace_model_call"])
def test_tensorflow_flow_gives_the_convert_model(setup, flow, tmp_path):
    q, reference, x = setup
    before = q.predict(x, verbose=0)
    tflite_model = flow(q, tmp_path)

    # integer inside: the same ops, activation grids, int8 weights and int32 biases as convert's model
    graph, expected = integer_graph(tflite_model), integer_graph(reference)
    assert [e[0] for e in graph] == [e[0] for e in expected]
    assert {e[1] for e in graph} == {"int8"}
    assert graph == expected

    # the same integers out, on the same inputs, as convert's model and as the emulating QAT model
    y, (s_out, z_out) = run_float_io(tflite_model, x)
    ints = np.round(y / np.float32(s_out)) + z_out
    q_out, _, out_q = run_tflite(reference, x)
    assert (s_out, z_out) == pytest.approx(out_q, rel=0, abs=0)
    np.testing.assert_array_equal(ints, q_out.astype(np.float64))
    np.testing.assert_array_equal(np.round(before / np.float32(s_out)) + z_out, q_out.astype(np.float64))

    # exporting did not switch the model out of the emulation
    np.testing.assert_array_equal(q.predict(x, verbose=0), before)
    np.testing.assert_array_equal(q(x, training=False).numpy(), before)


def test_saved_then_loaded_model_still_emulates(setup, tmp_path):
    """A SavedModel's traced graphs are FakeQuant graphs (what from_saved_model reads), but a loaded model
    runs its layers' Python again: its predict is the emulation, bit for bit the pre-save predict."""
    q, _, x = setup
    before = q.predict(x, verbose=0)
    with emulated_kernels("none"):  # the float fake-quant simulation differs here: the check has teeth
        assert not np.array_equal(q(x, training=False).numpy(), before)
    q.save(str(tmp_path / "qat"))
    for loaded in (qresearch.load_model(str(tmp_path / "qat")), keras.models.load_model(str(tmp_path / "qat"))):
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)
        np.testing.assert_array_equal(loaded(x, training=False).numpy(), before)


def _two_in_two_out():
    L = keras.layers
    image, extra = keras.Input((8, 8, 1), name="image"), keras.Input((4,), name="extra")
    h = L.Flatten()(L.Conv2D(4, 3, activation="relu")(image))
    h = L.Concatenate()([L.Dense(8, activation="relu")(h), L.Dense(8, activation="relu")(extra)])
    return keras.Model([image, extra], [L.Dense(10, name="logits")(h), L.Dense(1, name="score")(h)])


def _flatbuffer_facts(tflite_model, inputs):
    """Signatures, I/O details and every op and tensor (shape, type, quantization, values after running
    ``inputs``, by input name), names of inner tensors left out (they carry the trace's op names)."""
    it = make_interpreter(tflite_model)
    it.allocate_tensors()
    for detail in it.get_input_details():
        it.set_tensor(detail["index"], next(v for name, v in inputs.items() if name in detail["name"]))
    it.invoke()
    io = [(d["name"], tuple(d["shape"]), d["quantization"]) for d in it.get_input_details() + it.get_output_details()]
    ops = [(o["op_name"], tuple(o["inputs"]), tuple(o["outputs"])) for o in it._get_ops_details()]
    tensors = []
    for t in it.get_tensor_details():
        try:
            value = it.get_tensor(t["index"]).tobytes()
        except ValueError:  # an intermediate tensor
            value = None
        qp = t["quantization_parameters"]
        tensors.append((tuple(t["shape"]), str(t["dtype"]), qp["scales"].tobytes(), qp["zero_points"].tobytes(),
                        value))
    return it.get_signature_list(), io, ops, tensors


def test_convert_traces_the_serving_function_as_from_keras_model_would(data):
    """``convert`` traces ``model(x, training=False)`` itself instead of saving the whole Keras model (Keras'
    saving traces every layer twice more): on a model with two inputs and two outputs, the flatbuffer has
    the same signatures, I/O, ops and tensors as TensorFlow's ``from_keras_model`` with the same settings."""
    rng = np.random.default_rng(0)
    xtr = data[0][:128]
    calibration = [xtr, rng.standard_normal((len(xtr), 4)).astype(np.float32)]
    keras.utils.set_random_seed(0)
    q = qresearch.quantize(_two_in_two_out(), "tflite_int8", hardware="tflite_int8",
                           calibration_data=calibration)
    mine = hw.convert(q, "tflite_int8")
    converter = tf.lite.TFLiteConverter.from_keras_model(q)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    theirs = converter.convert()
    inputs = {"image": rng.integers(-128, 128, (1, 8, 8, 1)).astype(np.int8),
              "extra": rng.integers(-128, 128, (1, 4)).astype(np.int8)}
    facts = _flatbuffer_facts(mine, inputs)
    assert facts[0] == {"serving_default": {"inputs": ["extra", "image"], "outputs": ["quant_logits", "quant_score"]}}
    assert facts == _flatbuffer_facts(theirs, inputs)
