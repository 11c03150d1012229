"""A table_cost budget (a target's costs: table): the ILP against brute force, its cost equal to the cost
model's table cost of the chosen widths, and a table that makes a layer class cheap changing the choice."""
import pytest

from qresearch.errors import ConfigError
from qresearch.hardware.costs import CostTable
from qresearch.mixed import allocate, assignment_cost, brute_force, cost

from .test_allocate import BITS, branch_model, chain_model, sensitivities

PAIRS = {f"w{w}a{a}": (w * a / 64.0) ** 0.7 for w in (8, 4, 2) for a in (8, 4, 2)}  # sub-linear in bits
TABLE = CostTable.from_dict({"unit": "pJ", "mac": {"default": PAIRS, "DepthwiseConv2D": {"w2a2": 0.9}},
                             "weight_bit": 0.002, "activation_bit": 0.01})


@pytest.mark.parametrize("builder", [chain_model, branch_model])
@pytest.mark.parametrize("frac", [0.2, 0.35, 0.5, 0.8])
def test_table_budget_ilp_equals_brute_force(builder, frac):
    model = builder()
    rows = cost(model)["layers"]
    for seed in (0, 1):
        sens = sensitivities(rows, seed)
        best = brute_force(rows, sens, {"table_cost": frac}, BITS, table=TABLE)
        got = allocate(rows, sens, {"table_cost": frac}, BITS, table=TABLE)
        if best is None:
            assert not got["feasible"]
            continue
        assert got["solver"] == "milp" and got["feasible"]
        assert got["objective"] == pytest.approx(best[1], rel=1e-9, abs=1e-12)
        # the allocation's cost = the cost model's table cost of those widths (CostTable.layer_cost on its rows)
        priced = cost(model, got["widths"], table=TABLE)["totals"]["table_cost"]
        assert got["cost"] == pytest.approx(priced)
        assert priced <= frac * cost(model, table=TABLE)["totals"]["table_cost"] * (1 + 1e-9)
        greedy = allocate(rows, sens, {"table_cost": frac}, BITS, table=TABLE, method="greedy")
        assert greedy["cost"] == pytest.approx(cost(model, greedy["widths"], table=TABLE)["totals"]["table_cost"])
        if greedy["feasible"]:  # a heuristic: never better than the optimum
            assert greedy["objective"] >= got["objective"] - 1e-12


def test_the_table_changes_the_choice():
    rows = cost(chain_model())["layers"]
    sens = {r["name"]: {8: 0.0, 4: 1.2, 2: 3.0} for r in rows}
    sens["dw"] = {8: 0.0, 4: 1.0, 2: 0.5}   # the depthwise layer is the least hurt, most at 2 bits (no ties)
    def table(dw_w2):  # the depthwise layer's MAC cost at 2-bit weights, whatever its input
        return CostTable.from_dict({"mac": {"default": PAIRS, "DepthwiseConv2D": {f"w2a{a}": dw_w2 for a in (8, 4, 2)}}})
    cheap = allocate(rows, sens, {"table_cost": 0.9}, BITS, table=table(0.0))
    dear = allocate(rows, sens, {"table_cost": 0.9}, BITS, table=table(5.0))  # 2-bit depthwise: 5x an 8-bit MAC
    assert cheap["feasible"] and dear["feasible"]
    assert cheap["widths"] == {"c0": 8, "dw": 2, "c1": 8, "d0": 8, "logits": 8}
    assert dear["widths"] == {"c0": 8, "dw": 4, "c1": 8, "d0": 8, "logits": 8}
    assert dear["widths"] == brute_force(rows, sens, {"table_cost": 0.9}, BITS, table=table(5.0))[0]


def test_table_budget_needs_a_table():
    rows = cost(chain_model())["layers"]
    with pytest.raises(ConfigError, match="table_cost budget needs a cost table"):
        assignment_cost(rows, {r["name"]: 8 for r in rows}, "table_cost")
