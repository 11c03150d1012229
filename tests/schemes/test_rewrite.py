"""The graph rewrite: fusion, BN folding, shared concat ranges, fixed ranges, mixed bit widths,
nested models, custom layers, refusals, reports."""
import numpy as np
import pytest

import qresearch
from qresearch import keras, schemes, tf, tfmot
from qresearch.errors import IncompatibleTargetError, UnsupportedLayerError
from qresearch.schemes import FixedRangeQuantizer

from . import models as M
from .helpers import (channel_levels, has_output_quantizer, input_quantizers, levels, randomize_bn, wrappers)

L = keras.layers
X, Y = M.data(32)
HI_RES = {"weights": {"quantizer": "minmax", "bits": 16, "per_channel": True},
          "activations": {"quantizer": "minmax", "bits": 16}}


@pytest.fixture(autouse=True)
def seeded():
    keras.utils.set_random_seed(0)
    schemes.register_layer(M.ScaledDense, weights=["kernel"], activations=["activation"], quantize_output=True)


# ------------------------------------------------------------ common patterns
def _pattern(name):
    inp = keras.Input(M.SHAPE)
    if name == "conv_relu":
        x = L.ReLU(name="act")(L.Conv2D(4, 3, name="conv")(inp))
    elif name == "conv_bn_relu":
        x = L.ReLU(name="act")(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inp)))
    elif name == "conv_relu_inside":
        x = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    elif name == "dense_relu":
        x = L.ReLU(name="act")(L.Dense(4, name="conv")(L.Flatten()(inp)))
    elif name == "dw_bn_relu6":
        x = L.ReLU(6.0, name="act")(L.BatchNormalization(name="bn")(L.DepthwiseConv2D(3, name="conv")(inp)))
    elif name == "conv_activation_relu6":
        x = L.Activation("relu6", name="act")(L.Conv2D(4, 3, name="conv")(inp))
    elif name == "add_relu":
        a = L.Conv2D(4, 3, padding="same", name="conv")(inp)
        b = L.Conv2D(4, 1, name="conv_b")(inp)
        x = L.ReLU(name="act")(L.Add(name="add")([a, b]))
    return keras.Model(inp, x)


PATTERNS = ["conv_relu", "conv_bn_relu", "conv_relu_inside", "dense_relu", "dw_bn_relu6", "conv_activation_relu6",
            "add_relu"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_kernel_quantized_and_relu_fused(pattern):
    model = randomize_bn(_pattern(pattern))
    q = qresearch.quantize(model, "tflite_int8", calibration_data=X)
    ws = wrappers(q)
    attr = "depthwise_kernel" if pattern == "dw_bn_relu6" else "kernel"
    assert attr in ws["conv"].quantize_config.weights
    lv = levels(q, "conv", attr) if attr == "kernel" else channel_levels(
        schemes.quantized_weights(q)["conv"][attr], (2, 3))
    assert (lv <= 255).all()
    if pattern == "conv_relu_inside":
        assert has_output_quantizer(q, "conv")  # output quantizer after the fused activation
    elif pattern == "add_relu":
        assert not has_output_quantizer(q, "add") and has_output_quantizer(q, "act")
        assert has_output_quantizer(q, "conv") and has_output_quantizer(q, "conv_b")
    else:  # no quantizer between the compute layer (+BN) and its ReLU; one after the ReLU
        assert not has_output_quantizer(q, "conv") and has_output_quantizer(q, "act")
    if "bn" in pattern:
        assert "bn" not in [l.name for l in q.layers] and "bn" not in ws  # folded
    assert len(input_quantizers(q)) == 1


def test_tfmot_trap_conv_then_relu_is_not_quantized_by_tfmot():
    """The tfmot 0.8.1 behaviour this package replaces: Conv2D followed by a ReLU layer gets a NoOp config."""
    model = _pattern("conv_relu")
    tq = tfmot.quantization.keras.quantize_model(model)
    conv = [l for l in tq.layers if getattr(l, "layer", None) is not None and l.layer.name == "conv"][0]
    assert conv.quantize_config.get_weights_and_quantizers(conv.layer) == []
    q = qresearch.quantize(model, "tflite_int8")
    assert wrappers(q)["conv"].quantize_config.weights


# ------------------------------------------------------------------ correctness
@pytest.mark.parametrize("model_name", list(M.BUILDERS))
def test_16_bit_model_matches_float_model(model_name):
    """At 16 bits the QAT model in inference mode reproduces the float model: the rewrite (nesting,
    BN folding, concat, custom layers, activation handling) preserves the function."""
    model = randomize_bn(M.BUILDERS[model_name]())
    q = qresearch.quantize(model, HI_RES, calibration_data=X)
    ref = model(X, training=False).numpy()
    out = q(X, training=False).numpy()
    scale = np.abs(ref).max()
    np.testing.assert_allclose(out, ref, atol=2e-3 * scale + 1e-4)


def test_bn_folded_into_kernel_exactly():
    model = randomize_bn(M.mobilenet_like())
    q = qresearch.quantize(model, "tflite_int8")
    stem, bn = model.get_layer("stem"), model.get_layer("stem_bn")
    g = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    inner = wrappers(q)["stem"].layer
    np.testing.assert_allclose(inner.kernel.numpy(), stem.kernel.numpy() * g, rtol=1e-6)
    np.testing.assert_allclose(inner.bias.numpy(), bn.beta.numpy() - bn.moving_mean.numpy() * g, rtol=1e-5,
                               atol=1e-6)
    dw, dw_bn = model.get_layer("dw"), model.get_layer("dw_bn")
    g = dw_bn.gamma.numpy() / np.sqrt(dw_bn.moving_variance.numpy() + dw_bn.epsilon)
    np.testing.assert_allclose(wrappers(q)["dw"].layer.depthwise_kernel.numpy(),
                               dw.depthwise_kernel.numpy() * g.reshape(8, 1), rtol=1e-6)
    assert schemes.describe(q)["float_layers"][0]["reason"].startswith("folded into")


def test_no_fold_keeps_bn_float_with_quantized_output():
    model = randomize_bn(M.mobilenet_like())
    q = qresearch.quantize(model, dict(schemes.get("tflite_int8").to_dict(), bn_folding="no_fold"),
                           calibration_data=X)
    bn = q.get_layer("stem_bn")  # float BN, fused with its ReLU6: no quantizer of its own
    assert isinstance(bn, L.BatchNormalization)
    # It reads the conv's own output: nothing quantizes the accumulator between conv and BN (TFLite folds the
    # pair; the papers' float BN normalises it); a QuantizeInput there cost 11 pt at W4 (notes/accuracy.md).
    producer = bn.input._keras_history.layer
    assert producer.name == "quant_stem" and producer.layer.name == "stem", producer.name
    assert not any(isinstance(getattr(l, "layer", l), L.BatchNormalization) and
                   l.input._keras_history.layer.__class__.__name__ == "QuantizeInput" for l in q.layers)
    assert not has_output_quantizer(q, "stem") and not has_output_quantizer(q, "stem_bn")
    assert has_output_quantizer(q, "stem_relu") and has_output_quantizer(q, "pw_bn")  # pw_bn feeds the Add
    assert wrappers(q)["pw_bn"].quantize_config.weights == {}
    np.testing.assert_allclose(bn.moving_mean.numpy(), model.get_layer("stem_bn").moving_mean.numpy())


def test_concat_shares_one_range_and_fixed_ranges():
    model = M.concat_multiply()
    q = qresearch.quantize(model, "tflite_int8", calibration_data=X)
    ws = wrappers(q)
    # producers of the concat (branch_a with fused relu, the separate ReLU after branch_b) have no quantizer
    relu_after_b = [l.name for l in q.layers if l.name.startswith("re_lu")][0]
    assert isinstance(q.get_layer(relu_after_b), L.ReLU)  # plain layer, no quantizer
    assert not has_output_quantizer(q, "branch_a")
    assert not has_output_quantizer(q, "branch_b")
    assert has_output_quantizer(q, "concat")
    assert ws["branch_a"].quantize_config.info["output_shared_with"] == "concat"
    # Multiply and Subtract (rejected by tfmot) quantize their outputs
    assert has_output_quantizer(q, "scale") and has_output_quantizer(q, "sub")
    # sigmoid inside Dense: quantized input, fixed output range; softmax likewise
    gate = ws["gate"].quantize_config
    assert gate.activations["activation"]["pre"] is not None
    assert isinstance(gate.output, FixedRangeQuantizer) and gate.output.range_max == 0.99609375
    assert isinstance(ws["probs"].quantize_config.output, FixedRangeQuantizer)
    probs = q(X, training=False).numpy()
    np.testing.assert_allclose(probs * 256, np.round(probs * 256), atol=1e-3)  # on the 1/256 grid


def test_softmax_layer_and_tanh_activation_fixed_ranges():
    inp = keras.Input((6,))
    x = L.Dense(6, activation="tanh", name="t")(inp)
    x = L.Dense(3, name="d")(x)
    out = L.Softmax(name="sm")(x)
    q = qresearch.quantize(keras.Model(inp, out), "tflite_int8", calibration_data=np.random.rand(8, 6))
    ws = wrappers(q)
    assert ws["t"].quantize_config.output.range_min == -1.0
    assert ws["t"].quantize_config.output.range_max == 0.9921875
    assert isinstance(ws["sm"].quantize_config.output, FixedRangeQuantizer)
    assert has_output_quantizer(q, "d")  # the logits feeding softmax are int8 in TFLite too


# ----------------------------------------------------------------- mixed bits
def _mixed_model():
    inp = keras.Input(M.SHAPE)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(x)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_c")(x)
    x = L.Flatten()(x)
    x = L.Dense(32, activation="relu", name="dense_1")(x)
    out = L.Dense(M.CLASSES, name="logits")(x)
    return keras.Model(inp, out)


@pytest.mark.parametrize("algo", [("lsq", "pact"), ("minmax", "minmax")])
def test_mixed_per_layer_bit_widths_take_effect(algo):
    w, a = algo
    scheme = {"weights": {"quantizer": w, "bits": 4, "per_channel": True},
              "activations": {"quantizer": a, "bits": 4},
              "overrides": [{"match": "dense_.*", "weights": {"bits": 8}},
                            {"match": "conv_b", "weights": {"bits": 2}, "activations": {"bits": 3}}],
              "skip": ["logits"], "first_last_bits": 8}
    q = qresearch.quantize(_mixed_model(), scheme, calibration_data=X)
    M.compile_model(q)
    q.run_eagerly = True
    q.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    ws = wrappers(q)
    assert "logits" not in ws  # skipped: float
    assert levels(q, "conv_b").max() <= 4          # 2 bits
    assert levels(q, "conv_c").max() <= 16         # 4 bits (scheme default)
    assert levels(q, "conv_c").max() > 4
    assert levels(q, "conv_a").max() > 16          # first compute layer: 8 bits
    assert levels(q, "dense_1").max() > 16         # override: 8 bits; also the last quantized layer
    assert ws["conv_b"].quantize_config.output.bits == 3
    assert ws["conv_c"].quantize_config.output.bits == 4
    assert ws["conv_a"].quantize_config.output.bits == 8
    report = schemes.describe(q)
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["conv_b"]["weights"]["kernel"]["bits"] == 2
    assert {"name": "logits", "class": "Dense", "reason": "skipped by the scheme"} in report["float_layers"]


def test_override_by_class_and_float_weights():
    scheme = {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True},
              "activations": {"quantizer": "minmax", "bits": 8},
              "overrides": [{"match": "DepthwiseConv2D", "weights": {"bits": 3}},
                            {"match": "Dense", "weights": None}]}
    q = qresearch.quantize(M.mobilenet_like(), scheme, calibration_data=X)
    ws = wrappers(q)
    assert ws["dw"].quantize_config.weights["depthwise_kernel"].bits == 3
    assert ws["logits"].quantize_config.weights == {} and ws["logits"].quantize_config.output is not None


def test_weights_only_and_compute_modes():
    base = schemes.get("tflite_int8").to_dict()
    q = qresearch.quantize(M.mobilenet_like(), dict(base, quantize_ops="weights_only"))
    assert not input_quantizers(q)
    assert all(w.quantize_config.output is None for w in wrappers(q).values())
    q = qresearch.quantize(M.mobilenet_like(), dict(base, quantize_ops="compute"))
    assert has_output_quantizer(q, "stem_relu") and not has_output_quantizer(q, "residual")
    assert not has_output_quantizer(q, "gap") and has_output_quantizer(q, "logits")


def test_inputs_mode_quantizes_only_what_compute_layers_read():
    """quantize_ops: inputs (the papers' and MQBench's academic convention): every compute layer reads a quantized
    tensor, nothing else is quantized: the residual Add adds float values, its output is off any grid."""
    scheme = dict(schemes.get("lsq").to_dict(), quantize_ops="inputs")
    model = randomize_bn(M.mobilenet_like())
    q = qresearch.quantize(model, scheme, calibration_data=X)
    assert not any(w.quantize_config.output is not None for w in wrappers(q).values())
    read = {l.name: l for l in input_quantizers(q)}
    assert set(read) == {"quantize_image", "quantize_stem_relu", "quantize_dw_relu", "quantize_gap"}
    # each one feeds a compute layer, and the tensors between (ReLU6 outputs, the Add, the pooling) stay float
    taps = keras.Model(q.inputs, [q.get_layer(n).output for n in ("quantize_stem_relu", "stem_relu", "residual")])
    on_grid, relu, added = (np.asarray(t) for t in taps(X))
    codes = np.unique(on_grid)
    assert len(codes) <= 2 ** 4 and codes.min() >= 0  # unsigned 4-bit after ReLU6
    assert len(np.unique(relu)) > 2 ** 4 and len(np.unique(added)) > 2 ** 4 * 2
    # the Add's output is the float sum of the (float) ReLU6 and the pointwise conv's float output
    pw = keras.Model(q.inputs, q.get_layer("residual").input)
    a, b = (np.asarray(t) for t in pw(X))
    np.testing.assert_array_equal(added, a + b)
    np.testing.assert_array_equal(a, relu)
    floats = str(schemes.describe(q)).split("float layers:")[1]
    assert all(f"{n} " in floats for n in ("stem_relu", "dw_relu", "residual", "gap"))
    assert floats.count("float by quantize_ops: inputs") == 4


def test_academic_target_quantizes_compute_inputs_only():
    every_op = dict(schemes.get("minmax_nbit").to_dict(), quantize_ops="all")
    q = qresearch.quantize(M.mobilenet_like(), every_op, hardware="academic", adapt=True, calibration_data=X)
    assert "quantize_ops: 'all' -> 'inputs' (set by target academic)" in q.qresearch_info["coercions"]
    assert not any(w.quantize_config.output is not None for w in wrappers(q).values())
    assert {l.name for l in input_quantizers(q)} == {"quantize_image", "quantize_stem_relu", "quantize_dw_relu",
                                                    "quantize_gap"}


# ------------------------------------------------------- custom layers, nesting
def test_custom_layer_registered_once_works_with_every_quantizer():
    for preset in ("tflite_int8", "lsq", "pact_lsq"):
        # every op quantized (the research presets' own quantize_ops, inputs, quantizes no layer's output)
        q = qresearch.quantize(M.custom_layer_model(), dict(schemes.get(preset).to_dict(), quantize_ops="all"),
                               calibration_data=X)
        cfg = wrappers(q)["scaled"].quantize_config
        assert list(cfg.weights) == ["kernel"] and cfg.output is not None
        assert cfg.output.signed is False or cfg.output.registry_name == "minmax"  # after relu: unsigned grid
        if preset != "tflite_int8":  # as shipped: its kernel is quantized and so is what it reads
            q = qresearch.quantize(M.custom_layer_model(), preset, calibration_data=X)
            w = wrappers(q)["scaled"]
            assert list(w.quantize_config.weights) == ["kernel"] and w.quantize_config.output is None
            reads = w.input._keras_history.layer
            assert reads in input_quantizers(q) and reads.quantizer.signed is False  # after relu: unsigned


class Unregistered(L.Layer):
    def call(self, x):
        return x * 2.0


def test_unsupported_layer_error_names_layer_class_and_fix():
    inp = keras.Input((4,))
    out = L.Dense(2)(Unregistered(name="doubler")(inp))
    model = keras.Model(inp, out)
    with pytest.raises(UnsupportedLayerError) as exc:
        qresearch.quantize(model, "tflite_int8")
    msg = str(exc.value)
    assert "'doubler'" in msg and "Unregistered" in msg
    assert "qresearch.schemes.register_layer(Unregistered" in msg and "skip" in msg
    q = qresearch.quantize(model, {"weights": {"quantizer": "minmax"}, "activations": {"quantizer": "minmax"},
                                   "skip": ["doubler"]})
    assert "doubler" not in wrappers(q)
    # the float layer's output is quantized before the Dense reads it
    assert len(input_quantizers(q)) == 1


def test_subclassed_model_refused_with_fix():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    model = Sub()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(UnsupportedLayerError, match="functional API"):
        qresearch.quantize(model, "tflite_int8")


def test_nested_model_is_flattened_and_bn_inside_folded():
    q = qresearch.quantize(randomize_bn(M.nested()), "tflite_int8", calibration_data=X)
    names = {l.name for l in q.layers}
    assert {"quant_bb_conv", "quant_mid", "quant_head_dense"} <= names
    assert not any(isinstance(l, keras.Model) for l in q.layers)
    assert wrappers(q)["bb_conv"].quantize_config.info["folded_bn"] == "bb_bn"


def test_hardware_checked_before_building():
    with pytest.raises(IncompatibleTargetError):
        qresearch.quantize(M.mobilenet_like(), "lsq", hardware="tflite_int8")
    q = qresearch.quantize(M.mobilenet_like(), "lsq", hardware="tflite_int8", adapt=True)
    assert q.qresearch_info["hardware"] == "tflite_int8" and q.qresearch_info["coercions"]
    assert all(w.quantize_config.weights["kernel"].bits == 8
               for n, w in wrappers(q).items() if "kernel" in w.quantize_config.weights)


def test_describe_reports_layers_float_layers_and_memory(capsys):
    q = qresearch.quantize(M.resnet_like(), "tflite_int8", calibration_data=X)
    report = schemes.describe(q, print_report=True)
    printed = capsys.readouterr().out
    assert "conv0" in printed and "weight memory" in printed
    floats = {r["name"]: r["reason"] for r in report["float_layers"]}
    assert any("pass-through" in r for r in floats.values())  # flatten, dropout, max pooling
    assert any(r.startswith("folded into conv0") for r in floats.values())
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["conv0"]["weights"]["kernel"] == {"quantizer": "minmax", "bits": 8, "per_channel": True}
    m = report["memory"]
    assert 0.25 < m["ratio"] < 0.35  # 8-bit kernels, 32-bit biases


def test_tf_op_layers_are_classified_not_rejected():
    """x * 0.5, tf.nn.relu, tf.concat, slicing, tf.reshape (TFOpLambda layers tfmot rejects)."""
    q = qresearch.quantize(M.tf_ops(), "tflite_int8", calibration_data=X)
    names = " ".join(l.name for l in q.layers)
    # tf.nn.relu, tf.concat and x * 0.5 are planned as the Keras layers they are (keras_layers_for_tf_ops: ReLU,
    # Concatenate, Rescaling): wrapped
    assert "quant_tf_nn_relu" in names and "quant_tf_concat" in names and "quantize_tf_concat" not in names
    assert "quant_tf_math_multiply" in names and "quantize_tf_math_multiply" not in names
    assert "quantize_tf_reshape" not in names  # reshape / slicing share their input's range
    assert not has_output_quantizer(q, "conv")  # conv → tf.nn.relu fused
    floats = {r["name"].split("_")[0]: r["reason"] for r in schemes.describe(q)["float_layers"]}
    assert floats["tf.reshape"].startswith("pass-through")


def test_class_match_is_exact():
    scheme = {"weights": {"quantizer": "minmax", "bits": 8}, "activations": {"quantizer": "minmax"},
              "overrides": [{"match": "Conv2D", "weights": {"bits": 4}}]}
    ws = wrappers(qresearch.quantize(M.mobilenet_like(), scheme))
    assert ws["stem"].quantize_config.weights["kernel"].bits == 4
    assert ws["dw"].quantize_config.weights["depthwise_kernel"].bits == 8  # DepthwiseConv2D subclasses Conv2D


class GatedBlock(L.Layer):
    """A composite custom layer (a Dense sublayer and an own weight), a second positional input,
    and no get_config: the kind of layer users write in a hurry."""

    def __init__(self, units):
        super().__init__()
        self.units = units
        self.inner = L.Dense(units)

    def build(self, input_shape):
        self.gate = self.add_weight("gate", shape=(self.units,), initializer="ones")

    def call(self, x, bias):
        return tf.nn.relu(self.inner(x) * self.gate + bias)


def test_composite_custom_layer_with_sublayer_weights_and_two_inputs():
    schemes.register_layer(GatedBlock, weights=["inner.kernel", "gate"], quantize_output=True)
    inp, extra = keras.Input((12,)), keras.Input((16,))
    x = GatedBlock(16)(inp, extra)
    out = L.Dense(3, name="head")(x)
    model = keras.Model([inp, extra], out)
    xs = [np.random.randn(32, 12).astype("float32"), np.random.randn(32, 16).astype("float32")]
    scheme = {"weights": {"quantizer": "lsq", "bits": 3}, "activations": {"quantizer": "pact", "bits": 8},
              "overrides": [{"match": "GatedBlock", "weights": {"bits": 2}}]}
    q = qresearch.quantize(model, scheme, calibration_data=xs)
    block = [n for n in wrappers(q) if n.startswith("gated_block")][0]
    qw = schemes.quantized_weights(q)[block]
    assert channel_levels(qw["inner.kernel"], (-1,)).max() <= 4
    assert len(np.unique(qw["gate"])) <= 4
    assert len(input_quantizers(q)) == 2  # both float inputs quantized before the block reads them
    q.compile("adam", "mse")
    q.fit(xs, np.zeros((32, 3)), verbose=0, batch_size=16)


def test_shared_layer_and_multi_output():
    inp = keras.Input((6,))
    shared = L.Dense(6, activation="relu", name="shared")
    a = shared(inp)
    b = shared(a)
    model = keras.Model(inp, [L.Dense(2, name="out_a")(a), L.Dense(3, name="out_b")(b)])
    x = np.random.randn(16, 6).astype("float32")
    q = qresearch.quantize(model, HI_RES, calibration_data=x)
    assert len([l for l in q.layers if l.name == "quant_shared"]) == 1
    for r, o in zip(model(x), q(x, training=False)):
        np.testing.assert_allclose(o.numpy(), r.numpy(), atol=1e-3)


def test_separable_conv_split_like_tflite_and_overrides_follow():
    scheme = {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True},
              "activations": {"quantizer": "minmax", "bits": 8},
              "overrides": [{"match": "sep", "weights": {"bits": 4}}]}
    model = randomize_bn(M.sequential())
    q = qresearch.quantize(model, scheme, calibration_data=X)
    ws = wrappers(q)
    assert ws["sep_depthwise"].quantize_config.weights["depthwise_kernel"].bits == 4
    assert ws["sep_pointwise"].quantize_config.weights["kernel"].bits == 4
    assert has_output_quantizer(q, "sep_depthwise")  # the tensor between the halves is int8 in TFLite
    assert ws["sep_pointwise"].quantize_config.info["folded_bn"] == "sep_bn"
    np.testing.assert_allclose(q(X, training=False).numpy(), model(X, training=False).numpy(), atol=0.15)


def test_unbuilt_model_and_wrong_attribute_errors_name_the_fix():
    model = keras.Sequential([L.Dense(3)])
    with pytest.raises(qresearch.ConfigError, match="build"):
        qresearch.quantize(model, "tflite_int8")

    class Odd(L.Layer):
        def build(self, s):
            self.w = self.add_weight("w", shape=(int(s[-1]), 2))

        def call(self, x):
            return tf.matmul(x, self.w)

    schemes.register_layer(Odd, weights=["kernel"])
    inp = keras.Input((3,))
    with pytest.raises(qresearch.ConfigError) as exc:
        qresearch.quantize(keras.Model(inp, Odd(name="odd")(inp)), "tflite_int8")
    assert "'kernel'" in str(exc.value) and "register_layer(Odd" in str(exc.value)


class TwoProjections(L.Layer):
    """Weights held by two sublayers and created on the first call (as MultiHeadAttention's): a user's layer."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.value_proj, self.gate_proj = L.Dense(units), L.Dense(units)

    def call(self, x):
        return self.value_proj(x) * tf.sigmoid(self.gate_proj(x))

    def get_config(self):
        return dict(super().get_config(), units=self.units)


def test_a_layer_with_sublayer_weights_by_registration_with_dotted_paths(tmp_path):
    """Weights held by sublayers and created on first call: the error's fix (dotted paths) works as printed."""
    inp = keras.Input((5, 8))
    model = keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(TwoProjections(4, name="two")(inp))))
    x = np.random.randn(8, 5, 8).astype("float32")
    with pytest.raises(UnsupportedLayerError) as exc:
        qresearch.quantize(model, "tflite_int8")
    assert "weights=['value_proj.kernel', 'gate_proj.kernel']" in str(exc.value)
    try:
        schemes.register_layer(TwoProjections, weights=["value_proj.kernel", "gate_proj.kernel"])
        q = qresearch.quantize(model, HI_RES, calibration_data=x)
        np.testing.assert_allclose(q(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-3)
        q = qresearch.quantize(model, {"weights": {"quantizer": "lsq", "bits": 2},
                                       "activations": {"quantizer": "lsq", "bits": 8}}, calibration_data=x)
        assert all(len(np.unique(v)) <= 4 for v in schemes.quantized_weights(q)["two"].values())
        path = str(tmp_path / "two")
        q.save(path)
        np.testing.assert_array_equal(qresearch.load_model(path)(x).numpy(), q(x).numpy())
    finally:  # leave the global registry as we found it
        from qresearch.schemes.layers import _LAYERS
        _LAYERS.pop(TwoProjections, None)


@pytest.mark.parametrize("make", [lambda: L.LSTM(4), lambda: L.GRU(4), lambda: L.Bidirectional(L.LSTM(4))],
                         ids=["lstm", "gru", "bidirectional"])
def test_recurrent_layers(make):
    """tfmot leaves RNN cells unsupported; here their kernels quantize and mixed bits apply."""
    inp = keras.Input((6, 5))
    model = keras.Model(inp, L.Dense(2, name="head")(make()(inp)))
    x = np.random.randn(8, 6, 5).astype("float32")
    q = qresearch.quantize(model, HI_RES, calibration_data=x)
    np.testing.assert_allclose(q(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-3)
    q = qresearch.quantize(model, {"weights": {"quantizer": "lsq", "bits": 2},
                                   "activations": {"quantizer": "lsq", "bits": 8}}, calibration_data=x)
    rnn = [n for n in schemes.quantized_weights(q) if n != "head"][0]
    values = schemes.quantized_weights(q)[rnn]
    assert len(values) in (2, 4) and all(len(np.unique(v)) <= 4 for v in values.values())


def test_average_pooling_requantized_onto_its_input_grid():
    q = qresearch.quantize(M.sequential(), "tflite_int8", calibration_data=X)
    like = [l for l in q.layers if isinstance(l, schemes.QuantizeLike)]
    assert len(like) == 1 and like[0].source_name == "quant_up"
    pooled = keras.Model(q.inputs, like[0].output)(X, training=False).numpy()
    src = q.get_layer("quant_up")
    lo, hi = (v.numpy() for v in (src._output_quantizer_vars["min"], src._output_quantizer_vars["max"]))
    scale = (hi - lo) / 255.0
    assert np.unique(np.round((pooled - lo) / scale, 3) % 1.0).size <= 2  # on the producer's grid
