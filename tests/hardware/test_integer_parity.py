"""The simulation's integer-kernel emulation against the TFLite interpreter: bit-exact outputs.

MobileNet-like (conv + folded BN + ReLU6, depthwise, residual ADD, MEAN, fully connected), an
average-pooling CNN, a gated CNN (sigmoid LUT, MUL, SUB) and a swish CNN (LOGISTIC, MUL), quantized with LSQ at
its paper init (coarse 8-bit steps, where a float simulation drifts from the deployed model) and with PACT;
every op of these models is emulated, so the simulated int8 outputs equal the deployed ones exactly.
"""
import numpy as np
import pytest

import qresearch
from qresearch import hardware as hw
from qresearch._compat import keras, tf
from qresearch.quantizers.base import is_quantizer_variable
from qresearch.schemes import BatchStatsFold, QuantizeInput
from qresearch.schemes.build import set_kernels

import deploy_models
from deploy_models import SCHEMES, qat_model, train



def avgpool_cnn():
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    h = L.BatchNormalization()(h)
    h = L.ReLU()(h)
    h = L.AveragePooling2D(3, strides=1, padding="same")(h)  # windows of 4, 6 and 9 valid taps
    h = L.Conv2D(8, 3, strides=2)(h)
    h = L.LeakyReLU(0.1)(h)  # LEAKY_RELU: two fixed-point multipliers
    h = L.AveragePooling2D(2)(h)
    h = L.Flatten()(h)
    return keras.Model(inp, L.Dense(10)(h))


def gated_cnn():
    """Multiply (ReLU branch x sigmoid gate) and Subtract of two conv branches: MUL and SUB."""
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    a = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    b = L.Conv2D(8, 3, padding="same", activation="sigmoid")(inp)
    c = L.Conv2D(8, 1)(inp)
    h = L.Subtract()([L.Multiply()([a, b]), c])
    h = L.Flatten()(h)
    return keras.Model(inp, L.Dense(10)(h))


def _activation_cnn(activation: str):
    """A CNN with ``activation`` as a layer and as a conv's activation."""
    def build():
        L = keras.layers
        inp = keras.Input((8, 8, 1))
        h = L.Conv2D(8, 3, padding="same")(inp)
        h = L.Activation(activation)(h)
        h = L.Conv2D(8, 3, padding="same", activation=activation)(h)
        return keras.Model(inp, L.Dense(10)(L.Flatten()(h)))
    build.__name__ = f"{activation}_cnn"   # the key of the trained models' cache
    return build


# swish: TFLite runs it as LOGISTIC (sigmoid's fixed grid), then MUL
swish_cnn = _activation_cnn("swish")
# leaky_relu as a function, not a LeakyReLU layer (tf.nn.leaky_relu's alpha 0.2): the converter makes LEAKY_RELU of
# each; the simulation ran them in float (1-2 LSB off)
leaky_cnn = _activation_cnn("leaky_relu")


def hard_swish_cnn():
    """Hard swish three ways, and a ReLU after ops with constant operands. MobileNetV3's x·ReLU6(x + 3)·(1/6) as
    keras.applications writes it and a Rescaling with an offset (MUL, ADD) before a ReLU: TFLite fuses each ReLU into
    the ADD before it, onto the ReLU's range (one rounding, where two quantizers had put two: 1-2 LSB).
    ``x * relu6(x + 3) / 6`` as TF ops and a conv's ``activation=qresearch.hard_swish``: the converter makes one
    HARD_SWISH op of each, a fixed-point kernel (the four TF ops were planned as four quantized layers: 1 LSB)."""
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same")(inp)
    h = L.Multiply()([h, L.ReLU(6.0)(h + 3.0) * (1.0 / 6.0)])
    h = L.Conv2D(8, 3, padding="same", activation=qresearch.hard_swish)(h)
    h = L.Conv2D(8, 3, padding="same")(h)
    h = h * tf.nn.relu6(h + 3.0) / 6.0
    h = L.Conv2D(8, 3, padding="same")(h)
    h = L.ReLU()(L.Rescaling(2.0, 0.25)(h))
    return keras.Model(inp, L.Dense(10)(L.Flatten()(h)))


def keepdims_pool_cnn():
    """GlobalAveragePooling2D(keepdims=True): the other MEAN kernel (20 channels: 16 vector + 4 tail)."""
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(20, 3, padding="same", activation="relu")(inp)
    h = L.Conv2D(20, 3, padding="same", activation="relu")(h)
    h = L.GlobalAveragePooling2D(keepdims=True)(h)
    return keras.Model(inp, L.Dense(10)(L.Flatten()(h)))


def dense_nd_cnn():
    """Dense on a rank-4 and on a rank-3 input: Keras runs them through tensordot (layer_calls.dense_nd)."""
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = L.Dense(8, activation="relu", name="dense_rank4")(h)
    h = L.Reshape((64, 8))(h)
    h = L.Dense(4, activation="relu", name="dense_rank3")(h)
    return keras.Model(inp, L.Dense(10)(L.Flatten()(h)))


_MODELS = {}


def mobilenet_qat(float_models, data, quantizer):
    """The session's MobileNet-like QAT model (6 float epochs, 2 QAT epochs), shared with test_deploy."""
    return qat_model(float_models, data, "mobilenet_like", quantizer)


def qat(data, builder, scheme):
    key = (builder.__name__, str(scheme))
    if key not in _MODELS:
        xtr, ytr, _, _ = data
        keras.utils.set_random_seed(0)
        m = train(builder(), xtr, ytr, epochs=4)
        q = qresearch.quantize(m, scheme, hardware="tflite_int8", calibration_data=xtr[:256])
        _MODELS[key] = train(q, xtr, ytr, epochs=1, lr=1e-3)
    return _MODELS[key]


@pytest.mark.parametrize("builder, scheme", [(mobilenet_qat, "lsq"), (mobilenet_qat, "pact"),
                                             (avgpool_cnn, "lsq"), (gated_cnn, "pact"),
                                             (keepdims_pool_cnn, "lsq"), (swish_cnn, "pact"), (leaky_cnn, "lsq"),
                                             (hard_swish_cnn, "lsq")],
                         ids=["mobilenet-lsq", "mobilenet-pact", "avgpool-lsq", "gated-pact", "keepdims-lsq",
                              "swish-pact", "leaky-lsq", "hard-swish-lsq"])
def test_simulated_outputs_equal_deployed_bit_for_bit(float_models, data, builder, scheme):
    if builder is mobilenet_qat:
        q = mobilenet_qat(float_models, data, scheme)
    else:
        q = qat(data, builder, SCHEMES[scheme])
    assert q.qresearch_info["kernels"] == "tflite_builtin"
    r = hw.verify(q, "tflite_int8", data[2], data[3])
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert not {"QUANTIZE", "DEQUANTIZE"} & set(r["ops"]), r["ops"]
    assert r["runtime"] == "tflite_int8" and r["kernels"] == "builtin_without_default_delegates"
    assert r["max_abs_diff_lsb"] < 1e-3, r  # every output integer equal
    assert r["argmax_agreement"] == 1.0 and r["deployed_accuracy"] == r["simulated_accuracy"]
    assert r["simulated_accuracy"] > 0.15  # above chance (10 classes): a working model, not a constant


def test_dense_on_rank_3_and_4_inputs_deploys_integer_only_bit_for_bit(data):
    # Keras' tensordot reshaped the kernel and the converter kept it float behind a DEQUANTIZE, among SHAPE/GATHER
    # ops (structural issues, not integer-only); the wrapper's dense_nd gives RESHAPE, FULLY_CONNECTED, RESHAPE
    q = qat(data, dense_nd_cnn, SCHEMES["lsq"])
    r = hw.verify(q, "tflite_int8", data[2], data[3])
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert set(r["ops"]) == {"CONV_2D", "FULLY_CONNECTED", "RESHAPE"}, r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r
    assert r["simulated_accuracy"] > 0.15


def test_float_simulation_drifts_where_the_emulation_does_not(float_models, data):
    """The same model with the emulation off (float fake-quant inference) is not bit-exact: the
    emulation, not luck, makes the test above pass."""
    q = mobilenet_qat(float_models, data, "lsq")
    try:
        set_kernels(q, None)
        r = hw.verify(q, "tflite_int8", data[2], data[3])
    finally:
        set_kernels(q, "tflite_builtin")
    assert r["max_abs_diff_lsb"] >= 1.0, r


def test_training_forward_is_unchanged(float_models, data):
    """Only inference is emulated: the training forward (and so every gradient) is the float one."""
    q = mobilenet_qat(float_models, data, "pact")
    x = data[0][:64]
    with_kernels = np.asarray(q(x, training=True))
    set_kernels(q, None)
    try:
        without = np.asarray(q(x, training=True))
        float_inference = np.asarray(q(x, training=False))
    finally:
        set_kernels(q, "tflite_builtin")
    assert np.array_equal(with_kernels, without)
    assert not np.array_equal(float_inference, np.asarray(q(x, training=False)))


def test_verify_emulates_the_kernel_set_it_runs(float_models, data):
    q = mobilenet_qat(float_models, data, "lsq")
    x, y = data[2][:256], data[3][:256]
    ref = hw.verify(q, "tflite_int8", x, y, kernels="builtin_ref", return_model=True)
    assert ref["kernels"] == "builtin_ref" and ref["max_abs_diff_lsb"] < 1e-3, ref
    # the same flatbuffer under XNNPACK (verify's tflite_model: no second conversion): its conv, MEAN and ADD
    xnn = hw.verify(q, "tflite_int8", x, y, kernels="builtin", tflite_model=ref["tflite_model"])
    assert xnn["kernels"] == "builtin" and xnn["max_abs_diff_lsb"] < 1e-3 and xnn["argmax_agreement"] == 1.0, xnn


# Saving and loading keeps the emulation bit for bit: test_converter_flow.py::test_saved_then_loaded_model_still_emulates


def test_quantize_without_emulation():
    m = deploy_models.mobilenet_like()
    q = qresearch.quantize(m, "tflite_int8", hardware="tflite_int8", kernels=None)
    assert q.qresearch_info["kernels"] is None
    assert all("kernels" not in getattr(getattr(layer, "quantize_config", None), "info", {}) for layer in q.layers)
    with pytest.raises(qresearch.UnknownNameError, match="unknown integer kernel set 'arm'"):
        qresearch.quantize(m, "tflite_int8", hardware="tflite_int8", kernels="arm")


# bn_folding: fold_batch_stats (schemes/batch_stats_fold.py): 23 QAT steps, the statistics frozen after 10
BATCH_STATS = dict(SCHEMES["lsq"], bn_folding="fold_batch_stats", bn_freeze_steps=10)


def batch_stats_qat(float_models, data):
    """The session's float MobileNet-like, QAT with fold_batch_stats for one epoch (23 steps)."""
    key = ("batch_stats", str(BATCH_STATS))
    if key not in _MODELS:
        xtr, ytr, _, _ = data
        keras.utils.set_random_seed(0)
        q = qresearch.quantize(float_models["mobilenet_like"], BATCH_STATS, hardware="tflite_int8",
                               calibration_data=xtr[:256])
        _MODELS[key] = train(q, xtr, ytr, epochs=1, lr=1e-3)
    return _MODELS[key]


def test_fold_batch_stats_deploys_bit_for_bit_as_the_static_fold(float_models, data):
    """Deployed outputs equal the emulation's, and the converted model is the static fold's (bn_folding: fold)
    built from the final weights: the folded kernel and bias in an ordinary conv, the same ops and tensors."""
    q = batch_stats_qat(float_models, data)
    folds = [layer for layer in q.layers if isinstance(layer, BatchStatsFold)]
    assert [w.layer.name for w in folds] == ["stem", "dw0", "pw0", "dw1", "pw1", "expand"]
    assert all(int(w.bn_steps.numpy()) > w.freeze_steps == 10 for w in folds)  # both phases ran
    r = hw.verify(q, "tflite_int8", data[2], data[3], return_model=True)
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert not {"QUANTIZE", "DEQUANTIZE"} & set(r["ops"]), r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3, r  # every output integer equal
    assert r["argmax_agreement"] == 1.0 and r["simulated_accuracy"] > 0.15

    static = qresearch.quantize(deploy_models.mobilenet_like(), dict(BATCH_STATS, bn_folding="fold"),
                                hardware="tflite_int8", calibration_data=data[0][:256])  # the same input grid
    assert [type(layer).__name__ for layer in static.layers] == \
        [("QuantizeWrapper" if isinstance(layer, BatchStatsFold) else type(layer).__name__) for layer in q.layers]
    for mine, theirs in zip(q.layers, static.layers):
        if isinstance(mine, BatchStatsFold):
            kernel, bias = mine.folded()
            attr = next(iter(mine.quantize_config.weights))
            getattr(theirs.layer, attr).assign(kernel)
            theirs.layer.bias.assign(bias)
            qvars = [[v for v in layer.weights if is_quantizer_variable(v)] for layer in (mine, theirs)]
            for a, b in zip(*qvars):
                b.assign(a)
        else:
            theirs.set_weights(mine.get_weights())
    x = data[2][:256]
    np.testing.assert_array_equal(np.asarray(q(x, training=False)), np.asarray(static(x, training=False)))
    image = np.random.default_rng(0).integers(-128, 128, (1, 8, 8, 1)).astype(np.int8)
    mine, theirs = (_contents(m, image) for m in (r["tflite_model"], hw.convert(static, "tflite_int8")))
    assert mine == theirs


def _contents(flatbuffer, image):
    """The ops (with their input/output tensor indices) and every tensor's shape, type, quantization and
    data after running ``image`` (weights, biases, activations) of a .tflite model (names left out: they
    carry the Keras op names)."""
    from qresearch.hardware.deploy import make_interpreter

    interp = make_interpreter(flatbuffer)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], image)
    interp.invoke()
    ops = [(o["op_name"], tuple(o["inputs"]), tuple(o["outputs"])) for o in interp._get_ops_details()]
    tensors = []
    for t in interp.get_tensor_details():
        if not t["name"]:  # a kernel's scratch buffer, not a tensor of the model
            continue
        qp = t["quantization_parameters"]
        try:
            value = interp.get_tensor(t["index"]).tobytes()
        except ValueError:  # an intermediate tensor
            value = None
        tensors.append((tuple(t["shape"]), str(t["dtype"]), qp["scales"].tobytes(), qp["zero_points"].tobytes(),
                        qp["quantized_dimension"], value))
    return ops, tensors


def _logits_then_linear(dtype=None):
    """A CNN ending in ``Activation("linear")`` (in float32: Keras' mixed-precision guide's last layer)."""
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3)(L.Conv2D(8, 3, activation="relu")(inp))))
    return keras.Model(inp, L.Activation("linear", dtype=dtype)(L.Dense(10)(L.Flatten()(h))))


def _qat_then_verify(model, data):
    xtr, ytr, xte, yte = data
    q = qresearch.quantize(train(model, xtr, ytr, epochs=3), "tflite_int8", hardware="tflite_int8",
                           calibration_data=xtr[:256])
    train(q, xtr, ytr, epochs=1, lr=1e-4)
    return q, hw.verify(q, "tflite_int8", xte, yte)


def test_a_linear_activation_layer_after_the_logits_is_dropped_as_the_converter_does(data):
    """The converter drops ``Activation("linear")``: the fully connected layer before it requantizes straight onto
    its grid. The emulation did not plan that (the layer ran as a float simulation): 1 LSB after QAT."""
    keras.utils.set_random_seed(0)
    _, r = _qat_then_verify(_logits_then_linear(), data)
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


def test_a_mixed_precision_model_quantizes_to_a_float32_simulation(data):
    """Built under ``mixed_float16``: the QAT model computes in float32 (TF's FakeQuant takes float32; a float16
    layer between two quantizers would move values off their grid), trains, and deploys bit for bit."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = _logits_then_linear(dtype="float32")
        assert model.layers[1].compute_dtype == "float16"
        q, r = _qat_then_verify(model, data)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert {layer.compute_dtype for layer in q.layers} == {"float32"}
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


def _bilinear_cnn():
    """Up-sampling by bilinear resizes: 8x8 -> 12x12 (Resizing) and 6x6 -> 12x12 (UpSampling2D), both
    half-pixel centred: RESIZE_BILINEAR, which keeps its input's grid and rounds with 10-bit weights."""
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    a = L.Resizing(12, 12, interpolation="bilinear")(L.Conv2D(8, 3, padding="same", activation="relu")(inp))
    b = L.UpSampling2D(2, interpolation="bilinear")(L.Conv2D(8, 3, activation="relu")(inp))
    h = L.Conv2D(8, 3, strides=2, activation="relu")(L.Concatenate()([a, b]))
    return keras.Model(inp, L.Dense(10)(L.Flatten()(h)))


def test_bilinear_resizing_is_emulated_bit_for_bit(data, tmp_path):
    """The float resize of on-grid values leaves the grid: the simulation re-quantizes it onto the input's grid and
    the emulation recomputes TFLite's int8 kernel (1 LSB and a different accuracy before)."""
    keras.utils.set_random_seed(0)
    q, r = _qat_then_verify(_bilinear_cnn(), data)
    assert r["ops"].get("RESIZE_BILINEAR") == 2, r["ops"]
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r
    q.save(tmp_path / "bilinear")
    x = data[2][:64]
    np.testing.assert_array_equal(qresearch.load_model(tmp_path / "bilinear").predict(x, verbose=0),
                                  q.predict(x, verbose=0))


def test_one_dimensional_depthwise_convolutions_are_emulated(data):
    """DepthwiseConv1D, and SeparableConv1D's depthwise half, run as DEPTHWISE_CONV_2D after an EXPAND_DIMS: the
    emulation plans them as it plans the 2-D one (they were a float simulation: 1 LSB)."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8))
    h = L.SeparableConv1D(16, 3, activation="relu")(inp)
    h = L.DepthwiseConv1D(3, depth_multiplier=2, activation="relu")(h)
    model = keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling1D()(h)))
    rows = tuple(a[..., 0] if a.ndim == 4 else a for a in data)   # each digit as 8 steps of 8 features
    _, r = _qat_then_verify(model, rows)
    assert r["ops"].get("DEPTHWISE_CONV_2D") == 2, r["ops"]
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("shared_axes", [None, [1, 2]])
def test_prelu_is_emulated_with_the_converters_alpha(data, shared_axes):
    """PRELU: alpha as the converter stores it (int8, zero point 0, scale max|alpha|/127), two multipliers; per
    element and per channel, negative slopes included (a float simulation before: 1 LSB)."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = L.PReLU(alpha_initializer=keras.initializers.RandomUniform(-0.3, 0.6), shared_axes=shared_axes)(
        L.Conv2D(8, 3, padding="same")(inp))
    model = keras.Model(inp, L.Dense(10)(L.Flatten()(L.Conv2D(8, 3, strides=2)(h))))
    _, r = _qat_then_verify(model, data)
    assert r["ops"].get("PRELU") == 1, r["ops"]
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("scale_first", [False, True])
def test_a_squeeze_excite_multiply_is_emulated(data, scale_first):
    """MUL of a feature map by a (1, 1, C) scale broadcasts in TFLite's kernel with the same arithmetic; it was left
    to the float simulation (1 LSB on 5% of outputs and a different deployed accuracy)."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    s = L.Conv2D(16, 1, activation="sigmoid")(L.Conv2D(4, 1, activation="relu")(
        L.GlobalAveragePooling2D(keepdims=True)(h)))
    h = L.Multiply()([s, h] if scale_first else [h, s])
    model = keras.Model(inp, L.Dense(10)(L.Flatten()(L.Conv2D(8, 3, strides=2, activation="relu")(h))))
    _, r = _qat_then_verify(model, data)
    assert r["ops"].get("MUL") == 1, r["ops"]
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("op", ["ADD", "SUB"])
def test_an_add_or_subtract_of_a_one_channel_map_is_emulated(data, op):
    """ADD/SUB of a feature map and an (H, W, 1) map broadcast along the channels: LiteRT's ADD takes its
    scalar-broadcast loop there (8 lanes with a flooring shift, the rest scalar; SUB the scalar path). A float
    simulation before: 1 LSB (SUB)."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = (L.Add() if op == "ADD" else L.Subtract())([L.Conv2D(1, 1)(h), h])
    model = keras.Model(inp, L.Dense(10)(L.Flatten()(L.Conv2D(8, 3, strides=2, activation="relu")(h))))
    _, r = _qat_then_verify(model, data)
    assert r["ops"].get(op) == 1, r["ops"]
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


def test_a_dead_input_deploys_a_saturated_bias_the_emulation_and_verify_show(data):
    """A squeeze-excite bottleneck whose ReLU never fires (all-zero kernel, bias -1): its output range is [0, 0],
    which the converter stores with scale 1e-6/255, so the next conv's bias over S_in·S_w saturates int32. The
    emulation took scale 1 (16-27 LSB off on such a model); it now follows the converter, and ``verify`` names
    each saturated bias and its cause."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    dead = L.Conv2D(4, 1, activation="relu", kernel_initializer="zeros",
                    bias_initializer=keras.initializers.Constant(-1.0))(L.GlobalAveragePooling2D(keepdims=True)(h))
    s = L.Conv2D(16, 1, bias_initializer=keras.initializers.RandomUniform(-0.5, 0.5))(dead)
    h = L.Multiply()([h, L.Activation("sigmoid")(s)])
    model = keras.Model(inp, L.Dense(10)(L.Flatten()(L.Conv2D(8, 3, strides=2, activation="relu")(h))))
    _, r = _qat_then_verify(model, data)
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r
    saturated = [i for i in r["structural_issues"] if "saturates int32" in i]
    # the bottleneck's own all-zero kernel (bias -1, its ReLU gives 0 either way), and the conv reading it
    assert len(saturated) == 2, r["structural_issues"]
    assert "all-zero kernel" in saturated[0] and "constant zero" in saturated[1], saturated


def test_an_all_zero_filter_keeps_its_bias_on_tflite(data):
    """A pruned filter (all-zero kernel channel, bias kept): its range [0, 0] would be stored with scale 1e-6/254
    and its bias saturated (0.5 deployed as 0.066). It quantizes on the widest channel's range instead: the
    deployed channel outputs its bias, equal to the simulation's, and no bias saturates."""
    L = keras.layers
    xtr, ytr, xte, yte = data
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    conv = L.Conv2D(8, 3, padding="same")
    model = keras.Model(inp, L.Dense(10)(L.Flatten()(L.ReLU()(conv(inp)))))
    train(model, xtr, ytr, epochs=2)
    kernel, bias = conv.get_weights()
    kernel[..., 0], bias[0] = 0.0, 0.5
    conv.set_weights([kernel, bias])
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=xtr[:256])
    r = hw.verify(q, "tflite_int8", xte, yte)
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r
    assert not [i for i in r["structural_issues"] if "saturates" in i], r["structural_issues"]
    channel = keras.Model(q.inputs, q.layers[2].output)(xte[:8], training=False).numpy()[..., 0]
    assert np.allclose(channel, 0.5, atol=0.01), channel.ravel()[:8]


@pytest.mark.parametrize("op", ["MUL", "SUB"])
def test_an_elementwise_op_with_a_relu_layer_after_it_is_emulated(data, op):
    """MUL/SUB then a ReLU layer: the ReLU holds the range and the op quantizes nothing itself, so it was not wrapped
    and stayed a float simulation (MUL: 1 LSB). It is wrapped now; the kernel computes onto the ReLU's grid."""
    L = keras.layers
    keras.utils.set_random_seed(12)
    inp = keras.Input((8, 8, 1))
    a = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = (L.Multiply() if op == "MUL" else L.Subtract())([a, L.Conv2D(8, 3, padding="same")(a)])
    h = L.Conv2D(8, 3, strides=2, activation="relu")(L.ReLU()(h))
    q, r = _qat_then_verify(keras.Model(inp, L.Dense(10)(L.Flatten()(h))), data)
    assert r["ops"].get(op) == 1 and "RELU" not in r["ops"], r["ops"]
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("op, head", [("MAXIMUM", "conv"), ("MINIMUM", "flatten")])
def test_maximum_and_minimum_compare_on_one_grid(data, op, head):
    """Maximum/Minimum of a layer's output and a conv of it. TFLite's MAXIMUM/MINIMUM compare integers on one grid:
    the converter requantizes the input on another grid with a QUANTIZE and computes the conv straight onto the
    output's grid (through a Flatten, onto the other input's, then a QUANTIZE after). They were merges with ranges
    of their own and a float simulation: 2-105 LSB, up to 6% of argmaxes flipped, `verify` listing the QUANTIZEs."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = (L.Maximum() if op == "MAXIMUM" else L.Minimum())([h, L.Conv2D(8, 1)(h)])
    if head == "conv":
        h = L.Conv2D(8, 3, strides=2, activation="relu")(h)
    _, r = _qat_then_verify(keras.Model(inp, L.Dense(10)(L.Flatten()(h))), data)
    assert r["ops"].get(op) == 1 and r["ops"].get("QUANTIZE") == 1, r["ops"]
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("strides, channels", [(1, 8), (2, 12), (2, 4)])
def test_a_transposed_conv_with_negative_outputs_is_bit_exact(data, strides, channels):
    """TRANSPOSE_CONV's output is requantized by LiteRT's optimized per-channel ``Quantize``: channels in lanes of
    8 round their shift ties up as the other convs, the last ``C % 8`` channels one by one half away from zero. The
    emulation rounded every channel half away, which only a negative output at a tie tells apart: after a ReLU it
    was exact, without an activation 1 LSB on 0.1-0.2% of outputs with 8 channels."""
    L = keras.layers
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = L.Conv2DTranspose(channels, 3, strides=strides, padding="same")(h)
    _, r = _qat_then_verify(keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(h))), data)
    assert r["ops"].get("TRANSPOSE_CONV") == 1, r["ops"]
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


def test_a_depthwise_conv_with_channels_past_a_multiple_of_8_is_bit_exact(data):
    """DEPTHWISE_CONV_2D on the builtin kernels rounds the last ``C % 8`` channels' ties half away from zero, the
    others up (tests/kernels/test_depthwise.py); NASNetMobile's 11-channel separable convs were 1-4 LSB off."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(11, 3, padding="same", use_bias=False)(inp)))
    h = L.DepthwiseConv2D(5, strides=2, use_bias=False)(L.ZeroPadding2D(2)(h))
    x = data[0][:128]
    q = qresearch.quantize(keras.Model(inp, L.Flatten()(h)), "tflite_int8", hardware="tflite_int8",
                           calibration_data=x)
    r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)))
    assert r["ops"].get("DEPTHWISE_CONV_2D") == 1 and r["max_abs_diff_lsb"] < 1e-3, r


def test_two_relus_of_one_conv_deploy_as_the_converters_one_fused_relu(data):
    """NASNet's cells apply ``Activation("relu")`` to one tensor in two branches. The converter merges the two RELU
    ops and fuses the one into the conv, requantized straight onto its grid; two layers, each quantized, rounded the
    conv's output first (2 LSB). The plan now merges them (``graph.merge_duplicate_relus``)."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    c = L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(inp))
    a, b = L.Activation("relu")(c), L.Activation("relu")(c)
    h = L.Add()([L.Conv2D(8, 3, padding="same")(a), L.Conv2D(8, 1)(b)])
    x = data[0][:128]
    q = qresearch.quantize(keras.Model(inp, L.Flatten()(h)), "tflite_int8", hardware="tflite_int8",
                           calibration_data=x)
    r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)))
    assert "RELU" not in r["ops"] and r["max_abs_diff_lsb"] < 1e-3, r


def test_a_transposed_convs_relu_runs_as_its_own_op(data):
    """The converter (TF 2.21) fuses no ReLU into TRANSPOSE_CONV: not its activation argument, nor a ReLU layer after
    it, nor one after a BN folded into it. With one quantizer after conv and ReLU, as for other convs, the conv's
    output had no grid: TRANSPOSE_CONV ran in float between a DEQUANTIZE and a QUANTIZE, 3 LSB off. Its output now
    gets a quantizer of its own (``LayerSpec.fuses_relu``), and the ReLU runs as a RELU / RELU6 op."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, strides=2, padding="same", name="tc_stem")(inp)
    a = L.Conv2DTranspose(11, 3, strides=2, padding="same", activation="relu6", name="tc_activation")(h)
    b = L.Conv2DTranspose(11, 3, strides=2, padding="same", use_bias=False, name="tc_bn")(h)
    b = L.ReLU(name="tc_relu")(L.BatchNormalization(name="tc_batch_norm")(b))
    out = L.Dense(4, name="tc_dense")(L.Flatten(name="tc_flatten")(L.Concatenate(name="tc_concat")([a, b])))
    x = data[0][:128]
    q = qresearch.quantize(keras.Model(inp, out), "tflite_int8", hardware="tflite_int8", calibration_data=x)
    r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)))
    assert r["integer_only"] and r["ops"]["TRANSPOSE_CONV"] == 2, r["ops"]
    assert r["ops"].get("RELU6") == 1 and r["ops"].get("RELU") == 1, r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3, r


def test_a_relu_its_producer_does_not_fuse_runs_the_relu_kernel(data):
    """A ReLU after a concatenation (or after a conv other layers read too) is a RELU op of its own: ``S_in/S_out`` in
    float32, then a fixed-point requantization (tests/kernels/test_relu.py). NASNetMobile's grids, set here (scaled by
    2^-8: the same float32 ratio), put an input on a tie; with the ratio in double the emulation is 1 LSB off there.
    (The float simulation it replaces happens to round this tie right; on NASNetMobile it was 1 LSB off.)"""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = L.Concatenate(name="concat")([L.Conv2D(8, 3, padding="same")(inp), L.Conv2D(8, 1)(inp)])
    h = L.ReLU(name="relu")(h)
    x = data[0][:256]
    q = qresearch.quantize(keras.Model(inp, L.Flatten()(h)), "tflite_int8", hardware="tflite_int8",
                           calibration_data=x)
    s_in, z_in, s_out = 3.9634976387023926 / 256, -7, 2.0827791690826416 / 256   # q = 60 in: a tie in float32
    for layer, (lo, hi) in (("quant_concat", (-(128 + z_in) * s_in, (127 - z_in) * s_in)),
                            ("quant_relu", (0.0, 255 * s_out))):
        variables = q.get_layer(layer)._output_quantizer_vars
        variables["min"].assign(lo)
        variables["max"].assign(hi)
    r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)))
    assert r["ops"].get("RELU") == 1 and r["max_abs_diff_lsb"] < 1e-3, r


def test_convs_inside_a_nested_concatenation_run_the_conv_kernel(data):
    """InceptionV3's ``mixed9``: two conv-BN-ReLU branches joined by an inner Concatenate, itself an input of the
    outer one. The inner one has no range of its own (the outer's is shared), and the convs found no grid to compute
    onto: float simulations, 1 LSB off on InceptionV3. They now run CONV_2D onto the outer concatenation's grid."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))

    def conv_bn_relu(h, name):
        return L.Activation("relu")(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False,
                                                                     name=name)(h)))

    inner = L.Concatenate()([conv_bn_relu(inp, "left"), conv_bn_relu(inp, "right")])
    h = L.Concatenate()([conv_bn_relu(inp, "outer"), inner])
    x = data[0][:256]
    q = qresearch.quantize(keras.Model(inp, L.Flatten()(h)), "tflite_int8", hardware="tflite_int8",
                           calibration_data=x)
    assert all(q.get_layer(f"quant_{name}")._integer_plan() is not None for name in ("left", "right", "outer"))
    r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)))
    assert r["ops"].get("CONCATENATION") == 2 and r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("reader", ["concatenate", "maximum", "pool_then_concatenate"])
def test_a_model_input_read_by_a_conv_and_a_one_grid_merge_deploys_bit_for_bit(data, reader):
    """The input feeds a conv and a concatenation (a U-Net's skip of the raw input), a Maximum, or a max pool into a
    concatenation. The merge read the float input and rounded it once onto its own grid; the converter, with int8
    I/O, dropped the input's second QUANTIZE and wrote a model the interpreter cannot run ("Input tensor 4 lacks
    data"). Every reader now reads the input on its one grid, and the deployed model requantizes it from there."""
    L = keras.layers
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1))
    if reader == "maximum":
        h = L.Maximum()([L.Conv2D(1, 3, padding="same")(inp), inp])
    else:
        h = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
        h = L.Concatenate()([h, L.MaxPooling2D(1)(inp) if reader == "pool_then_concatenate" else inp])
    h = L.Conv2D(8, 3, strides=2, activation="relu")(h)
    q, r = _qat_then_verify(keras.Model(inp, L.Dense(10)(L.Flatten()(h))), data)
    if reader != "pool_then_concatenate":
        merge = next(w for w in q.layers if isinstance(getattr(w, "layer", None), (L.Concatenate, L.Maximum)))
        assert any(isinstance(t._keras_history.layer, QuantizeInput) for t in merge.input), merge.input
    assert r["ops"].get("QUANTIZE") == 1 and r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


def test_a_unit_normalization_runs_l2_normalization_on_its_fixed_grid_bit_for_bit(data):
    """UnitNormalization over the channels: TFLite's L2_NORMALIZATION writes onto (1/128, 0) whatever range the
    model had. It was a layer with a learned range simulated in float: a QUANTIZE after the op and 1 LSB off."""
    L = keras.layers
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 1))
    h = L.UnitNormalization()(L.Conv2D(8, 3, padding="same")(inp))
    h = L.Conv2D(8, 3, strides=2, activation="relu")(h)
    q, r = _qat_then_verify(keras.Model(inp, L.Dense(10)(L.Flatten()(h))), data)
    assert r["ops"].get("L2_NORMALIZATION") == 1 and "QUANTIZE" not in r["ops"], r["ops"]
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


def test_a_wide_unit_normalization_runs_the_kernels_inverse_square_root():
    """200 non-negative features: the kernel's fixed-point ``1/sqrt(Σ q²)`` and the float normalisation the
    FakeQuant then rounds differ by 1 LSB on a quarter of the outputs (measured: mean 0.25 LSB). The emulation
    computes the kernel's."""
    L = keras.layers
    x = np.random.default_rng(0).uniform(0, 2, size=(256, 200)).astype("float32")
    inp = keras.Input((200,))
    q = qresearch.quantize(keras.Model(inp, L.UnitNormalization()(inp)), "tflite_int8", hardware="tflite_int8",
                           calibration_data=x[:128])
    r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)))
    assert r["ops"] == {"L2_NORMALIZATION": 1} and r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("form, kernels", [("Dot", "builtin_without_default_delegates"), ("Dot", "builtin"),
                                           ("tf.matmul", "builtin_without_default_delegates")])
def test_dot_products_run_batch_matmul_bit_for_bit(data, form, kernels):
    """Attention written with Dot layers or ``tf.matmul`` (scores q·kᵀ, softmax, then the weighted sum of v): the
    converter makes BATCH_MATMULs, which ran as a float simulation (a matmul TF op: quantized after it), 1-2 LSB
    off. XNNPACK runs one whose second operand has zero point 0 in float32 and leaves the others to the builtin
    kernel (both modelled: tests/kernels/test_batch_matmul.py)."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    s = L.Reshape((64, 8))(L.Conv2D(8, 3, padding="same", activation="relu")(inp))
    q_, k_, v_ = L.Dense(8)(s), L.Dense(8)(s), L.Dense(8)(s)
    if form == "Dot":
        h = L.Dot(axes=(2, 1))([L.Softmax()(L.Dot(axes=(2, 2))([q_, k_])), v_])
    else:
        h = tf.matmul(L.Softmax()(tf.matmul(q_, k_, transpose_b=True)), v_)
    x = data[0][:64]
    q = qresearch.quantize(keras.Model(inp, L.Flatten()(h)), "tflite_int8", hardware="tflite_int8",
                           calibration_data=x)
    r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)), kernels=kernels)
    assert r["ops"].get("BATCH_MATMUL") == 2 and r["integer_only"], r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("form", ["rows", "vectors"])
def test_cosine_similarities_run_l2_normalization_and_batch_matmul_bit_for_bit(data, form):
    """``Dot(normalize=True)``: rows against rows (``q·kᵀ`` of unit rows) and two embeddings (one similarity per
    example). The converter normalises each input with an L2_NORMALIZATION and multiplies with a BATCH_MATMUL (after
    EXPAND_DIMS for vectors); as one float-simulated layer it was 3 LSB (rows) and 51 LSB (vectors) off here, 1 and
    6 LSB on a digits CNN trained with it."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    s = L.Reshape((64, 8))(L.Conv2D(8, 3, padding="same", activation="relu")(inp))
    a, b = L.Dense(8)(s), L.Dense(8)(s)
    if form == "vectors":
        a, b = L.Flatten()(a), L.Flatten()(b)
    h = L.Dot(axes=-1, normalize=True)([a, b])
    x = data[0][:64]
    q = qresearch.quantize(keras.Model(inp, L.Flatten()(h)), "tflite_int8", hardware="tflite_int8",
                           calibration_data=x)
    r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)))
    assert r["ops"].get("BATCH_MATMUL") == 1 and r["ops"].get("L2_NORMALIZATION") == 2 and r["integer_only"], r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("kernels", ["builtin_without_default_delegates", "builtin"])
def test_hard_swish_runs_the_kernels_fixed_point(kernels):
    """Every int8 input of a HARD_SWISH: its 16-bit fixed-point products truncate, so near a rounding tie (one or two
    of the 256 inputs of a grid) the kernel and the float ``x·relu6(x + 3)/6`` the FakeQuant rounds differ by 1 LSB.
    The emulation computes the kernel's (tests/kernels/test_hard_swish.py)."""
    L = keras.layers
    x = np.linspace(-2.2, 5.3, 8 * 256, dtype="float32").reshape(8, 256)   # a grid with two such inputs
    inp = keras.Input((256,))
    q = qresearch.quantize(keras.Model(inp, L.Activation(qresearch.hard_swish)(inp)), "tflite_int8",
                           hardware="tflite_int8", calibration_data=x)
    r = hw.verify(q, "tflite_int8", x, np.zeros(len(x)), kernels=kernels)
    assert r["ops"] == {"HARD_SWISH": 1} and r["max_abs_diff_lsb"] < 1e-3, r
