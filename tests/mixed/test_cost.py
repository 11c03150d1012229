"""The cost model against numbers worked out by hand from the layer formulas."""
import pytest

import qresearch  # noqa: F401  (sets up Keras 2)
from qresearch import keras
from qresearch.errors import ConfigError
from qresearch.mixed import CostTable, Widths, compute_layers, cost

L = keras.layers


def conv_dw_dense():
    """10x10x3 -> Conv2D(4, 3x3, valid) 8x8x4 -> DepthwiseConv2D(3x3, stride 2, same, x2) 4x4x8
    -> Flatten 128 -> Dense(5)."""
    inp = keras.Input((10, 10, 3), name="input")
    x = L.Conv2D(4, 3, padding="valid", activation="relu", name="conv")(inp)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, use_bias=False, name="dw")(x)
    x = L.ReLU(name="relu")(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inp, L.Dense(5, name="fc")(x))


def test_conv_depthwise_dense_by_hand():
    rows = {r["name"]: r for r in cost(conv_dw_dense(), {"conv": 8, "dw": 4, "fc": 2})["layers"]}
    # MACs = output elements x products per output element
    assert rows["conv"]["macs"] == (8 * 8 * 4) * (3 * 3 * 3) == 6912      # H'W'C_out x kh kw C_in
    assert rows["dw"]["macs"] == (4 * 4 * 8) * (3 * 3) == 1152            # H'W'(C_in m) x kh kw
    assert rows["fc"]["macs"] == 5 * 128 == 640                           # units x in_features
    # input widths: conv reads the model input (its own width), dw reads conv, fc reads dw (via ReLU, Flatten)
    assert [(rows[n]["w_bits"], rows[n]["a_in_bits"], rows[n]["a_out_bits"]) for n in ("conv", "dw", "fc")] == \
        [(8, 8, 8), (4, 8, 4), (2, 4, 2)]
    # BOPs = MACs x w_bits x a_in_bits
    assert rows["conv"]["bops"] == 6912 * 8 * 8 == 442368
    assert rows["dw"]["bops"] == 1152 * 4 * 8 == 36864
    assert rows["fc"]["bops"] == 640 * 2 * 4 == 5120
    # weight memory = kernel elements x w_bits + bias elements x 32
    assert rows["conv"]["weight_bits"] == (3 * 3 * 3 * 4) * 8 + 4 * 32 == 992
    assert rows["dw"]["weight_bits"] == (3 * 3 * 4 * 2) * 4 == 288        # use_bias=False
    assert rows["fc"]["weight_bits"] == (128 * 5) * 2 + 5 * 32 == 1440
    # activation memory = output elements x a_out_bits
    assert rows["conv"]["activation_bits"] == 8 * 8 * 4 * 8 == 2048
    assert rows["dw"]["activation_bits"] == 4 * 4 * 8 * 4 == 512
    assert rows["fc"]["activation_bits"] == 5 * 2 == 10
    t = cost(conv_dw_dense(), {"conv": 8, "dw": 4, "fc": 2})["totals"]
    assert t["bops"] == 442368 + 36864 + 5120
    assert t["weight_bits"] == 992 + 288 + 1440
    assert t["macs"] == 6912 + 1152 + 640
    assert t["activation_peak_bits"] == 2048


def test_relu_chain_belongs_to_its_compute_layer():
    by = {c.name: c for c in compute_layers(conv_dw_dense())}
    assert by["conv"].source == "conv" and by["dw"].source == "conv" and by["fc"].source == "dw"
    assert by["dw"].chain == ["relu", "flat"]


def test_separable_transpose_conv1d_by_hand():
    inp = keras.Input((8, 8, 3))
    sep = L.SeparableConv2D(6, 3, strides=2, padding="same", depth_multiplier=2, name="sep")(inp)  # 4x4x6
    tr = L.Conv2DTranspose(5, 3, strides=2, padding="same", name="tr")(sep)                        # 8x8x5
    m2d = keras.Model(inp, tr)
    rows = {r["name"]: r for r in cost(m2d, {"sep": 4, "tr": 8})["layers"]}
    # separable: depthwise H'W'(C_in m) kh kw, then pointwise H'W' C_out (C_in m)
    assert rows["sep"]["parts"] == {"depthwise": 4 * 4 * 6 * 9, "pointwise": 4 * 4 * 6 * 6}
    assert rows["sep"]["macs"] == 864 + 576
    assert rows["sep"]["weight_bits"] == (3 * 3 * 3 * 2 + 6 * 6) * 4 + 6 * 32
    # transpose: every input element x kh kw C_out
    assert rows["tr"]["macs"] == (4 * 4 * 6) * (3 * 3 * 5) == 4320     # input 4x4x6 (the separable output)
    assert rows["tr"]["bops"] == 4320 * 8 * 4                  # input width = the separable layer's 4
    inp1 = keras.Input((10, 4))
    m1d = keras.Model(inp1, L.Conv1D(3, 5, name="c1")(inp1))   # (6, 3)
    (r,) = cost(m1d, {"c1": 3})["layers"]
    assert r["macs"] == (6 * 3) * (5 * 4) == 360
    assert r["bops"] == 360 * 3 * 3


def test_merge_input_is_at_base_width():
    inp = keras.Input((6,))
    a = L.Dense(4, name="a")(inp)
    b = L.Dense(4, name="b")(inp)
    s = L.Add(name="add")([a, b])
    m = keras.Model(inp, L.Dense(2, name="out")(s))
    rows = {r["name"]: r for r in cost(m, {"a": 2, "b": 3, "out": 4}, base_bits=8)["layers"]}
    assert rows["out"]["a_in_bits"] == 8 and rows["out"]["bops"] == 8 * 4 * 8
    assert rows["a"]["a_in_bits"] == 2 and rows["b"]["a_in_bits"] == 3


def test_explicit_widths_and_float_default():
    m = conv_dw_dense()
    rows = {r["name"]: r for r in cost(m, {"dw": Widths(w=4, a_in=6, a_out=5)})["layers"]}
    assert (rows["dw"]["bops"], rows["dw"]["activation_bits"]) == (1152 * 4 * 6, 128 * 5)
    assert rows["conv"]["w_bits"] == 8  # base_bits


def test_cost_table():
    table = {"unit": "pJ", "mac": {"default": {"w8a8": 1.0, "w4a8": 0.5, "w2a4": 0.25},
                                   "DepthwiseConv2D": {"w4a8": 2.0}},
             "weight_bit": 0.01}
    out = cost(conv_dw_dense(), {"conv": 8, "dw": 4, "fc": 2}, table=table)
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["conv"]["table_cost"] == pytest.approx(6912 * 1.0 + 992 * 0.01)
    assert rows["dw"]["table_cost"] == pytest.approx(1152 * 2.0 + 288 * 0.01)   # its own entry wins
    assert rows["fc"]["table_cost"] == pytest.approx(640 * 0.25 + 1440 * 0.01)
    assert out["totals"]["table_unit"] == "pJ"
    with pytest.raises(ConfigError, match="w3a3"):
        cost(conv_dw_dense(), {"conv": 3}, table={"mac": {"default": {"w8a8": 1.0}}})
    with pytest.raises(ConfigError, match="w<bits>a<bits>"):
        CostTable.from_dict({"mac": {"default": {"8x8": 1.0}}})


def test_an_embeddings_table_is_weight_memory_at_its_width():
    """An Embedding multiplies nothing; its table (here most of the model's weights) is weight memory at the
    layer's width and its output an activation at that width, so a memory budget can lower it."""
    inp = keras.Input((12,), dtype="int32")
    h = L.Conv1D(4, 3, name="conv")(L.Embedding(500, 8, name="embed")(inp))
    model = keras.Model(inp, L.Dense(2, name="fc")(L.Flatten()(h)))
    rows = {r["name"]: r for r in cost(model, {"embed": 4, "conv": 8, "fc": 8})["layers"]}
    assert [c.name for c in compute_layers(model)] == ["embed", "conv", "fc"]
    assert rows["embed"]["macs"] == rows["embed"]["bops"] == 0
    assert rows["embed"]["params"] == 500 * 8 and rows["embed"]["weight_bits"] == 500 * 8 * 4
    assert rows["embed"]["activation_bits"] == 12 * 8 * 4
    assert rows["conv"]["a_in_bits"] == 4 and rows["conv"]["bops"] == (10 * 4) * (3 * 8) * 8 * 4
    all8 = cost(model)["totals"]["weight_bits"]
    assert all8 == 500 * 8 * 8 + (3 * 8 * 4) * 8 + 4 * 32 + (40 * 2) * 8 + 2 * 32


def test_recurrent_layers_by_hand():
    """Per step, gates x units x (features + units) products (the cell's kernel and recurrent kernel), over the
    sequence; a Bidirectional counts both directions."""
    inp = keras.Input((10, 5))
    h = L.LSTM(8, return_sequences=True, name="lstm")(inp)
    h = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi")(h)
    h = L.GRU(6, name="gru")(h)
    rows = {r["name"]: r for r in cost(keras.Model(inp, L.Dense(2, name="fc")(h)))["layers"]}
    assert rows["lstm"]["macs"] == 10 * 4 * 8 * (5 + 8) and rows["lstm"]["params"] == 5 * 32 + 8 * 32
    assert rows["lstm"]["bias_params"] == 32 and rows["lstm"]["out_elements"] == 10 * 8
    assert rows["bi"]["macs"] == 2 * 10 * 4 * 4 * (8 + 4) and rows["bi"]["params"] == 2 * (8 * 16 + 4 * 16)
    assert rows["bi"]["bias_params"] == 2 * 16 and rows["gru"]["bias_params"] == 2 * 18   # GRU: reset_after
    assert rows["gru"]["macs"] == 10 * 3 * 6 * (8 + 6) and rows["gru"]["params"] == 8 * 18 + 6 * 18
    assert rows["gru"]["a_in_bits"] == 8 and rows["gru"]["bops"] == rows["gru"]["macs"] * 8 * 8


def test_a_sequence_of_unknown_length_is_refused_with_the_fix():
    inp = keras.Input((None, 5))
    model = keras.Model(inp, L.Dense(2)(L.LSTM(4, name="lstm")(inp)))
    with pytest.raises(ConfigError, match=r"'lstm' \(LSTM\) reads inputs of unknown length.*keras.Input"):
        cost(model)


def test_attention_counts_its_four_projections():
    """Each projection: the positions it reads (the query's for query and output, the value's for key and value)
    times its kernel; the bias is the four projections'. Self- and cross-attention."""
    inp = keras.Input((6, 8))
    h = L.Dense(12, name="embed")(inp)
    h = L.LayerNormalization()(L.Add()([h, L.MultiHeadAttention(2, 4, name="mha")(h, h)]))
    model = keras.Model(inp, L.Dense(3, name="fc")(L.GlobalAveragePooling1D()(h)))
    rows = {r["name"]: r for r in cost(model, {"embed": 8, "mha": 4, "fc": 8})["layers"]}
    assert rows["mha"]["macs"] == 6 * (12 * 2 * 4) * 4 and rows["mha"]["params"] == 4 * 96
    assert rows["mha"]["bias_params"] == 3 * 8 + 12 and rows["mha"]["weight_bits"] == 384 * 4 + 36 * 32
    assert rows["mha"]["a_in_bits"] == 8 and rows["mha"]["bops"] == 2304 * 4 * 8   # reads the Dense (one tensor)
    assert cost(model, {"embed": 2})["layers"][1]["a_in_bits"] == 2
    query, memory = keras.Input((5, 8)), keras.Input((7, 8))
    cross = keras.Model([query, memory], L.MultiHeadAttention(2, 4, name="cross")(query, memory))
    (row,) = cost(cross)["layers"]
    assert row["macs"] == 5 * 64 + 7 * 64 + 7 * 64 + 5 * 64
