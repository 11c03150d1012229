"""Verified deployment to TFLite: real models trained on real data (sklearn digits), quantized with
qresearch.quantize for tflite_int8, converted to integer-only models and run with the builtin kernels.

Parity criterion (the issue's): deployed accuracy = simulated accuracy within 0.2 points and argmax
agreement >= 99.5%.
"""
import numpy as np
import pytest

import qresearch
from qresearch import hardware as hw
from qresearch._compat import keras, tf
from qresearch.schemes.build import set_kernels

from deploy_models import BUILDERS, qat_model, train


def test_targets_without_runtime_refuse_to_pretend(data):
    x, y = data[2][:4], data[3][:4]
    for name in hw.names():
        t = hw.get(name)
        if t.has_runtime:
            continue
        with pytest.raises(hw.NoRuntimeError, match=f"target {name!r} has no runtime here"):
            hw.verify(None, name, x, y)


def check_parity(r):
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert not {"QUANTIZE", "DEQUANTIZE"} & set(r["ops"]), r["ops"]
    assert r["runtime"] == "tflite_int8" and r["kernels"] == "builtin_without_default_delegates"
    assert abs(r["deployed_accuracy"] - r["simulated_accuracy"]) <= 0.002 + 1e-9, r
    assert r["argmax_agreement"] >= 0.995, r


@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_minmax_parity(float_models, data, model_name):
    q = qat_model(float_models, data, model_name, "minmax")
    r = hw.verify(q, "tflite_int8", data[2], data[3])
    check_parity(r)
    assert r["simulated_accuracy"] > 0.8
    assert r["model_size_bytes"] > 1000 and r["n_samples"] == len(data[2])
    if model_name == "mobilenet_like":  # BN folded, ReLU6 fused, residual Add, global pool = MEAN
        assert r["max_abs_diff_lsb"] < 1e-3, r  # every op emulated: equal integers
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= set(r["ops"])
        assert "MUL" not in r["ops"] and "RELU6" not in r["ops"]
    else:
        assert r["max_abs_diff_lsb"] < 1e-3  # SOFTMAX emulated too (its float32 exp table and sum)
        assert {"CONCATENATION", "SOFTMAX", "MAX_POOL_2D"} <= set(r["ops"])
        assert r["output_quantization"] == (1 / 256, -128)  # softmax's fixed range


# mobilenet_like with lsq and pact: test_integer_parity.py asserts equal integers on the same session models
@pytest.mark.parametrize("quantizer, model_name", [("lsq", "concat_softmax"), ("pact", "concat_softmax")])
def test_learned_quantizer_parity(float_models, data, model_name, quantizer):
    q = qat_model(float_models, data, model_name, quantizer)
    r = hw.verify(q, "tflite_int8", data[2], data[3])
    print(model_name, quantizer, {k: r[k] for k in ("simulated_accuracy", "deployed_accuracy", "argmax_agreement",
                                                    "max_abs_diff_lsb", "within_1lsb_fraction")})
    check_parity(r)


def _tensor_scales(tflite_model):
    from qresearch.hardware.deploy import make_interpreter

    it = make_interpreter(tflite_model)
    it.allocate_tensors()
    return it, {t["name"]: t for t in it.get_tensor_details()}


def test_converter_reads_learned_fakequant(float_models, data):
    """LSQ steps and PACT clips become the TFLite scales: the converter reads their FakeQuant."""
    for quantizer in ("lsq", "pact"):
        q = qat_model(float_models, data, "concat_softmax", quantizer)
        tfl = hw.convert(q, "tflite_int8")
        it, tensors = _tensor_scales(tfl)
        ops = it._get_ops_details()
        by_index = {t["index"]: t for t in tensors.values()}
        fc = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"]
        hidden = [op for op in fc if "hidden" in by_index[op["outputs"][0]]["name"]][0]
        out_scale = by_index[hidden["outputs"][0]]["quantization"][0]
        w_scale = by_index[hidden["inputs"][1]]["quantization"][0]
        wrapper = q.get_layer("quant_hidden") if "quant_hidden" in [l.name for l in q.layers] else q.get_layer("hidden")
        variables = {v.name.split("/")[-1].split(":")[0]: np.asarray(v) for v in wrapper.weights}
        step = variables["kernel_step"]
        assert np.isclose(w_scale, float(step), rtol=1e-6), (w_scale, step)
        if quantizer == "lsq":
            act = [v for k, v in variables.items() if k.endswith("_step") and k != "kernel_step"][0]
            assert np.isclose(out_scale, float(act), rtol=1e-6), (out_scale, act)
        else:
            alpha = [v for k, v in variables.items() if k.endswith("_alpha")][0]
            qp = 255  # "hidden" is a ReLU output: PACT's unsigned grid [0, α]
            assert np.isclose(out_scale, float(alpha) / qp, rtol=1e-5), (out_scale, alpha)


def test_an_unknown_kernel_set_is_refused(float_models, data):
    # both kernel sets are verified on a model of their own in test_integer_parity.py
    q = qat_model(float_models, data, "concat_softmax", "minmax")
    with pytest.raises(qresearch.ConfigError, match="kernels must be one of"):
        hw.verify(q, "tflite_int8", data[2][:8], data[3][:8], kernels="gpu")


def test_save_path_and_bytes(float_models, data, tmp_path):
    q = qat_model(float_models, data, "concat_softmax", "minmax")
    path = tmp_path / "m.tflite"
    r = hw.verify(q, "tflite_int8", data[2][:50], data[3][:50], save_path=path, return_model=True,
                  batch_size=16)
    assert path.read_bytes() == r["tflite_model"] and r["model_size_bytes"] == len(r["tflite_model"])
    assert r["n_samples"] == 50


def test_structure_check_flags_float_models(float_models):
    converter = tf.lite.TFLiteConverter.from_keras_model(float_models["concat_softmax"])
    report = hw.inspect_model(converter.convert(), "tflite_int8")
    assert not report["integer_only"]
    assert any("non-integer tensors (float32)" in s for s in report["issues"])
    assert any("model edge" in s for s in report["issues"])


def test_input_quantization_follows_the_quantize_rule():
    from qresearch.hardware.deploy import quantize_input

    x = np.array([-1.5, -0.5, 0.5, 1.5, 2.49, 1000.0, -1000.0], np.float32)
    assert quantize_input(x, 1.0, 0, np.int8).tolist() == [-2, -1, 1, 2, 2, 127, -128]
    assert quantize_input(np.array([0.0, 1.0]), 1 / 255, -128, np.int8).tolist() == [-128, 127]


def test_int16x8_mlp_parity():
    """16x8: int16 symmetric activations (zero point 0), int8 weights, int16 I/O."""
    from sklearn.datasets import load_breast_cancer

    L = keras.layers
    bc = load_breast_cancer()
    x = ((bc.data - bc.data.mean(0)) / bc.data.std(0)).astype("float32")
    y = bc.target
    keras.utils.set_random_seed(0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    m = keras.Sequential([L.Dense(16, activation="relu", input_shape=(30,)), L.Dense(2)])
    m.compile("adam", loss)
    m.fit(x[:400], y[:400], epochs=10, verbose=0)
    scheme = {"weights": {"quantizer": "minmax", "bits": 8},
              "activations": {"quantizer": "minmax", "bits": 16, "symmetric": True}}
    q = qresearch.quantize(m, scheme, hardware="tflite_int16x8", calibration_data=x[:256])
    q.compile("adam", loss)
    q.fit(x[:400], y[:400], epochs=1, verbose=0)
    r = hw.verify(q, "tflite_int16x8", x[400:], y[400:])
    assert r["runtime"] == "tflite_int16x8" and r["integer_only"] and r["structural_issues"] == []
    assert r["input_quantization"][1] == 0 and r["output_quantization"][1] == 0
    assert r["argmax_agreement"] >= 0.995 and abs(r["deployed_accuracy"] - r["simulated_accuracy"]) <= 0.002
    assert r["within_1lsb_fraction"] == 1.0


def test_a_float_output_layer_is_compared_as_floats(data):
    # the last layer left float (skipped): the deployed output tensor is float32 with scale 0, and its
    # values are compared as they are (they were multiplied by that 0 scale: argmax agreement 0.06)
    xtr, ytr, xte, yte = data
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    h = keras.layers.Dense(32, activation="relu", name="hidden")(keras.layers.Flatten()(inp))
    model = train(keras.Model(inp, keras.layers.Dense(10, name="logits")(h)), xtr, ytr, epochs=3, from_logits=True)
    q = qresearch.quantize(model, {"weights": {"quantizer": "minmax", "bits": 8},
                                   "activations": {"quantizer": "minmax", "bits": 8}, "skip": ["logits"]},
                           calibration_data=xtr[:256])
    r = hw.verify(q, "tflite_int8", xte, yte)
    assert r["output_quantization"][0] == 0  # a float output
    assert r["argmax_agreement"] > 0.99 and r["max_abs_diff_lsb"] < 0.05  # logits differ by float rounding
    assert abs(r["deployed_accuracy"] - r["simulated_accuracy"]) < 0.01 and r["deployed_accuracy"] > 0.8


@pytest.mark.parametrize("offset", [-1.0, 0.0])
def test_preprocessing_layers_on_raw_pixels_deploy_integer_only(data, offset):
    """Rescaling with an offset (MobileNetV3's, EfficientNetV2's) and an adapted Normalization (EfficientNet's,
    ConvNeXt's) on raw pixels: the converter makes two elementwise ops of each; with the tensor between them
    quantized (LayerSpec.split) both are int8 (before: float MUL/ADD/SUB between a DEQUANTIZE and a QUANTIZE), and
    the emulation runs them with their constant operands quantized as the converter quantizes them."""
    xtr, ytr, xte, yte = (v * 255.0 if i in (0, 2) else v for i, v in enumerate(data))
    L = keras.layers
    norm = L.Normalization()
    norm.adapt(xtr[:256] / 127.5 + offset)
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    h = norm(L.Rescaling(1 / 127.5, offset=offset)(inp))
    h = L.Conv2D(8, 3, padding="same", activation="relu")(h)
    model = train(keras.Model(inp, L.Dense(10)(L.Flatten()(h))), xtr, ytr, epochs=3)
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=xtr[:256])
    set_kernels(q, "tflite_builtin")
    plans = {l.layer.name: l._integer_plan() for l in q.layers
             if isinstance(getattr(l, "layer", None), (L.Rescaling, L.Normalization))}
    # offset 0: Rescaling is one MUL by its scale
    assert {name: p.attrs["ops"] for name, p in plans.items()} == {
        model.layers[1].name: ["MUL", "ADD"] if offset else ["MUL"], norm.name: ["SUB", "MUL"]}
    r = hw.verify(q, "tflite_int8", xte, yte, return_model=True)
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    expected = {"MUL": 2, "SUB": 1, "ADD": 1 if offset else 0}
    assert {op: r["ops"].get(op, 0) for op in ("MUL", "SUB", "ADD")} == expected, r["ops"]
    # their constants stored as the converter stores them (``kernels.constant_operand``): bit for bit (the float
    # simulation of the constant-operand ops was 1 LSB off with the offset)
    assert r["argmax_agreement"] == 1.0 and r["max_abs_diff_lsb"] < 1e-3, r
    assert r["deployed_accuracy"] > 0.8, r
    # under XNNPACK too: another trace of the same plans (their constants re-read in it: a 1/std kept from the first
    # trace was "out of scope" there), its SUB/MUL/ADD arithmetic
    xnn = hw.verify(q, "tflite_int8", xte, yte, kernels="builtin", tflite_model=r["tflite_model"])
    assert xnn["argmax_agreement"] == 1.0 and xnn["max_abs_diff_lsb"] < 1e-3, xnn


def test_an_inception_block_deploys_integer_only_bit_for_bit(data):
    """InceptionV3's pattern: a max pool's output read by convs and by an average pool (re-quantized onto its
    grid), and conv + BN + ReLU branches concatenated. Without a FakeQuant after the max pool the converter ran
    those convs in float after a DEQUANTIZE; with the ReLUs as plain layers the emulation ran the branches in float
    and rounded once at the concatenation (1 LSB)."""
    xtr, ytr, xte, yte = data
    L = keras.layers

    def conv(x, filters, size=1):
        return L.Activation("relu")(L.BatchNormalization()(L.Conv2D(filters, size, padding="same", use_bias=False)(x)))

    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    x = L.MaxPooling2D(3, strides=1, padding="same")(conv(inp, 8, 3))
    pooled = conv(L.AveragePooling2D(3, strides=1, padding="same")(x), 4)
    x = L.Concatenate()([conv(x, 4), conv(conv(x, 4), 4, 3), pooled])
    model = train(keras.Model(inp, L.Dense(10)(L.Flatten()(x))), xtr, ytr, epochs=2)
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=xtr[:256])
    r = hw.verify(q, "tflite_int8", xte, yte)
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert "DEQUANTIZE" not in r["ops"] and r["ops"]["MAX_POOL_2D"] == 1, r["ops"]
    # every branch's conv (its ReLU a plain layer, its range the concatenation's) computes onto the concatenation's
    # grid in the emulation as in the converter: bit for bit
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r


def test_a_dense_block_deploys_bit_for_bit(data):
    """DenseNet's pattern: each concatenation reads the one before, which the converter requantizes onto its grid
    with a QUANTIZE (kernels' ``concatenation``; two roundings where the grids' ratio is under 1/2)."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    for _ in range(3):
        h = L.Conv2D(4, 3, padding="same")(L.ReLU()(L.BatchNormalization()(x)))
        x = L.Concatenate()([x, h])
    model = train(keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(x))), xtr, ytr, epochs=3)
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=xtr[:256])
    r = hw.verify(q, "tflite_int8", xte, yte)
    assert r["ops"]["QUANTIZE"] == 3 and r["ops"]["CONCATENATION"] == 3, r["ops"]
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]   # modeled requantizations
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r


def deployed_integer_only(model, data, qat_epochs: int = 0, return_model: bool = False):
    """``verify`` of the model quantized for tflite_int8 (calibrated, then QAT-trained ``qat_epochs``), asserted
    integer-only with no structural issue; ``return_model``: with the quantized model (``model``) and its
    flatbuffer (``tflite_model``), to verify again under another kernel set."""
    xtr, ytr, xte, yte = data
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=xtr[:256])
    if qat_epochs:
        train(q, xtr, ytr, epochs=qat_epochs, lr=1e-4)
    r = hw.verify(q, "tflite_int8", xte, yte, return_model=return_model)
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    return dict(r, model=q) if return_model else r


def test_dilated_convs_and_a_1d_average_pool_deploy_integer_only_bit_for_bit(data):
    """Dilated convs (DeepLab's atrous Conv2D with BN, dilated depthwise 2-D and 1-D, a TCN's causal Conv1D): Keras
    runs them through SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND, which the converter left in float around a float conv
    after a DEQUANTIZE of the kernel; run as one dilated op (``layer_calls.dilated_conv``) they are int8 convs. QAT
    trains through them first (the depthwise ones' gradient is Keras' own). An AveragePooling1D (AVERAGE_POOL_2D
    over (1, L), with padded edges) was rounded as a float mean: 3 LSB, 0.7% of argmaxes."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", dilation_rate=(2, 3), use_bias=False)(x)))
    x = L.DepthwiseConv2D(3, padding="same", dilation_rate=2, activation="relu")(x)
    seq = L.Reshape((x.shape[1] * x.shape[2], 8))(x)
    y = L.Conv1D(8, 3, padding="causal", dilation_rate=4, activation="relu")(seq)
    y = L.DepthwiseConv1D(3, padding="same", dilation_rate=2, activation="relu")(y)
    y = L.AveragePooling1D(3, strides=1, padding="same")(y)
    model = train(keras.Model(inp, L.Dense(10)(L.Flatten()(L.Add()([seq, y])))), xtr, ytr, epochs=2)
    r = deployed_integer_only(model, data, qat_epochs=1)
    assert not {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND", "DEQUANTIZE"} & set(r["ops"]), r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r
    assert r["deployed_accuracy"] > 0.8, r


def _sums_products_average(x):
    L = keras.layers
    x = L.Add()([x, L.Conv2D(8, 1)(x), L.Conv2D(8, 3, padding="same")(x)])
    x = L.Multiply()([x, L.Conv2D(8, 1, activation="sigmoid")(x), L.Conv2D(8, 1, activation="sigmoid")(x)])
    return L.Average()([x, L.Conv2D(8, 1)(x)])   # ADD, then MUL by 1/2 (split_nary_merges: then a Rescaling)


def _minimum_maximum(x):
    L = keras.layers
    x = L.Minimum()([x, L.Conv2D(8, 1)(x), L.Conv2D(8, 3, padding="same")(x)])
    return L.Maximum()([x, L.Conv2D(8, 1)(x), L.Conv2D(8, 1)(x), L.Conv2D(8, 1, activation="relu")(x)])


@pytest.mark.parametrize("merges, ops", [(_sums_products_average, {"ADD": 3, "MUL": 3}),
                                         (_minimum_maximum, {"MINIMUM": 2, "MAXIMUM": 3})],
                         ids=["add_multiply_average", "minimum_maximum"])
def test_merges_of_three_or_more_inputs_deploy_integer_only_bit_for_bit(data, merges, ops):
    """The converter chains two-input ADD (MUL, MINIMUM, MAXIMUM) ops. An Add or a Multiply with one quantizer after
    the layer gave the partial result no range, so the chain ran in float between a DEQUANTIZE and a QUANTIZE; an
    Average (ADD then MUL by 1/2) the same; a Minimum or Maximum of three ran as a float simulation (the emulation's
    are binary): 89 LSB off, 27% argmax agreement. Split into two-input layers (``split_nary_merges``) each partial
    result has its own grid (one grid, for MINIMUM / MAXIMUM), and all are exact."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    x = merges(L.Conv2D(8, 3, padding="same", activation="relu")(inp))
    model = train(keras.Model(inp, L.Dense(10)(L.Flatten()(x))), xtr, ytr, epochs=2)
    r = deployed_integer_only(model, data)
    assert {op: r["ops"].get(op) for op in ops} == ops and "DEQUANTIZE" not in r["ops"], r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r


def test_preprocessing_written_as_tf_ops_deploys_bit_for_bit(data):
    """``inputs / 2.0 - 0.25`` and ``x * 0.7`` on Keras tensors: TF op layers were simulated in float; planned as
    ``Rescaling`` layers (``keras_layers_for_tf_ops``) they run the MUL / ADD kernels with their constants stored as
    the converter stores them."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp / 2.0 - 0.25)
    x = L.Conv2D(8, 3, padding="same")(x) * 0.7
    model = train(keras.Model(inp, L.Dense(10)(L.Flatten()(x))), xtr, ytr, epochs=2)
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=xtr[:256])
    set_kernels(q, "tflite_builtin")
    planned = [p.attrs["ops"] for p in (getattr(l, "_integer_plan", lambda: None)() for l in q.layers)
               if p is not None and p.operand == "constants"]
    assert planned == [["MUL"], ["ADD"], ["MUL"]], planned
    r = deployed_integer_only(model, data)
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r


@pytest.mark.parametrize("written_with", ["keras_layers", "tf_ops"])
def test_a_maximum_inside_a_concatenation_deploys_bit_for_bit(data, written_with):
    """``concat([x, max(x, conv(x))])`` then ``· mean``: the Maximum shares the concatenation's range and has no
    quantizer; the converter runs it on ``x``'s grid (the conv computing onto it) and requantizes its result for the
    concatenation. The emulation had the conv in float (1 LSB, 8 after the MUL, 0.3% of argmaxes; nothing listed by
    ``verify``). Written with TF ops (``tf.nn.relu6``, ``tf.concat``, ``tf.maximum``, ``x * tf.reduce_mean``) the
    same model was simulated in float op by op; planned as the Keras layers they are, it runs their kernels."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    if written_with == "tf_ops":
        x = tf.nn.relu6(L.Conv2D(8, 3, padding="same")(inp))
        x = tf.concat([x, tf.maximum(x, L.Conv2D(8, 1)(x))], axis=-1)
        x = x * tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    else:
        x = L.ReLU(6.0)(L.Conv2D(8, 3, padding="same")(inp))
        x = L.Concatenate()([x, L.Maximum()([x, L.Conv2D(8, 1)(x)])])
        x = L.Multiply()([x, L.GlobalAveragePooling2D(keepdims=True)(x)])
    model = train(keras.Model(inp, L.Dense(10)(L.Flatten()(x))), xtr, ytr, epochs=2)
    r = deployed_integer_only(model, data)
    assert r["ops"]["MAXIMUM"] == 1 and r["ops"]["MEAN"] == 1, r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r


def test_a_grid_keeping_op_read_by_a_concatenation_and_a_conv_deploys_bit_for_bit(data):
    """A DenseNet transition's pattern: a max pool's (and a padding's) output read by a concatenation and by a conv
    whose output the concatenation takes over. Without a FakeQuant after the pool the converter requantized its
    output onto the concatenation's grid with a QUANTIZE that the conv read too (2 LSB, 1-2% of argmaxes)."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    x = L.MaxPooling2D(2)(L.Conv2D(8, 3, padding="same", activation="relu")(inp))
    x = L.Concatenate()([x, L.Conv2D(8, 3, padding="same", activation="relu")(x)])
    x = L.ZeroPadding2D(1)(L.Conv2D(8, 1, activation="relu")(x))
    x = L.Concatenate()([x, L.Conv2D(8, 3, padding="same", activation="relu")(x)])
    model = train(keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(x))), xtr, ytr, epochs=2)
    r = deployed_integer_only(model, data)
    # each concatenation requantizes its pool/padding input (a QUANTIZE before it, modelled); the convs read that
    # input on its own grid
    assert r["ops"]["QUANTIZE"] == 2 and r["ops"]["CONCATENATION"] == 2, r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r


def test_a_relu_layer_after_a_kernel_with_its_own_relu_deploys_bit_for_bit(data):
    """A conv with ReLU then a ReLU layer, a dense with ReLU6 then a ReLU6 layer: the converter drops the repeated
    activation and runs one kernel. The emulation left both in float (1 LSB in 0.06% of a layer's outputs)."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    x = L.Activation("relu")(L.Conv2D(8, 3, padding="same", activation="relu")(inp))
    x = L.ReLU(6.0)(L.Dense(16, activation="relu6")(L.Flatten()(x)))
    model = train(keras.Model(inp, L.Dense(10)(x)), xtr, ytr, epochs=2)
    r = deployed_integer_only(model, data)
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r


def test_table_activations_run_their_kernels_and_deploy_bit_for_bit(data):
    """sigmoid, tanh and gelu as layers and as a conv's activation: LOGISTIC, TANH and GELU, whose int8 kernels
    look each input up in a table (``tflite_ops.lut_activation``; against LiteRT entry by entry in
    tests/kernels/test_tables.py). Each runs through the kernel set, not the float simulation."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    x = L.Conv2D(8, 3, padding="same", activation="tanh")(inp)
    x = L.Activation("gelu")(L.Conv2D(8, 3, padding="same")(x))
    x = L.Activation("sigmoid")(L.Dense(16)(L.Flatten()(x)))
    model = train(keras.Model(inp, L.Dense(10)(x)), xtr, ytr, epochs=2)
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=xtr[:256])
    set_kernels(q, "tflite_builtin")
    planned = [p.op for p in (getattr(l, "_integer_plan", lambda: None)() for l in q.layers) if p is not None]
    assert {"GELU", "LOGISTIC"} <= set(planned), planned   # the conv's tanh is its fused tail
    r = deployed_integer_only(model, data, return_model=True)
    assert {"TANH", "GELU", "LOGISTIC"} <= set(r["ops"]), r["ops"]
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r
    # under XNNPACK too (its own tables, and its float32 conv requantization: 1 LSB off with the fixed-point one)
    xnn = hw.verify(r["model"], "tflite_int8", data[2], data[3], kernels="builtin", tflite_model=r["tflite_model"])
    assert xnn["max_abs_diff_lsb"] < 1e-3 and xnn["argmax_agreement"] == 1.0, xnn


def test_xnnpack_convs_and_means_deploy_bit_for_bit(data):
    """Under the builtin kernels with the XNNPACK delegate (``verify(kernels="builtin")``, the ``xnnpack`` emulation):
    conv, depthwise and dense outputs requantized in float32, and MEAN with and without keepdims in float32
    (tests/kernels/test_xnnpack.py checks each op on chosen inputs). Both were 1-3 LSB off with the set's fixed-point
    rules (measured on models like this one, notes/schemes.md)."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    x = L.DepthwiseConv2D(3, padding="same", activation="relu")(L.Conv2D(12, 3, padding="same", activation="relu")(inp))
    x = L.Conv2D(16, 1)(x)
    squeeze = L.Conv2D(16, 1, activation="relu")(L.GlobalAveragePooling2D(keepdims=True)(x))
    x = L.GlobalAveragePooling2D()(L.Add()([x, squeeze]))
    model = train(keras.Model(inp, L.Dense(10)(x)), xtr, ytr, epochs=2)
    r = deployed_integer_only(model, data, return_model=True)
    assert {"MEAN", "DEPTHWISE_CONV_2D"} <= set(r["ops"]) and r["max_abs_diff_lsb"] < 1e-3, r
    xnn = hw.verify(r["model"], "tflite_int8", xte, yte, kernels="builtin", tflite_model=r["tflite_model"])
    assert xnn["max_abs_diff_lsb"] < 1e-3 and xnn["argmax_agreement"] == 1.0, xnn


def test_a_bias_on_a_tie_is_rounded_as_the_converter_rounds_it():
    """The converter quantizes a bias onto ``S_in·S_w`` in double, each scale before its float32 rounding
    (``Grid.bias_scale``; found on a dense layer 0.0003 LSB from a tie). Biases set on the ties of that product, on
    a zero input and an output grid of the same step (each bias unit one output LSB): the deployed outputs are the
    emulated ones, and the float32 scales would have put some of them on the other side."""
    from qresearch import kernels as K

    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,))
    model = keras.Model(inp, L.Dense(64)(inp))
    x = np.random.default_rng(0).uniform(-1, 1, (256, 16)).astype(np.float32)
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=x)
    dense = next(l for l in q.layers if isinstance(getattr(l, "layer", None), L.Dense))
    in_grid = K.grid_of_quantizer(*dense._input_source[:2])
    weight, wq, wv = dense._weight_vars[0]
    w_grid = K.grid_of(*K.fake_quant_range(wq, wv, weight))
    exact = float(in_grid.exact_scale) * np.asarray(w_grid.exact_scale, np.float64)
    stored = float(in_grid.scale) * np.asarray(w_grid.scale, np.float64)
    k = np.arange(64) - 32
    bias = ((k + 0.5) * exact).astype(np.float32)
    dense.layer.bias.assign(bias)
    step = float(np.max(exact))
    dense._output_quantizer_vars["min"].assign(-128 * step)
    dense._output_quantizer_vars["max"].assign(127 * step)
    half_away = lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5)
    assert (half_away(bias / exact) != half_away(bias / stored)).any()   # the test can fail
    r = hw.verify(q, "tflite_int8", np.zeros((4, 16), np.float32), np.zeros(4, int))
    assert r["max_abs_diff_lsb"] < 1e-3, r


@pytest.mark.parametrize("head", ["flatten", "dense_over_the_map"])
def test_a_concatenation_read_through_a_reshape_deploys_bit_for_bit(data, head):
    """A concatenation of a layer's output and a conv of it, read through a reshape (a Flatten, or a Dense over the
    feature map, which converts to RESHAPE + FULLY_CONNECTED). TF 2.21's converter moves the concatenation's
    FakeQuant past the reshape: the conv computes onto the other input's grid, the concatenation runs there and a
    QUANTIZE requantizes it (measured). The emulation left it to the float simulation: 20 LSB and 1.2% of argmaxes
    on a digits model (Dense over the map), 1 LSB with a Flatten head."""
    xtr, ytr, xte, yte = data
    L = keras.layers
    keras.utils.set_random_seed(21)
    inp = keras.Input(xtr.shape[1:])
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = L.Concatenate()([x, L.Conv2D(8, 3, padding="same", activation="relu")(x)])
    x = L.Flatten()(x) if head == "flatten" else L.Flatten()(L.MaxPooling2D(2)(L.Dense(12, activation="relu")(x)))
    q = qresearch.quantize(train(keras.Model(inp, L.Dense(10)(x)), xtr, ytr, epochs=2), "tflite_int8",
                           hardware="tflite_int8", calibration_data=xtr[:256])
    train(q, xtr, ytr, epochs=1, lr=1e-4)
    r = hw.verify(q, "tflite_int8", xte, yte)
    assert r["ops"].get("QUANTIZE") == 1 and r["ops"]["CONCATENATION"] == 1, r["ops"]
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]   # a modeled requantization
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r


def test_a_token_model_is_verified_on_its_indices(tmp_path):
    """An ``Embedding`` reads integer indices: the converted model's input is int32 with no scale, fed as it is (before,
    verify refused it: "needs an input quantizer"). The simulation reads the same indices."""
    L = keras.layers
    rng = np.random.default_rng(0)
    x = rng.integers(0, 100, size=(1280, 16)).astype("int32")
    y = (np.isin(x, np.arange(10)).sum(1) > 1).astype("int32")
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), dtype="int32")
    h = L.GlobalMaxPooling1D()(L.Conv1D(8, 3, activation="relu")(L.Embedding(100, 8)(inp)))
    model = train(keras.Model(inp, L.Dense(2)(h)), x[:1024], y[:1024], epochs=15, from_logits=True)
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=x[:128])
    r = hw.verify(q, "tflite_int8", x[1024:], y[1024:])
    assert r["input_quantization"] == (0.0, 0) and "GATHER" in r["ops"], r
    assert r["simulated_accuracy"] > 0.7, r
    # the gathered rows stay on the table's grid (LayerSpec.output_grid), as GATHER keeps them: no requantizing
    # QUANTIZE after it (an activation quantizer of its own put one there), and the integers are equal
    assert r["integer_only"] and r["structural_issues"] == [] and "QUANTIZE" not in r["ops"], r
    assert r["argmax_agreement"] == 1.0 and r["max_abs_diff_lsb"] < 1e-3, r
    # token ids given as whole floats are the same indices; fractions are refused
    as_floats = hw.verify(q, "tflite_int8", x[1024:].astype("float32"), y[1024:])
    assert as_floats["deployed_accuracy"] == r["deployed_accuracy"]
    with pytest.raises(qresearch.errors.ConfigError, match="fractional values: pass the indices"):
        hw.verify(q, "tflite_int8", x[1024:] + 0.5, y[1024:])
    q.save(str(tmp_path / "qat"))   # the table's grid is found again when the saved model is rebuilt
    again = qresearch.load_model(str(tmp_path / "qat"))
    np.testing.assert_array_equal(again.predict(x[1024:], verbose=0), q.predict(x[1024:], verbose=0))
    assert hw.verify(again, "tflite_int8", x[1024:], y[1024:])["max_abs_diff_lsb"] < 1e-3


def test_a_recurrent_model_that_cannot_convert_gets_a_short_error(caplog, converter_log_dir):
    """TF 2.21's converter fails on a quantization-aware LSTM's loop with a page of MLIR locations; the error names the
    layer, the converter's own line and the way out."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 4)).astype("float32")
    inp = keras.Input((6, 4))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.LSTM(4, name="lstm")(inp)))
    with caplog.at_level("WARNING", logger="qresearch.hardware.deploy"):   # said before any training
        q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=x)
    assert "verify will fail: 'lstm' (LSTM): quantization-aware recurrent layers" in caplog.text
    with pytest.raises(qresearch.errors.ConfigError, match=r"cannot convert this QAT model \(.*\)\. 'lstm' \(LSTM\): "
                                                           r"quantization-aware recurrent layers .*Fix:") as err:
        hw.verify(q, "tflite_int8", x, np.zeros(32))
    assert "loc(" not in str(err.value) and len(str(err.value)) < 1000
    logs = list(converter_log_dir.glob("qresearch-converter-*.log"))   # the dump went to the file the error names
    assert len(logs) == 1 and str(logs[0]) in str(err.value) and "loc(" in logs[0].read_text()


def test_pot_weights_chosen_by_mse_deploy_bit_for_bit(data):
    """``pot_rounding: mse`` computes each channel's range from the weights (the ceil power or the one below): the
    converter folds that computation into the weights' quantization, and the emulation reads the same range."""
    xtr, ytr, xte, yte = data
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(keras.layers.Conv2D(8, 3, activation="relu")(inp))
    model = train(keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(h))), xtr, ytr, epochs=3)
    scheme = {"weights": {"quantizer": "pot", "bits": 8, "per_channel": True, "pot_rounding": "mse"},
              "activations": {"quantizer": "minmax", "bits": 8}, "overrides": [{"match": "Dense",
                                                                                 "weights": {"per_channel": False}}]}
    q = qresearch.quantize(model, scheme, hardware="tflite_int8", calibration_data=xtr[:256])
    r = hw.verify(q, "tflite_int8", xte, yte)
    check_parity(r)
    assert r["max_abs_diff_lsb"] < 1e-3, r
    kernel = q.get_layer("quant_conv").layer.kernel.numpy().reshape(-1, 16)
    ceil = 2.0 ** np.ceil(np.log2(np.abs(kernel).max(0) / 127))
    err = [np.sum((np.clip(np.round(kernel / s), -127, 127) * s - kernel) ** 2, axis=0) for s in (ceil / 2, ceil)]
    assert (err[0] < err[1]).any() and (err[0] >= err[1]).any()   # both powers are in use: the case is exercised


def _mse_choice(kernel, bits=8):
    """numpy: per column of ``kernel``, the k of the range k/20·max|w| with the least squared error (ties: larger)."""
    kernel = kernel.astype("float64")
    qp = 2 ** (bits - 1) - 1
    errors = []
    for f in np.arange(20, 0, -1) / 20:
        s = f * np.abs(kernel).max(0) / qp
        errors.append(np.sum((np.clip(np.round(kernel / s), -qp, qp) * s - kernel) ** 2, axis=0))
    return np.arange(20, 0, -1)[np.argmin(errors, axis=0)]


def _two_convs(xtr, ytr):
    """Two ReLU convs ("conv" the second) and a Dense "logits", trained 3 epochs on digits."""
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(keras.layers.Conv2D(8, 3, activation="relu")(inp))
    return train(keras.Model(inp, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(h))), xtr, ytr,
                 epochs=3)


def test_minmax_weights_ranged_by_mse_deploy_bit_for_bit(data):
    """``range_rule: mse`` tracks each channel's range as the fraction of max|w| with the least squared error: the
    converter reads the stored range as it reads a max range, and the emulation reads the same."""
    xtr, ytr, xte, yte = data
    model = _two_convs(xtr, ytr)
    # At 8 bits clipping rarely pays on a trained layer; this one's weights lie on the grid of 0.95·max but for
    # its max, so clipping that one weight (cost 0.05²) beats rounding 2,559 others (about 2,559 / (12·127²)).
    dense = model.get_layer("logits").kernel
    on_grid = np.clip(np.round(dense.numpy() / np.abs(dense.numpy()).max() * 127), -127, 127) * (0.95 / 127)
    on_grid[0, 0] = 1.0
    dense.assign(on_grid.astype("float32"))
    scheme = {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True, "range_rule": "mse"},
              "activations": {"quantizer": "minmax", "bits": 8},
              "overrides": [{"match": "Dense", "weights": {"per_channel": False}}]}
    q = qresearch.quantize(model, scheme, hardware="tflite_int8", calibration_data=xtr[:256])
    r = hw.verify(q, "tflite_int8", xte, yte)
    check_parity(r)
    assert r["max_abs_diff_lsb"] < 1e-3, r
    # both kinds exercised: a range clipped, and 72-weight channels that keep the whole range at 8 bits
    assert _mse_choice(q.get_layer("quant_logits").layer.kernel.numpy().reshape(-1, 1)) == 19
    stored = [v.numpy() for v in q.get_layer("quant_logits").weights if v.name.endswith("kernel_max:0")]
    assert stored == [pytest.approx(0.95)], [v.name for v in q.get_layer("quant_logits").weights]
    assert (_mse_choice(q.get_layer("quant_conv").layer.kernel.numpy().reshape(-1, 16)) == 20).all()


def test_minmax_activations_ranged_by_mse_deploy_bit_for_bit(data):
    """Activations with ``range_rule: mse`` track the average of each batch's least-error range during QAT: the
    converter reads that stored range as it reads a max range, and the emulation reads the same."""
    xtr, ytr, xte, yte = data
    model = _two_convs(xtr, ytr)
    scheme = {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True},
              "activations": {"quantizer": "minmax", "bits": 8, "range_rule": "mse"},
              "overrides": [{"match": "Dense", "weights": {"per_channel": False}}]}
    q = qresearch.quantize(model, scheme, hardware="tflite_int8", calibration_data=xtr[:256])
    # At 8 bits these activations keep their whole range (f = 1: clipping 5% of a range costs more than the finer
    # grid saves); a fraction set and kept (no search in this run) makes training average cut ranges to deploy.
    kept = {v.name: v for v in q.weights if v.name.endswith(("_fraction:0", "_search_in:0"))}
    assert len(kept) == 8, sorted(kept)
    for name, v in kept.items():
        v.assign(0.6 if name.endswith("_fraction:0") else 1e9)
    maxes = {v.name: float(v.numpy()) for v in q.weights if v.name.endswith("_max:0") and "kernel" not in v.name}
    q = train(q, xtr, ytr, epochs=1, lr=1e-4)
    after = {name: float(v.numpy()) for name, v in ((v.name, v) for v in q.weights) if name in maxes}
    assert all(after[n] < maxes[n] for n in maxes if maxes[n] > 0), (maxes, after)   # pulled toward 0.6·max
    r = hw.verify(q, "tflite_int8", xte, yte)
    check_parity(r)
    assert r["max_abs_diff_lsb"] < 1e-3, r


def test_a_model_xnnpack_cannot_prepare_gets_an_error_naming_the_op():
    """A conv whose ReLU output is always 0 in calibration gets the converter's collapsed range (scale ~4e-9), so its
    requantization scale S_in·S_w/S_out is ~1e3: XNNPACK's operator refuses it and LiteRT fails the whole model
    under the delegate. ``verify(kernels="builtin")`` says which op and why; the builtin kernels run the model."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    dead = L.Conv2D(4, 1, activation="relu", kernel_initializer=keras.initializers.Constant(0.1),
                    bias_initializer=keras.initializers.Constant(-100.0))   # negative on every input
    x = dead(L.Conv2D(8, 3, padding="same", activation="relu")(inp))
    x = L.Concatenate()([L.Conv2D(8, 1, bias_initializer=keras.initializers.Constant(0.5))(x), inp])
    model = keras.Model(inp, L.Dense(10)(L.Flatten()(x)))
    data = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    _refused_by(model, data, "builtin", r"XNNPACK.*op 1 CONV_2D -> .*S_in·S_w/S_out from .*e\+03"
                                        r".*dead activation.*kernels='builtin_without_default_delegates'")


def _refused_by(model, data, kernels, match):
    """``model``, tflite_int8-quantized on ``data``, deploys bit-exact on the default kernels, and ``verify`` under
    ``kernels`` raises a ``KernelSetError`` matching ``match``."""
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=data)
    labels = np.zeros(len(data), np.int64)
    ref = hw.verify(q, "tflite_int8", data, labels, return_model=True)
    assert ref["max_abs_diff_lsb"] < 1e-3
    with pytest.raises(hw.KernelSetError, match=match):
        hw.verify(q, "tflite_int8", data, labels, kernels=kernels, tflite_model=ref["tflite_model"])


def test_a_model_the_reference_kernels_would_abort_on_gets_an_error_naming_the_op():
    """Logits constant over the calibration data (a Dense of zero kernel and bias) get the converter's collapsed
    range, scale ~4e-9. LiteRT's reference SOFTMAX checks that its input scale is over 2^-26 when the interpreter
    prepares it and aborts the process otherwise (a keras.applications MobileNetV3Large with random weights did).
    ``verify(kernels="builtin_ref")`` raises, naming the op, before that; the default kernels run the model."""
    L = keras.layers
    inp = keras.Input((6, 6, 1))
    h = L.Conv2D(4, 3, activation="relu", name="abort_conv")(inp)
    logits = L.Dense(5, kernel_initializer="zeros", name="abort_logits")(L.Flatten(name="abort_flatten")(h))
    model = keras.Model(inp, L.Softmax(name="abort_softmax")(logits))
    data = np.random.default_rng(0).uniform(0, 1, (32, 6, 6, 1)).astype(np.float32)
    _refused_by(model, data, "builtin_ref", r"reference kernels.*abort.*op \d+ SOFTMAX <- .*input scale 3.92e-09"
                                            r".*constant over the calibration data")


def test_a_normalization_planned_in_one_trace_runs_in_another():
    """The emulation's plan of a Normalization outlives the trace it is made in: made in a user's ``tf.function``,
    then run in ``verify``'s own trace. It held the 1/std tensor of the first graph ("out of scope" in the second,
    EfficientNetV2's preprocessing under XNNPACK); it now reads the constants in each call."""
    L = keras.layers
    x = np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3)).astype("float32")
    inp = keras.Input((8, 8, 3))
    norm = L.Normalization(mean=[120.0, 110.0, 100.0], variance=[3000.0, 2500.0, 2000.0])
    h = L.Conv2D(4, 3, padding="same", activation="relu")(norm(inp))
    model = keras.Model(inp, L.Dense(10)(L.Flatten()(h)))
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=x[:32])
    tf.function(lambda t: q(t, training=False))(x[:4])   # the plans are made in this trace
    r = hw.verify(q, "tflite_int8", x, np.zeros(64, np.int64))
    assert r["max_abs_diff_lsb"] < 1e-3 and r["integer_only"], r
