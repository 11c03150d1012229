"""Bit allocation under a cost budget: an exact integer program, and a greedy fallback.

Problem (as in HAWQ-V3, Yao et al. ICML 2021, Eq. 11, and Sony MCT's mixed-precision search):
choose one width b_l from the allowed set B for every compute layer l to

    minimise   sum_l  S_l(b_l)                                  (S: sensitivity, any additive score)
    subject to sum_l  C_l(b_l, b_src(l))  <=  f * C_ref         (f: budget fraction)

where C is BOPs (MACs_l * b_l * b_src(l): a layer's input width is its source's width, see
``qresearch.mixed.graph``) or weight memory (params_l * b_l + bias_l * 32), and C_ref the cost
with every layer at 8 bits.

Integer program: one binary x_{l,k} per layer and width (one-hot: sum_k x_{l,k} = 1). A BOPs term
couples two layers, so for a layer l whose source s is another layer we add pair binaries
z_{l,k,j} = x_{l,k} * x_{s,j}, linearised exactly by sum_j z_{l,k,j} = x_{l,k} and
sum_k z_{l,k,j} = x_{s,j} (with one-hot x, the only feasible z is the product). Solved with
``scipy.optimize.milp`` (HiGHS branch and bound). The greedy fallback lowers, one step at a time,
the layer with the smallest sensitivity increase per unit of cost saved until the budget holds,
then raises layers back while the budget allows.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qresearch.errors import ConfigError

_log = logging.getLogger(__name__)
COST_KINDS = ("bops", "memory")
REFERENCE_BITS = 8


def parse_budget(budget) -> Tuple[str, float]:
    """``{"bops": 0.25}`` / ``("memory", 0.3)`` -> (kind, fraction of the 8-bit cost)."""
    if isinstance(budget, Mapping):
        items = [(k, v) for k, v in budget.items() if v is not None]
        if len(items) != 1:
            raise ConfigError(f"give one budget, e.g. {{bops: 0.25}} or {{memory: 0.3}}, got {dict(budget)!r}")
        kind, frac = items[0]
    elif isinstance(budget, (tuple, list)) and len(budget) == 2:
        kind, frac = budget
    else:
        raise ConfigError(f"a budget is {{bops: fraction}} or {{memory: fraction}}, got {budget!r}")
    if kind not in COST_KINDS:
        raise ConfigError(f"budget kind must be one of {COST_KINDS}, got {kind!r}")
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac:
        raise ConfigError(f"budget {kind} must be a positive fraction of the 8-bit cost, got {frac!r}")
    return kind, float(frac)


def layer_cost(row: Mapping[str, Any], kind: str, b: int, b_src: int) -> float:
    if kind == "bops":
        return float(row["macs"]) * b * b_src
    return float(row["params"]) * b + float(row["bias_params"]) * 32


def assignment_cost(rows: Sequence[Mapping[str, Any]], choice: Mapping[str, int], kind: str,
                    base_bits: int = REFERENCE_BITS) -> float:
    """Cost of ``choice`` (every row's layer must be in it); a merge-fed input is at ``base_bits``."""
    total = 0.0
    for r in rows:
        b = choice[r["name"]]
        src = r.get("source")
        total += layer_cost(r, kind, b, choice[src] if src is not None else base_bits)
    return total


def reference_cost(rows, kind: str) -> float:
    return assignment_cost(rows, {r["name"]: REFERENCE_BITS for r in rows}, kind, REFERENCE_BITS)


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
             base_bits: int = REFERENCE_BITS, time_limit: float = 30.0) -> Dict[str, Any]:
    """Per-layer widths minimising summed sensitivity within ``budget``.

    Args:
      rows: the cost model's per-layer rows (``qresearch.mixed.cost.cost(model)["layers"]``: name,
        source, macs, params, bias_params).
      sensitivities: ``{layer: {bits: score}}`` (lower is better); a fixed layer needs its width only.
      budget: ``{"bops": f}`` or ``{"memory": f}``: f x the all-8-bit cost.
      allowed_bits: candidate widths (e.g. a target's allowed weight widths that are also allowed
        activation widths).
      fixed: ``{layer: bits}`` held constant (e.g. first and last layers at 8).
      method: "ilp" (scipy.optimize.milp; falls back to greedy when scipy is missing, the solver
        fails or runs out of ``time_limit`` without a solution) or "greedy".
    Returns:
      ``{"widths", "objective", "cost", "budget", "kind", "fraction", "reference", "solver", "feasible"}``.
    """
    kind, frac = parse_budget(budget)
    fixed = {k: int(v) for k, v in (fixed or {}).items()}
    options = _options(rows, allowed_bits, fixed)
    missing = [(n, b) for n, bs in options.items() for b in bs if b not in sensitivities.get(n, {})]
    if missing:
        raise ConfigError(f"no sensitivity for (layer, bits) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    ref = reference_cost(rows, kind)
    limit = frac * ref
    result = None
    if method == "ilp":
        try:
            result = _milp(rows, sensitivities, options, kind, limit, base_bits, time_limit)
        except ImportError:
            _log.warning("scipy is not installed: allocating bits greedily")
        if result is None:
            _log.warning("the integer program gave no solution: allocating bits greedily")
    elif method != "greedy":
        raise ConfigError(f"allocation method must be 'ilp' or 'greedy', got {method!r}")
    if result is None:
        result = _greedy(rows, sensitivities, options, kind, limit, base_bits)
    widths, solver, status = result
    c = assignment_cost(rows, widths, kind, base_bits)
    return {"widths": widths, "objective": objective(sensitivities, widths), "cost": c, "budget": limit,
            "kind": kind, "fraction": frac, "reference": ref, "relative_cost": c / ref if ref else 0.0,
            "solver": solver, "status": status, "feasible": c <= limit * (1 + 1e-9)}


def _milp(rows, sens, options, kind, limit, base_bits, time_limit):
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
    cost_row = np.zeros(n)
    for r in rows:
        name, src = r["name"], r.get("source")
        for b in options[name]:
            c[index[("x", name, b)]] = sens[name][b]
            if src is None:
                cost_row[index[("x", name, b)]] = layer_cost(r, kind, b, base_bits)
            elif src == name or kind == "memory":
                cost_row[index[("x", name, b)]] = layer_cost(r, kind, b, b)
        if src is not None and src != name and kind == "bops":
            for b, bs in itertools.product(options[name], options[src]):
                cost_row[index[("z", name, b, bs)]] = layer_cost(r, kind, b, bs)
    a_rows, lb, ub = [cost_row], [-np.inf], [limit]
    for r in rows:
        name, src = r["name"], r.get("source")
        one_hot = np.zeros(n)
        for b in options[name]:
            one_hot[index[("x", name, b)]] = 1
        a_rows.append(one_hot); lb.append(1); ub.append(1)
        if src is None or src == name:
            continue
        for b in options[name]:  # sum_j z_{l,b,j} = x_{l,b}
            row = np.zeros(n)
            row[index[("x", name, b)]] = -1
            for bs in options[src]:
                row[index[("z", name, b, bs)]] = 1
            a_rows.append(row); lb.append(0); ub.append(0)
        for bs in options[src]:  # sum_k z_{l,k,bs} = x_{s,bs}
            row = np.zeros(n)
            row[index[("x", src, bs)]] = -1
            for b in options[name]:
                row[index[("z", name, b, bs)]] = 1
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


def _greedy(rows, sens, options, kind, limit, base_bits):
    choice = {n: max(bs) for n, bs in options.items()}
    cost = assignment_cost(rows, choice, kind, base_bits)

    def moves(direction):
        for n, bs in options.items():
            i = bs.index(choice[n]) + direction
            if 0 <= i < len(bs):
                new = dict(choice, **{n: bs[i]})
                yield n, bs[i], sens[n][bs[i]] - sens[n][choice[n]], assignment_cost(rows, new, kind, base_bits)

    while cost > limit:  # lower: least sensitivity added per unit of cost saved
        best = None
        for n, b, d_sens, new_cost in moves(-1):
            saved = cost - new_cost
            if saved <= 0:
                continue
            score = d_sens / saved
            if best is None or score < best[0]:
                best = (score, n, b, new_cost)
        if best is None:
            return choice, "greedy", "infeasible: every layer at its lowest width exceeds the budget"
        _, n, b, cost = best
        choice[n] = b
    improved = True
    while improved:  # raise back: most sensitivity removed per unit of cost added, within the budget
        improved, best = False, None
        for n, b, d_sens, new_cost in moves(+1):
            if new_cost > limit or d_sens >= 0:
                continue
            score = d_sens / max(new_cost - cost, 1e-12)
            if best is None or score < best[0]:
                best = (score, n, b, new_cost)
        if best is not None:
            _, n, b, cost = best
            choice[n] = b
            improved = True
    return choice, "greedy", "heuristic"


def brute_force(rows, sensitivities, budget, allowed_bits, fixed=None, base_bits: int = REFERENCE_BITS):
    """Every assignment, for tests and tiny models: ``(widths, objective)`` of the best feasible one."""
    kind, frac = parse_budget(budget)
    fixed = {k: int(v) for k, v in (fixed or {}).items()}
    options = _options(rows, allowed_bits, fixed)
    limit = frac * reference_cost(rows, kind)
    names = [r["name"] for r in rows]
    best = None
    for combo in itertools.product(*(options[n] for n in names)):
        choice = dict(zip(names, combo))
        if assignment_cost(rows, choice, kind, base_bits) <= limit * (1 + 1e-9):
            obj = objective(sensitivities, choice)
            if best is None or obj < best[1] - 1e-12:
                best = (choice, obj)
    return best
