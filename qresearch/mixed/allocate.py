"""Bit allocation under a cost budget: an exact integer program, and a greedy fallback.

Problem (as in HAWQ-V3, Yao et al. ICML 2021, Eq. 11, and Sony MCT's mixed-precision search):
choose one width b_l from the allowed set B for every compute layer l to

    minimise   sum_l  S_l(b_l)                                  (S: sensitivity, any additive score)
    subject to sum_l  C_l(b_l, b_src(l))  <=  f * C_ref         (f: budget fraction; one row per budget)

where C is BOPs (MACs_l * b_l * b_src(l): a layer's input width is its source's width, see
``qresearch.mixed.graph``), weight memory (params_l * b_l + bias_l * 32) or a target's cost table
(``table_cost``: MACs_l * mac_cost(class, b_l, b_src(l)) + memory terms; ``qresearch.hardware.costs``),
and C_ref the cost with every layer at 8 bits.

Integer program: one binary x_{l,k} per layer and width (one-hot: sum_k x_{l,k} = 1). A BOPs term
couples two layers, so for a layer l whose source s is another layer we add pair binaries
z_{l,k,j} = x_{l,k} * x_{s,j}, linearised exactly by sum_j z_{l,k,j} = x_{l,k} and
sum_k z_{l,k,j} = x_{s,j} (with one-hot x, the only feasible z is the product). Solved with
``scipy.optimize.milp`` (HiGHS branch and bound). The greedy fallback lowers, one step at a time,
the layer with the smallest sensitivity increase per unit of cost saved until the budget holds,
then raises layers back while the budget allows (with several budgets, the excess and the cost
added are summed relative to each limit).
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qresearch.errors import ConfigError

_log = logging.getLogger(__name__)
COST_KINDS = ("bops", "memory", "table_cost")
PAIRED_KINDS = ("bops", "table_cost")  # kinds whose layer cost depends on its source's width too
SOLVERS = ("ilp", "greedy")
REFERENCE_BITS = 8


def parse_budget(budget) -> Dict[str, float]:
    """``{"bops": 0.25}``, ``{"bops": 0.15, "memory": 0.4}`` (every one must hold) or ``("memory", 0.3)``
    -> ``{kind: fraction of the 8-bit cost}``."""
    if isinstance(budget, Mapping):
        items = [(k, v) for k, v in budget.items() if v is not None]
    elif isinstance(budget, (tuple, list)) and len(budget) == 2 and isinstance(budget[0], str):
        items = [tuple(budget)]
    else:
        raise ConfigError(f"a budget is {{bops: fraction}}, {{memory: fraction}} or both, got {budget!r}")
    if not items:
        raise ConfigError(f"give a budget, e.g. {{bops: 0.25}} or {{memory: 0.3}}, got {budget!r}")
    out = {}
    for kind, frac in items:
        if kind not in COST_KINDS:
            raise ConfigError(f"budget kind must be one of {COST_KINDS}, got {kind!r}")
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac:
            raise ConfigError(f"budget {kind} must be a positive fraction of the 8-bit cost, got {frac!r}")
        out[str(kind)] = float(frac)
    return out


def layer_cost(row: Mapping[str, Any], kind: str, b: int, b_src: int, table=None) -> float:
    """One layer's cost of ``kind`` at width ``b`` reading a ``b_src``-bit input (``table``: a CostTable,
    needed by ``table_cost``)."""
    if kind == "bops":
        return float(row["macs"]) * b * b_src
    memory = float(row["params"]) * b + float(row["bias_params"]) * 32
    if kind == "memory":
        return memory
    if table is None:
        raise ConfigError("a table_cost budget needs a cost table: a target whose YAML has costs: "
                          "(qresearch.hardware.costs), or pass table=")
    return table.cost_at(row["class"], float(row["macs"]), b, b_src, memory, float(row["out_elements"]) * b)


def assignment_cost(rows: Sequence[Mapping[str, Any]], choice: Mapping[str, int], kind: str,
                    base_bits: int = REFERENCE_BITS, table=None) -> float:
    """Cost of ``choice`` (every row's layer must be in it); a merge-fed input is at ``base_bits``."""
    total = 0.0
    for r in rows:
        b = choice[r["name"]]
        src = r.get("source")
        total += layer_cost(r, kind, b, choice[src] if src is not None else base_bits, table)
    return total


def reference_cost(rows, kind: str, table=None) -> float:
    return assignment_cost(rows, {r["name"]: REFERENCE_BITS for r in rows}, kind, REFERENCE_BITS, table)


def objective(sens: Mapping[str, Mapping[int, float]], choice: Mapping[str, int]) -> float:
    return float(sum(sens[n][b] for n, b in choice.items()))


def _options(rows, allowed_bits, fixed) -> Dict[str, List[int]]:
    allowed = sorted({int(b) for b in allowed_bits})
    if not allowed:
        raise ConfigError("no allowed bit widths to allocate from")
    out = {}
    for r in rows:
        n = r["name"]
        out[n] = [int(fixed[n])] if n in fixed else allowed
    return out


def allocate(rows: Sequence[Mapping[str, Any]], sensitivities: Mapping[str, Mapping[int, float]], budget,
             allowed_bits: Iterable[int], fixed: Optional[Mapping[str, int]] = None, method: str = "ilp",
             base_bits: int = REFERENCE_BITS, time_limit: float = 30.0, table=None) -> Dict[str, Any]:
    """Per-layer widths minimising summed sensitivity within ``budget``.

    Args:
      rows: the cost model's per-layer rows (``qresearch.mixed.cost.cost(model)["layers"]``: name,
        source, macs, params, bias_params).
      sensitivities: ``{layer: {bits: score}}`` (lower is better); a fixed layer needs its width only.
      budget: ``{"bops": f}``, ``{"memory": f}``, ``{"table_cost": f}`` (needs ``table``) or several (each
        must hold): f x the all-8-bit cost.
      allowed_bits: candidate widths (e.g. a target's allowed weight widths that are also allowed
        activation widths).
      fixed: ``{layer: bits}`` held constant (e.g. first and last layers at 8).
      table: a ``CostTable`` (a target's ``costs:``), for a ``table_cost`` budget.
      method: "ilp" (scipy.optimize.milp; falls back to greedy when scipy is missing, the solver
        fails or runs out of ``time_limit`` without a solution) or "greedy".
    Returns:
      ``{"widths", "objective", "budgets": {kind: {fraction, limit, cost, reference, relative_cost,
      least_relative_cost (every free layer at the narrowest width)}},
      "solver", "status", "feasible"}``, and for the first budget kind ``kind``, ``fraction``, ``cost``,
      ``budget`` (the limit), ``reference``, ``relative_cost``.
    """
    fracs = parse_budget(budget)
    fixed = {k: int(v) for k, v in (fixed or {}).items()}
    options = _options(rows, allowed_bits, fixed)
    missing = [(n, b) for n, bs in options.items() for b in bs if b not in sensitivities.get(n, {})]
    if missing:
        raise ConfigError(f"no sensitivity for (layer, bits) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    refs = {k: reference_cost(rows, k, table) for k in fracs}
    limits = {k: fracs[k] * refs[k] for k in fracs}
    result = None
    if method == "ilp":
        try:
            result = _milp(rows, sensitivities, options, limits, base_bits, time_limit, table)
        except ImportError:
            _log.warning("scipy is not installed: allocating bits greedily")
        if result is None:
            _log.warning("the integer program gave no solution: allocating bits greedily")
    elif method != "greedy":
        raise ConfigError(f"allocation method must be 'ilp' or 'greedy', got {method!r}")
    if result is None:
        result = _greedy(rows, sensitivities, options, limits, base_bits, table)
    widths, solver, status = result
    budgets = {}
    narrowest = {n: min(bs) for n, bs in options.items()}   # every cost grows with the widths: the least reachable
    for k in fracs:
        c = assignment_cost(rows, widths, k, base_bits, table)
        least = assignment_cost(rows, narrowest, k, base_bits, table)
        budgets[k] = {"fraction": fracs[k], "limit": limits[k], "cost": c, "reference": refs[k],
                      "relative_cost": c / refs[k] if refs[k] else 0.0, "feasible": c <= limits[k] * (1 + 1e-9),
                      "least_relative_cost": least / refs[k] if refs[k] else 0.0}
    first = next(iter(fracs))
    b0 = budgets[first]
    return {"widths": widths, "objective": objective(sensitivities, widths), "budgets": budgets,
            "kind": first, "fraction": b0["fraction"], "cost": b0["cost"], "budget": b0["limit"],
            "reference": b0["reference"], "relative_cost": b0["relative_cost"],
            "solver": solver, "status": status, "feasible": all(b["feasible"] for b in budgets.values())}


def _milp(rows, sens, options, limits, base_bits, time_limit, table=None):
    from scipy.optimize import Bounds, LinearConstraint, milp

    index: Dict[Tuple, int] = {}
    for r in rows:
        for b in options[r["name"]]:
            index[("x", r["name"], b)] = len(index)
    names = {r["name"] for r in rows}
    for r in rows:
        src = r.get("source")
        if src is not None and src != r["name"]:
            if src not in names:
                raise ConfigError(f"layer {r['name']!r} has source {src!r}, which is not among the rows")
            for b, bs in itertools.product(options[r["name"]], options[src]):
                index[("z", r["name"], b, bs)] = len(index)
    n = len(index)
    c = np.zeros(n)
    for r in rows:
        for b in options[r["name"]]:
            c[index[("x", r["name"], b)]] = sens[r["name"]][b]
    a_rows, lb, ub = [], [], []
    for kind, limit in limits.items():  # one row per budget: sum of layer costs <= limit
        cost_row = np.zeros(n)
        for r in rows:
            name, src = r["name"], r.get("source")
            paired = src is not None and src != name and kind in PAIRED_KINDS
            for b in options[name]:
                if paired:
                    for bs in options[src]:
                        cost_row[index[("z", name, b, bs)]] = layer_cost(r, kind, b, bs, table)
                else:  # no source width in the cost (memory), or a constant / its own width
                    b_src = base_bits if src is None else b
                    cost_row[index[("x", name, b)]] = layer_cost(r, kind, b, b_src, table)
        a_rows.append(cost_row); lb.append(-np.inf); ub.append(limit)
    for r in rows:
        name, src = r["name"], r.get("source")
        one_hot = np.zeros(n)
        for b in options[name]:
            one_hot[index[("x", name, b)]] = 1
        a_rows.append(one_hot); lb.append(1); ub.append(1)
        if src is None or src == name:
            continue
        # z_{l,b,bs} = x_{l,b} * x_{s,bs}, linearised: its row sums are x_{l,b}, its column sums x_{s,bs}
        links = [(("x", name, b), [("z", name, b, bs) for bs in options[src]]) for b in options[name]]
        links += [(("x", src, bs), [("z", name, b, bs) for b in options[name]]) for bs in options[src]]
        for x_key, z_keys in links:  # sum of the z's = the x they belong to
            row = np.zeros(n)
            row[index[x_key]] = -1
            row[[index[z] for z in z_keys]] = 1
            a_rows.append(row); lb.append(0); ub.append(0)
    start = time.perf_counter()
    res = milp(c, constraints=LinearConstraint(np.array(a_rows), lb, ub), integrality=np.ones(n),
               bounds=Bounds(0, 1), options={"time_limit": float(time_limit)})
    _log.info("milp: %d variables, status %s (%s), %.2fs", n, res.status, res.message, time.perf_counter() - start)
    if res.x is None:
        return None
    x = np.round(res.x)
    widths = {r["name"]: next(b for b in options[r["name"]] if x[index[("x", r["name"], b)]] == 1) for r in rows}
    return widths, "milp", "optimal" if res.status == 0 else f"time limit ({res.message})"


def _greedy(rows, sens, options, limits, base_bits, table=None):
    choice = {n: max(bs) for n, bs in options.items()}

    def costs(ch):
        return {k: assignment_cost(rows, ch, k, base_bits, table) for k in limits}

    def excess(cs):  # how far over the budgets, each relative to its limit
        return sum(max(0.0, cs[k] / limits[k] - 1.0) for k in limits)

    def within(cs):
        return all(cs[k] <= limits[k] * (1 + 1e-9) for k in limits)

    def moves(direction):
        for n, bs in options.items():
            i = bs.index(choice[n]) + direction
            if 0 <= i < len(bs):
                yield n, bs[i], sens[n][bs[i]] - sens[n][choice[n]], costs(dict(choice, **{n: bs[i]}))

    cur = costs(choice)
    while not within(cur):  # lower: least sensitivity added per unit of (relative) excess removed
        best = _best((d_sens / (excess(cur) - excess(new)), n, b, new) for n, b, d_sens, new in moves(-1)
                     if excess(cur) - excess(new) > 0)
        if best is None:
            return choice, "greedy", "infeasible: every layer at its lowest width exceeds the budget"
        _, n, b, cur = best
        choice[n] = b
    while True:  # raise back: most sensitivity removed per unit of (relative) cost added, within budget
        best = _best((d_sens / max(sum(max(new[k] - cur[k], 0.0) / limits[k] for k in limits), 1e-12), n, b, new)
                     for n, b, d_sens, new in moves(+1) if within(new) and d_sens < 0)
        if best is None:
            return choice, "greedy", "heuristic"
        _, n, b, cur = best
        choice[n] = b


def _best(candidates):
    """The ``(score, ...)`` candidate of lowest score, the first of equals; None if there is none."""
    best = None
    for c in candidates:
        if best is None or c[0] < best[0]:
            best = c
    return best


def brute_force(rows, sensitivities, budget, allowed_bits, fixed=None, base_bits: int = REFERENCE_BITS, table=None):
    """Every assignment, for tests and tiny models: ``(widths, objective)`` of the best feasible one."""
    fracs = parse_budget(budget)
    fixed = {k: int(v) for k, v in (fixed or {}).items()}
    options = _options(rows, allowed_bits, fixed)
    limits = {k: f * reference_cost(rows, k, table) for k, f in fracs.items()}
    names = [r["name"] for r in rows]
    best = None
    for combo in itertools.product(*(options[n] for n in names)):
        choice = dict(zip(names, combo))
        if all(assignment_cost(rows, choice, k, base_bits, table) <= lim * (1 + 1e-9) for k, lim in limits.items()):
            obj = objective(sensitivities, choice)
            if best is None or obj < best[1] - 1e-12:
                best = (choice, obj)
    return best
