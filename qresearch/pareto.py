"""Accuracy against cost: the points (mean ± std over seeds), the Pareto front, the panel and its table.

A point is one (variant, precision) of one (dataset, model, target): a uniform width ("W4A4") or a mixed-
precision budget ("bops=0.4"). Its cost is the realised one (``result.json`` metrics, the cost model at
the widths the QAT model has), as a fraction of the same model all at 8 bits, so models and runs compare.
The front: the points no other point beats, i.e. none is at most as costly and at least as accurate with
one of the two strictly better. ``qresearch.report`` draws it when the results carry cost data.
"""
from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from qresearch.figures import panel_grid, save
from qresearch.report import mean_std
from qresearch.registry import Registry
from qresearch.results import COMPLETED

#: Cost axes the report can put accuracy against: name -> (metric in result.json, axis label).
COST_AXES = Registry("cost axis", how_to_add="qresearch.pareto.COST_AXES.register(NAME, (metric, label))")
COST_AXES.register("bops", ("bops_ratio", "BOPs / all-8-bit BOPs"))
COST_AXES.register("weight_memory", ("weight_bits_ratio", "weight memory / all-8-bit weight memory"))
COST_AXES.register("activation_memory", ("activation_bits_ratio", "activation memory / all-8-bit"))
COST_AXES.register("table_cost", ("table_cost_ratio", "target's cost table / all-8-bit"))
#: What the report draws when the results have the data (the others on request: --x).
DEFAULT_AXES = ("bops", "weight_memory")


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the non-dominated (cost, accuracy) points (lower cost, higher accuracy is better), in
    order of increasing cost. Of equal points, the first one given."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: List[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def point_label(row: Dict[str, Any]) -> str:
    if row.get("mixed_budget"):
        return str(row["mixed_budget"])
    w, a = row.get("weight_bits"), row.get("activation_bits")
    return f"W{w if w is not None else 'fp'}A{a if a is not None else 'fp'}"


def panels(rows: List[Dict[str, Any]], axis: str) -> "OrderedDict[Tuple, List[Dict[str, Any]]]":
    """Per (dataset, model, target): the points with cost data on ``axis``, each the mean ± std over its seeds,
    with ``front`` set for the non-dominated ones."""
    metric = COST_AXES.get(axis)[0]
    cells: Dict[Tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == COMPLETED and r.get(metric) is not None and r.get("qat_accuracy") is not None:
            cells[(r["dataset"], r["model"], r["target"], r["variant"], point_label(r))].append(r)
    out: "OrderedDict[Tuple, List[Dict[str, Any]]]" = OrderedDict()
    for key in sorted(cells, key=lambda k: tuple(str(x) for x in k)):
        runs = cells[key]
        cost, cost_std, _ = mean_std(r[metric] for r in runs)
        acc, acc_std, n = mean_std(r["qat_accuracy"] for r in runs)
        out.setdefault(key[:3], []).append({
            "variant": key[3], "label": key[4], "kind": "mixed" if runs[0].get("mixed_budget") else "uniform",
            "cost": cost, "cost_std": cost_std, "accuracy": acc, "accuracy_std": acc_std, "seeds": n})
    # a trade-off needs two precision points: a sweep at one width (algorithms or targets compared) draws none
    out = OrderedDict((k, pts) for k, pts in out.items() if len({p["label"] for p in pts}) > 1)
    for pts in out.values():
        for i in pareto_front([(p["cost"], p["accuracy"]) for p in pts]):
            pts[i]["front"] = True
    return out


def markdown(axis: str, by_panel) -> str:
    label = COST_AXES.get(axis)[1]
    parts = []
    for (dataset, model, target), pts in by_panel.items():
        lines = [f"### accuracy vs {axis} — target `{target}`, {dataset} / {model}", "",
                 f"Cost: {label} (realised widths), mean over seeds; QAT accuracy (%) mean ± std; "
                 f"★ = on the Pareto front.", "",
                 "| algorithm | point | cost | accuracy | seeds | front |", "|---|---|---:|---:|---:|:---:|"]
        for p in sorted(pts, key=lambda p: (p["cost"], -p["accuracy"])):
            lines.append(f"| {p['variant']} | {p['label']} | {p['cost']:.4f} | {100 * p['accuracy']:.2f} ± "
                         f"{100 * p['accuracy_std']:.2f} | {p['seeds']} | {'★' if p.get('front') else ''} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot(axis: str, by_panel, path: Path) -> Optional[Path]:
    """One panel per (dataset, model, target): each algorithm's uniform (squares) and mixed (circles)
    points with std error bars, labelled, and the panel's Pareto front as a step line."""
    if not by_panel:
        return None
    plt, fig, axes = panel_grid(len(by_panel), 2, 6.4, 4.6)
    cmap = plt.get_cmap("tab10")
    variants = sorted({p["variant"] for pts in by_panel.values() for p in pts})
    color = {v: cmap(i % 10) for i, v in enumerate(variants)}
    for ax, ((dataset, model, target), pts) in zip(axes, by_panel.items()):
        labelled: Dict[Tuple[float, float], int] = defaultdict(int)  # labels already at a place: stack the next
        for v in variants:
            for kind, marker in (("uniform", "s"), ("mixed", "o")):
                sel = sorted((p for p in pts if p["variant"] == v and p["kind"] == kind), key=lambda p: p["cost"])
                if not sel:
                    continue
                ax.errorbar([p["cost"] for p in sel], [100 * p["accuracy"] for p in sel],
                            xerr=[p["cost_std"] for p in sel], yerr=[100 * p["accuracy_std"] for p in sel],
                            marker=marker, linestyle="none", capsize=2, color=color[v],
                            markerfacecolor=color[v] if kind == "mixed" else "none", label=f"{v} ({kind})")
                for p in sel:
                    at = (round(p["cost"], 4), round(100 * p["accuracy"], 2))
                    ax.annotate(p["label"], (p["cost"], 100 * p["accuracy"]), fontsize=6,
                                xytext=(3, 3 + 7 * labelled[at]), textcoords="offset points")
                    labelled[at] += 1
        front = sorted((p for p in pts if p.get("front")), key=lambda p: p["cost"])
        if front:
            ax.step([p["cost"] for p in front], [100 * p["accuracy"] for p in front], where="post", color="black",
                    linestyle="--", linewidth=1, alpha=0.7, label="Pareto front")
        ax.set_xlabel(COST_AXES.get(axis)[1])
        ax.set_ylabel("QAT test accuracy (%)")
        ax.set_title(f"{target} — {dataset}/{model}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return save(plt, fig, path)


def report(rows: List[Dict[str, Any]], out: Path, axes: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """For each axis with data (default ``DEFAULT_AXES``; ``axes`` names others, unknown ones fail listing the
    valid): ``pareto_<axis>.png`` in ``out`` and its markdown. Returns ``[{axis, plot, markdown, panels}]``."""
    names = list(axes) if axes else list(DEFAULT_AXES)
    for name in names:
        COST_AXES.get(name)  # an unknown axis fails here, naming the known ones
    done = []
    for name in names:
        by_panel = panels(rows, name)
        if not by_panel:
            continue
        done.append({"axis": name, "panels": by_panel, "markdown": markdown(name, by_panel),
                     "plot": plot(name, by_panel, Path(out) / f"pareto_{name}.png")})
    return done
