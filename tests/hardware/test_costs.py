"""A target's costs: table (qresearch.hardware.costs): validated with the field named; used by the cost model."""
import pytest

from qresearch import hardware, keras
from qresearch.errors import ConfigError
from qresearch.mixed import cost

L = keras.layers


def conv_dw_dense():
    """10x10x3 -> Conv2D(4, 3x3) 8x8x4 (6912 MACs) -> DepthwiseConv2D(3x3, /2, x2) 4x4x8 (1152) -> Dense(5) (640)."""
    inp = keras.Input((10, 10, 3))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, use_bias=False, name="dw")(x)
    x = L.Flatten()(L.ReLU()(x))
    return keras.Model(inp, L.Dense(5, name="fc")(x))


def _target(costs):
    d = hardware.get("academic").to_dict()
    d["costs"] = costs
    return hardware.Target.from_dict(d, source="t.yaml")


def test_costs_key_changes_the_cost():
    model = conv_dw_dense()
    table = {"unit": "pJ", "mac": {"default": {"w8a8": 1.0, "w4a8": 0.5, "w4a4": 0.2},
                                   "DepthwiseConv2D": {"w4a4": 0.1}}}
    t = _target(table)
    assert t.costs.unit == "pJ" and t.to_dict()["costs"]["mac"]["DepthwiseConv2D"] == {"w4a4": 0.1}
    plain = cost(model, {"conv": 4, "dw": 4, "fc": 4}, table=hardware.get("academic"))  # no table: no table cost
    assert "table_cost" not in plain["totals"]
    a = cost(model, {"conv": 4, "dw": 4, "fc": 4}, table=t)
    rows = {r["name"]: r for r in a["layers"]}
    # every layer reads a 4-bit input (conv: the model input takes its consumer's width): pair w4a4
    assert rows["conv"]["table_cost"] == pytest.approx(6912 * 0.2)
    assert rows["dw"]["table_cost"] == pytest.approx(1152 * 0.1)       # its class entry wins
    assert rows["fc"]["table_cost"] == pytest.approx(640 * 0.2)
    mixed8 = cost(model, {"conv": 8, "dw": 4, "fc": 4}, table=t)["layers"]
    assert [r["table_cost"] for r in mixed8] == pytest.approx([6912 * 1.0, 1152 * 0.5, 640 * 0.2])  # dw: w4a8
    cheaper = _target({"mac": {"default": {"w8a8": 1.0, "w4a8": 0.25, "w4a4": 0.1}}})
    assert cost(model, {"conv": 4, "dw": 4, "fc": 4}, table=cheaper)["totals"]["table_cost"] < a["totals"]["table_cost"]
    assert {k: v for k, v in a["totals"].items() if not k.startswith("table")} == plain["totals"]  # BOPs unchanged


@pytest.mark.parametrize("costs, match", [
    ({"unit": "pJ"}, r"t.yaml: field 'costs' needs 'mac'"),
    ({"mac": {"default": {"8x8": 1.0}}}, r"costs'\.mac\.default\.8x8.*w<bits>a<bits>"),
    ({"mac": {"default": {"w8a8": -1}}}, r"non-negative"),
    ({"mac": {"default": {"w8a8": 1}}, "energy": 2}, r"unknown key 'energy'; valid keys: unit, mac"),
    ({"mac": {"default": {"w8a8": 1}}, "weight_bit": "x"}, r"weight_bit must be a non-negative number"),
])
def test_bad_costs_fail_naming_the_field(costs, match):
    with pytest.raises(ConfigError, match=match):
        _target(costs)


def test_a_pair_missing_from_the_table_is_named():
    with pytest.raises(ConfigError, match="w2a2.*add it to the target's costs.mac"):
        cost(conv_dw_dense(), {"conv": 2}, table=_target({"mac": {"default": {"w8a8": 1.0}}}))
