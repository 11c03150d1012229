"""A width choice becomes a plain scheme that quantizes each layer at exactly its width."""
import numpy as np
import pytest

import qresearch
from qresearch import schemes
from qresearch.models import build_model
from qresearch.mixed import Widths, compute_layers, cost, qat_cost, qat_widths, reads_own_inputs, to_scheme


def _choice(model, widths):
    return {c.name: b for c, b in zip(compute_layers(model), widths)}


@pytest.mark.parametrize("preset", ["lsq", "minmax_nbit"])
def test_lenet_widths_realised(preset):
    model = build_model({"name": "lenet5"}, (8, 8, 1), 10)
    choice = _choice(model, [8, 3, 2, 4, 8])
    spec = to_scheme(preset, choice, model)
    assert spec["first_last_bits"] is None
    spec["quantize_ops"] = "all"  # every op: inputs at their producer's width (inputs: test_inputs_mode_...)
    # one override per compute layer, naming it and its chain (pooling, flatten) exactly
    assert [o["match"] for o in spec["overrides"]] == ["(?:conv_0|pool_0)", "(?:conv_1|pool_1|flatten)",
                                                      "dense_0", "dense_1", "logits"]
    assert [(o["weights"]["bits"], o["activations"]["bits"]) for o in spec["overrides"]] == \
        [(b, b) for b in choice.values()]
    q = qresearch.quantize(model, spec, calibration_data=np.random.default_rng(0).random((16, 8, 8, 1), "float32"))
    rows = {r["name"]: r for r in schemes.describe(q)["layers"]}
    for name, b in choice.items():      # describe: every compute layer's weights at its width
        assert [v["bits"] for v in rows[name]["weights"].values()] == [b]
    got = qat_widths(q)                 # and its input at its source's width, its output at its own
    assert got == {"conv_0": Widths(8, 8, 8), "conv_1": Widths(3, 8, 3), "dense_0": Widths(2, 3, 2),
                   "dense_1": Widths(4, 2, 4), "logits": Widths(8, 4, 8)}
    assert qat_cost(model, q)["totals"] == cost(model, choice)["totals"]


def test_mobilenet_bn_relu_chain_and_add_realised():
    model = build_model({"name": "mobilenet_tiny", "blocks": [[16, 1], [24, 2]]}, (8, 8, 1), 10)
    layers = compute_layers(model)
    choice = _choice(model, [8, 4, 3, 2, 4, 3, 2, 8, 4])
    q = qresearch.quantize(model, dict(to_scheme("lsq", choice, model), quantize_ops="all"),
                           calibration_data=np.random.default_rng(0).random((16, 8, 8, 1), "float32"))
    got = qat_widths(q)
    expected = cost(model, choice)["layers"]
    for r in expected:   # the cost model's widths are the ones the QAT model has
        assert got[r["name"]] == Widths(r["w_bits"], r["a_in_bits"], r["a_out_bits"]), r["name"]
    # the Add (not allocated) runs at the base 8 bits, which its consumer's input width assumes
    assert {c.name: c.source for c in layers}["block1_expand_conv"] is None
    assert got["block1_expand_conv"].a_in == 8
    assert qat_cost(model, q)["totals"]["bops"] == cost(model, choice)["totals"]["bops"]


@pytest.mark.parametrize("preset", ["lsq", "tflite_int8"])
def test_resnet_add_relu_realised(preset):
    """ResNet: BN folded into each conv, ReLU layers, residual Adds (the ReLU after an Add belongs to no
    compute layer: base 8 bits), 1x1 shortcut convs reading a block's input."""
    model = build_model({"name": "resnet20", "depth": 8, "width": 4}, (8, 8, 3), 10)
    rng = np.random.default_rng(1)
    choice = {c.name: int(rng.choice([8, 4, 3, 2])) for c in compute_layers(model)}
    q = qresearch.quantize(model, dict(to_scheme(preset, choice, model), quantize_ops="all"),
                           calibration_data=rng.random((8, 8, 8, 3), "float32"))
    got = qat_widths(q)
    for r in cost(model, choice)["layers"]:
        assert got[r["name"]] == Widths(r["w_bits"], r["a_in_bits"], r["a_out_bits"]), r["name"]


@pytest.mark.parametrize("model_cfg", [{"name": "lenet5"}, {"name": "resnet20", "depth": 8, "width": 4},
                                       {"name": "mobilenet_tiny", "blocks": [[16, 1], [24, 2]]}])
def test_inputs_mode_widths_realised(model_cfg):
    """quantize_ops: inputs (the academic target's): each layer reads its input at its own width, outputs stay
    float until their first compute reader quantizes them; the cost model with own_inputs is what the QAT model has."""
    model = build_model(model_cfg, (8, 8, 3), 10)
    rng = np.random.default_rng(2)
    choice = {c.name: int(rng.choice([8, 4, 3, 2])) for c in compute_layers(model)}
    spec = dict(to_scheme("lsq", choice, model), quantize_ops="inputs")
    q = qresearch.quantize(model, spec, calibration_data=rng.random((8, 8, 8, 3), "float32"))
    got = qat_widths(q)
    rows = cost(model, choice, own_inputs=True)["layers"]
    for r in rows:
        assert got[r["name"]] == Widths(r["w_bits"], r["a_in_bits"], r["a_out_bits"]), r["name"]
        assert r["a_in_bits"] == r["w_bits"] == choice[r["name"]]
    assert rows[-1]["a_out_bits"] == 32  # the logits: nothing reads them
    assert qat_cost(model, q)["totals"] == cost(model, choice, own_inputs=True)["totals"]
    assert cost(model, choice, own_inputs=True)["totals"]["bops"] == sum(
        r["macs"] * choice[r["name"]] ** 2 for r in rows)


@pytest.mark.parametrize("quantize_ops, own", [("inputs", True), ("all", False), ("compute", False)])
def test_the_cost_model_reads_inputs_as_the_scheme_quantizes_them(quantize_ops, own):
    scheme = dict(schemes.get("lsq").to_dict(), quantize_ops=quantize_ops)
    assert reads_own_inputs(scheme) is own
    assert reads_own_inputs("lsq") is True and reads_own_inputs("tflite_int8") is False


def test_an_embeddings_output_is_read_at_its_tables_width():
    """With every op quantized, an Embedding's output stays on its table's grid (a QuantizeLike of the table's
    quantizer, no quantizer of its own): the layer reading it reads 8 bits, not float."""
    from qresearch import keras

    inp = keras.Input((12,), dtype="int32")
    h = keras.layers.Conv1D(8, 3, name="conv")(keras.layers.Embedding(50, 8, name="embed")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(keras.layers.GlobalMaxPooling1D()(h)))
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8",
                           calibration_data=np.random.default_rng(0).integers(0, 50, (16, 12)))
    assert qat_widths(q)["conv"] == Widths(8, 8, 8)
    assert qat_cost(model, q)["totals"] == cost(model, {c.name: 8 for c in compute_layers(model)})["totals"]


def test_a_recurrent_models_realised_widths_are_the_priced_ones():
    """LSTM, Bidirectional and GRU are priced (mixed/cost.py) at the widths the quantized model really has."""
    from qresearch import keras

    L = keras.layers
    inp = keras.Input((10, 5))
    h = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi")(L.LSTM(8, return_sequences=True, name="lstm")(inp))
    model = keras.Model(inp, L.Dense(2, name="fc")(L.GRU(6, name="gru")(h)))
    q = qresearch.quantize(model, "minmax_nbit", calibration_data=np.random.default_rng(0).random((16, 10, 5)))
    assert set(qat_widths(q)) == {"lstm", "bi", "gru", "fc"}
    priced = cost(model, {"lstm": 8, "bi": 4, "gru": 4, "fc": 8}, own_inputs=True)   # first/last at 8
    assert qat_cost(model, q)["totals"] == priced["totals"] and priced["totals"]["macs"] > 10_000


@pytest.mark.parametrize("preset", ["minmax_nbit", "tflite_int8"])
def test_an_attention_models_realised_widths_are_the_priced_ones(preset):
    """MultiHeadAttention is priced (its projections) at the widths the quantized model has, reading its input
    as quantized (conv/dense inputs, or every op)."""
    from qresearch import keras

    L = keras.layers
    inp = keras.Input((6, 8))
    h = L.Dense(12, name="embed")(inp)
    h = L.LayerNormalization()(L.Add()([h, L.MultiHeadAttention(2, 4, name="mha")(h, h)]))
    model = keras.Model(inp, L.Dense(3, name="fc")(L.GlobalAveragePooling1D()(h)))
    q = qresearch.quantize(model, preset, calibration_data=np.random.default_rng(0).random((16, 6, 8)))
    assert {"embed", "mha", "fc"} <= set(qat_widths(q))
    own = reads_own_inputs(preset)
    bits = {"embed": 8, "mha": 4, "fc": 8} if preset == "minmax_nbit" else {"embed": 8, "mha": 8, "fc": 8}
    assert qat_cost(model, q)["totals"] == cost(model, bits, own_inputs=own)["totals"]
