"""The one layer registry: a new layer kind is one ``register_layer`` call, and every part reads it
(per-channel axes, BN folding, the target's granularity rules, the integer emulation's op)."""
import numpy as np
import pytest

import qresearch
from qresearch import hardware as hw
from qresearch import keras, schemes, tf
from qresearch.hardware.layer_checks import layer_kind
from qresearch.quantizers import channels
from qresearch.schemes import folding
from qresearch.schemes import layers as registry

from .helpers import channel_levels, randomize_bn

L = keras.layers


class OutInDense(L.Layer):
    """y = x @ kernelᵀ + bias with the kernel stored (out, in): its output channels are axis 0."""

    def __init__(self, units, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.use_bias = units, use_bias

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", (self.units, int(input_shape[-1])))
        self.bias = self.add_weight("bias", (self.units,), initializer="zeros") if self.use_bias else None

    def call(self, x):
        y = tf.matmul(x, self.kernel, transpose_b=True)
        return y + self.bias if self.use_bias else y

    def get_config(self):
        return dict(super().get_config(), units=self.units, use_bias=self.use_bias)


def _fold_out_in(kernel, g):
    return kernel * g[:, None]


class MyDense(L.Dense):
    pass


@pytest.fixture(autouse=True)
def restore_registry():
    """Registrations here must not leak into other tests (constrain lists the declared classes)."""
    saved = dict(registry._LAYERS), dict(registry._DECLARED_KIND), dict(channels._AXES)
    yield
    for table, old in zip((registry._LAYERS, registry._DECLARED_KIND, channels._AXES), saved):
        table.clear()
        table.update(old)


def _register_out_in():
    return schemes.register_layer(OutInDense, weights=["kernel"], channel_axes={"kernel": (0,)},
                                  target_kind="dense", fold=("kernel", _fold_out_in))


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    x = L.BatchNormalization(name="bn")(OutInDense(5, name="oi")(inp))
    return keras.Model(inp, L.Dense(3, name="head")(L.ReLU()(x)))


def test_one_call_teaches_every_part():
    spec = _register_out_in()
    assert spec.target_kind == "dense" and spec.channel_axes == {"kernel": (0,)}
    assert channels.channel_axes_for(OutInDense(2), "kernel") == (0,)
    model = _model()
    randomize_bn(model)
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    scheme = {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True},
              "activations": {"quantizer": "minmax", "bits": 16}}
    q = qresearch.quantize(model, scheme, calibration_data=x, kernels=None)
    assert q.qresearch_info["float_layers"]["bn"] == "folded into oi"
    kernel = schemes.quantized_weights(q)["oi"]["kernel"]
    # symmetric per-channel grid along axis 0: each row is a multiple of its own max|w|/127
    step = np.abs(kernel).max(axis=1, keepdims=True) / 127
    assert kernel.shape == (5, 6) and np.allclose(kernel / step, np.round(kernel / step), atol=1e-2)
    assert (channel_levels(kernel, (0,)) <= 255).all()
    # the folded kernel keeps the float model's outputs (BN folded exactly, 8-bit weights)
    assert np.abs(q.predict(x, verbose=0) - model.predict(x, verbose=0)).max() < 0.1
    # the target reads the same registration: dense granularity (TFLite: per-tensor), declared class named
    assert layer_kind(OutInDense(2)) == "dense"
    out, notes = hw.constrain(scheme, "tflite_int8", adapt=True)
    added = {o["match"]: o["weights"] for o in out.to_dict()["overrides"]}
    assert added["OutInDense"] == {"per_channel": False} and added["Dense"] == {"per_channel": False}


def test_a_subclass_inherits_its_base_facts():
    spec = schemes.register_layer(MyDense, weights=["kernel"], activations=["activation"])
    base = schemes.layer_spec(L.Dense)
    assert (spec.target_kind, spec.fold, spec.integer_op) == (base.target_kind, base.fold, "FULLY_CONNECTED")
    assert registry.own_spec(MyDense) is spec and registry.own_spec(OutInDense) is None
    assert "MyDense" not in registry.classes_of_target_kind("dense")  # the per-layer check covers it
    assert layer_kind(MyDense(2)) == "dense"


def test_target_kind_is_checked_and_keras_aliases_resolve():
    with pytest.raises(qresearch.ConfigError, match="target_kind"):
        schemes.register_layer(OutInDense, weights=["kernel"], target_kind="matmul")
    assert registry.target_kind_of_name("Convolution2D") == "conv"
    assert registry.target_kind_of_name("Conv2DTranspose") == "conv_transpose"
    assert registry.classes_of_target_kind("dense") == ["Dense", "EinsumDense", "MultiHeadAttention"]


@pytest.mark.parametrize("make, rule", [
    (lambda: L.Conv2D(4, 3), folding.scale_last_axis),
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), folding.scale_depthwise),
    (lambda: L.Conv2DTranspose(4, 3), folding.scale_transposed),
])
def test_fold_rules_equal_the_layer_then_bn(make, rule):
    keras.utils.set_random_seed(1)
    inp = keras.Input((6, 6, 3))
    conv = make()
    bn = L.BatchNormalization()
    model = keras.Model(inp, bn(conv(inp)))
    randomize_bn(model)
    attr = schemes.layer_spec(conv).fold[0]
    assert schemes.layer_spec(conv).fold[1] is rule
    folded = folding.fold_weights(conv, bn, schemes.layer_spec(conv).fold)
    cfg = dict(conv.get_config(), use_bias=True)
    copy = type(conv).from_config(cfg)
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("float32")
    copy(x)
    getattr(copy, attr).assign(folded[attr])
    copy.bias.assign(folded["bias"])
    np.testing.assert_allclose(copy(x).numpy(), model(x, training=False).numpy(), atol=1e-4)


def test_bn_affine_is_bn_in_inference():
    keras.utils.set_random_seed(2)
    inp = keras.Input((5,))
    bn = L.BatchNormalization()
    model = keras.Model(inp, bn(inp))
    randomize_bn(model)
    g, b = folding.bn_affine(bn)
    x = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    np.testing.assert_allclose(x * g + b, model(x, training=False).numpy(), atol=1e-5)


def _token_model():
    inp = keras.Input((10,), dtype="int32")
    h = L.Conv1D(4, 3, name="conv")(L.Embedding(30, 6, name="embed")(inp))
    return keras.Model(inp, L.Dense(2, name="logits")(L.Flatten()(h)))


@pytest.mark.parametrize("weights, gathered_on_table_grid", [
    ({"quantizer": "minmax", "bits": 8}, True),
    ({"quantizer": "lsq", "bits": 4}, True),
    ({"quantizer": "minmax", "bits": 8, "per_channel": True}, False),   # one grid per column: no single grid
    ({"quantizer": "pot", "bits": 4, "pot_rounding": "mse"}, False),    # a range chosen from the tensor itself
])
def test_output_grid_keeps_an_embeddings_rows_on_its_tables_grid(weights, gathered_on_table_grid):
    """``LayerSpec.output_grid``: with every op quantized, the gathered rows stay on the per-tensor table's grid (a
    ``QuantizeLike`` of the table's quantizer) instead of getting an activation quantizer of their own."""
    assert registry.layer_spec(L.Embedding).output_grid == "embeddings"
    ids = np.random.default_rng(0).integers(0, 30, (16, 10))
    scheme = {"weights": dict(weights, per_channel=weights.get("per_channel", False)),
              "activations": {"quantizer": "minmax", "bits": 8}, "quantize_ops": "all"}
    q = qresearch.quantize(_token_model(), scheme, calibration_data=ids)
    after = q.get_layer("quant_conv")._inbound_nodes[0].inbound_layers
    assert isinstance(after, schemes.QuantizeLike) == gathered_on_table_grid, type(after)
    if gathered_on_table_grid:
        wrapper = q.get_layer("quant_embed")
        assert after.source_name == wrapper.name
        rows = keras.Model(q.inputs, wrapper.output)(ids[:4])
        np.testing.assert_array_equal(after(rows), rows)   # the rows are already on that grid
    else:
        assert isinstance(after, schemes.QuantizeInput)
    # quantizing conv/dense inputs only (the research presets): the conv reads the rows through its own quantizer
    inputs_only = qresearch.quantize(_token_model(), dict(scheme, quantize_ops="inputs"), calibration_data=ids)
    assert isinstance(inputs_only.get_layer("quant_conv")._inbound_nodes[0].inbound_layers, schemes.QuantizeInput)


def _attention_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 8))
    h = L.Dense(12, name="embed")(inp)
    h = L.LayerNormalization()(L.Add()([h, L.MultiHeadAttention(2, 4, name="mha")(h, h)]))
    return keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling1D()(h)))


def test_multi_head_attention_quantizes_its_projections_per_head_channel(tmp_path):
    """MultiHeadAttention is built in: its four projections' kernels are quantized, a query/key/value kernel
    (d, heads, key_dim) per (head, dimension) channel (a dotted weight's registered axes reach its quantizer), the
    output kernel per output feature; the QAT model trains, and saves and loads."""
    x = np.random.default_rng(0).normal(size=(32, 6, 8)).astype("float32")
    y = np.arange(32) % 3
    q = qresearch.quantize(_attention_model(), "minmax_nbit", calibration_data=x)
    mha = q.get_layer("quant_mha")
    ranges = {v.name.split("/")[-1][:-2]: tuple(v.shape) for v in mha.weights if v.name.endswith("kernel_max:0")}
    assert ranges == {"_query_dense_kernel_max": (2, 4), "_key_dense_kernel_max": (2, 4),
                      "_value_dense_kernel_max": (2, 4), "_output_dense_kernel_max": (12,)}
    # each (head, dimension) column of the query kernel on its own grid
    kernel = mha.layer._query_dense.kernel.numpy()
    quantized = mha.quantize_config.weights["_query_dense.kernel"](tf.constant(kernel), False,
                                                                   weights=mha._weight_vars[0][2])
    steps = np.abs(kernel).max(axis=0) / 7   # 4 bits, narrow: levels -7..7 (the attention is not first or last)
    np.testing.assert_allclose(quantized.numpy() / steps, np.round(quantized.numpy() / steps), atol=1e-3)
    q.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x, y, epochs=1, verbose=0)
    q.save(tmp_path / "attention")
    again = qresearch.load_model(tmp_path / "attention")
    np.testing.assert_array_equal(again.predict(x, verbose=0), q.predict(x, verbose=0))


def test_channel_axes_of_a_dotted_weight_reach_its_quantizer():
    assert channels.channel_axes_for(L.MultiHeadAttention(2, 4), "quant_mha/_key_dense_kernel:0") == (-2, -1)
    assert channels.channel_axes_for(L.MultiHeadAttention(2, 4), "_output_dense.kernel") == (-1,)


def test_activation_attrs_read_leaky_relus_alpha_from_the_function_or_the_partial():
    import functools

    # the converter's LEAKY_RELU takes the alpha the function computes with: its default, or the partial's keyword
    assert registry.activation_attrs(keras.activations.get("leaky_relu")) == {"alpha": 0.2}
    assert registry.activation_attrs("leaky_relu") == {"alpha": 0.2}
    slope = functools.partial(tf.nn.leaky_relu, alpha=0.05)
    assert registry.activation_name(slope) == "leaky_relu"
    assert registry.activation_attrs(slope) == {"alpha": 0.05}
    x = tf.constant([-2.0, 3.0])
    np.testing.assert_allclose(slope(x).numpy(), [-0.1, 3.0])
    # a function without argument facts has none; a partial of one stays unknown (simulated in float)
    assert registry.activation_attrs(keras.activations.get("sigmoid")) == {}
    assert registry.activation_name(functools.partial(keras.activations.relu, max_value=6.0)) == "partial"

    def leaky_relu(x, alpha):  # a user's function by the same name, without a default: nothing to read
        return tf.where(x > 0, x, alpha * x)
    assert registry.activation_attrs(leaky_relu) is None
