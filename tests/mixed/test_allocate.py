"""The integer program against brute force over every assignment; the greedy fallback within budget."""
import numpy as np
import pytest

import qresearch  # noqa: F401
from qresearch import keras
from qresearch.errors import ConfigError
from qresearch.mixed import allocate, assignment_cost, brute_force, cost, reference_cost

L = keras.layers
BITS = (8, 4, 2)


def chain_model():
    """5 compute layers in a chain: each layer's input width is its predecessor's."""
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="c0")(inp)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.ReLU(name="r")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", name="c1")(x)
    x = L.Flatten(name="f")(x)
    x = L.Dense(16, activation="relu", name="d0")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x))


def branch_model():
    """Two layers read one input, an Add (input width: the base 8 bits) feeds the rest."""
    inp = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, padding="same", name="a")(inp)
    b = L.Conv2D(4, 1, padding="same", name="b")(a)
    c = L.Conv2D(4, 3, padding="same", name="c")(a)
    s = L.Add(name="add")([b, c])
    x = L.Flatten()(L.Conv2D(2, 3, name="d")(s))
    return keras.Model(inp, L.Dense(3, name="e")(x))


def sensitivities(rows, seed):
    """Random, each layer more sensitive at fewer bits (as a real score tends to be)."""
    rng = np.random.default_rng(seed)
    out = {}
    for r in rows:
        base = rng.uniform(0.1, 2.0)
        out[r["name"]] = {b: base * (2.0 ** (8 - b) - 1) * rng.uniform(0.5, 1.5) for b in (8, 4, 3, 2)}
    return out


CASES = [("bops", f) for f in (0.07, 0.1, 0.2, 0.3, 0.5, 1.0)] + [("memory", f) for f in (0.3, 0.45, 0.6, 0.8)]


@pytest.mark.parametrize("builder", [chain_model, branch_model])
@pytest.mark.parametrize("kind,frac", CASES)
def test_ilp_equals_brute_force(builder, kind, frac):
    rows = cost(builder())["layers"]
    assert len(rows) == 5
    for seed in (0, 1):
        sens = sensitivities(rows, seed)
        best = brute_force(rows, sens, {kind: frac}, BITS)
        got = allocate(rows, sens, {kind: frac}, BITS)
        if best is None:
            assert not got["feasible"]
            continue
        assert got["solver"] == "milp" and got["feasible"]
        assert got["objective"] == pytest.approx(best[1], rel=1e-9, abs=1e-12)
        assert got["cost"] == pytest.approx(assignment_cost(rows, got["widths"], kind))
        assert got["cost"] <= frac * reference_cost(rows, kind) * (1 + 1e-9)


@pytest.mark.parametrize("bops,memory", [(0.15, 0.4), (0.3, 0.35), (0.1, 0.6), (0.5, 0.3)])
@pytest.mark.parametrize("method", ["ilp", "greedy"])
def test_bops_and_memory_budgets_together(bops, memory, method):
    rows = cost(chain_model())["layers"]
    sens = sensitivities(rows, 7)
    budget = {"bops": bops, "memory": memory}
    best = brute_force(rows, sens, budget, BITS)
    got = allocate(rows, sens, budget, BITS, method=method)
    assert set(got["budgets"]) == {"bops", "memory"}
    if best is None:
        assert not got["feasible"]
        return
    assert got["feasible"]
    for kind, frac in budget.items():
        assert assignment_cost(rows, got["widths"], kind) <= frac * reference_cost(rows, kind) * (1 + 1e-9)
    if method == "ilp":
        assert got["objective"] == pytest.approx(best[1])
    else:
        assert got["objective"] >= best[1] - 1e-9


def test_fixed_layers_are_held():
    rows = cost(chain_model())["layers"]
    sens = sensitivities(rows, 3)
    fixed = {"c0": 8, "logits": 8}
    best = brute_force(rows, sens, {"bops": 0.3}, BITS, fixed=fixed)
    got = allocate(rows, sens, {"bops": 0.3}, BITS, fixed=fixed)
    assert got["widths"]["c0"] == 8 and got["widths"]["logits"] == 8
    assert got["objective"] == pytest.approx(best[1])


@pytest.mark.parametrize("kind,frac", CASES)
def test_greedy_within_budget_and_not_better_than_optimum(kind, frac):
    rows = cost(chain_model())["layers"]
    sens = sensitivities(rows, 5)
    best = brute_force(rows, sens, {kind: frac}, BITS)
    got = allocate(rows, sens, {kind: frac}, BITS, method="greedy")
    assert got["solver"] == "greedy"
    if best is None:
        assert not got["feasible"] and got["status"].startswith("infeasible")
        return
    assert got["feasible"]
    assert got["objective"] >= best[1] - 1e-9


def test_uniform_8_bit_reference():
    rows = cost(chain_model())["layers"]
    ref = reference_cost(rows, "bops")
    assert ref == sum(r["macs"] for r in rows) * 64
    got = allocate(rows, sensitivities(rows, 0), {"bops": 1.0}, BITS)
    assert set(got["widths"].values()) == {8} and got["relative_cost"] == pytest.approx(1.0)


def test_infeasible_ilp_falls_back_to_greedy():
    rows = cost(chain_model())["layers"]
    got = allocate(rows, sensitivities(rows, 0), {"bops": 0.01}, BITS)
    assert got["solver"] == "greedy" and not got["feasible"]
    assert set(got["widths"].values()) == {2}
    # the least any choice reaches: every layer at 2 bits, or the held ones at theirs
    least = got["budgets"]["bops"]["least_relative_cost"]
    assert least == pytest.approx(assignment_cost(rows, {r["name"]: 2 for r in rows}, "bops") /
                                  reference_cost(rows, "bops")) and least > 0.01
    held = allocate(rows, sensitivities(rows, 0), {"bops": 0.01}, BITS, fixed={"c0": 8, "logits": 8})
    narrowest = dict({r["name"]: 2 for r in rows}, c0=8, logits=8)
    held_least = held["budgets"]["bops"]["least_relative_cost"]
    assert held_least == pytest.approx(assignment_cost(rows, narrowest, "bops") / reference_cost(rows, "bops"))
    assert held_least > least


def test_bad_budgets_fail_clearly():
    rows = cost(chain_model())["layers"]
    sens = sensitivities(rows, 0)
    with pytest.raises(ConfigError, match="budget kind"):
        allocate(rows, sens, {"latency": 0.3}, BITS)
    with pytest.raises(ConfigError, match="give a budget"):
        allocate(rows, sens, {}, BITS)
    with pytest.raises(ConfigError, match="no sensitivity"):
        allocate(rows, sens, {"bops": 0.3}, (8, 5))
