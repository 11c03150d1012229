"""Report views across hardware: accuracy against accumulator width, and targets compared at a glance.

- ``accumulator``: runs of one target at several ``hardware.pipeline.accumulator_bits`` (the
  ``accumulator_bits`` label): QAT accuracy of the simulated pipeline (mean ± std over seeds) against
  the width, per algorithm, with the float fake-quant accuracy (dashed) and the worst layer's overflow
  fraction in the table.
- ``targets``: runs of one (dataset, model) on two or more targets: one table (algorithm x target, each
  at the widths it ran, mean ± std, PTQ / QAT / deployed rows) and one panel with the targets on the
  x-axis and a shared y-axis, the float accuracy as a reference line.

``report(rows, out)`` returns ``[{view, markdown, plot}]`` for each view with data; views are a registry
(``VIEWS``), so a new one is one function.
"""
from __future__ import annotations

import statistics
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from qresearch.figures import panel_grid, save
from qresearch.report import mean_std
from qresearch.registry import Registry
from qresearch.results import COMPLETED

View = Callable[[List[Dict[str, Any]], Path], Optional[Dict[str, Any]]]
VIEWS: Registry = Registry("report view", how_to_add="qresearch.views.VIEWS.register(NAME, fn(rows, out))")
KINDS = (("ptq", "ptq_accuracy", "PTQ"), ("qat", "qat_accuracy", "QAT"), ("deployed", "deployed_accuracy", "deployed"))


def mark_accumulator_widths(rows: List[Dict[str, Any]]) -> None:
    """Runs of one target at several accumulator widths are different hardware: name the width in their
    ``target`` (so bit-width tables do not average over widths); ``base_target`` keeps the target's name."""
    widths: Dict[str, set] = defaultdict(set)
    for r in rows:
        r["base_target"] = r.get("target")
        if r.get("accumulator_bits") is not None:
            widths[r["target"]].add(r["accumulator_bits"])
    for r in rows:
        if len(widths.get(r["base_target"], ())) > 1:
            r["target"] = f"{r['base_target']} acc{r['accumulator_bits']}"


def _pct(stats) -> str:
    mean, std, n = stats
    return "–" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}" + (f" (n={n})" if n != 1 else "")


def _completed(rows):
    return [r for r in rows if r.get("status") == COMPLETED and r.get("qat_accuracy") is not None]


# ----------------------------------------------------------------------------- accuracy vs accumulator width
def accumulator_panels(rows) -> "OrderedDict[Tuple, Dict[str, Dict[int, Dict[str, Any]]]]":
    """(dataset, model, target) -> variant -> width -> {qat, fakequant, overflow, float} stats."""
    cells: Dict[Tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in _completed(rows):
        if r.get("accumulator_bits") is not None:
            cells[(r["dataset"], r["model"], r["base_target"], r["variant"], int(r["accumulator_bits"]))].append(r)
    panels: "OrderedDict[Tuple, Dict]" = OrderedDict()
    for key in sorted(cells, key=lambda k: tuple(str(x) for x in k)):
        runs = cells[key]
        panels.setdefault(key[:3], {}).setdefault(key[3], {})[key[4]] = {
            "qat": mean_std(r["qat_accuracy"] for r in runs),
            "fakequant": mean_std(r.get("qat_fakequant_accuracy") for r in runs),
            "overflow": mean_std(r.get("accumulator_overflow_fraction") for r in runs),
            "float": mean_std(r.get("float_accuracy") for r in runs)}
    return OrderedDict((k, v) for k, v in panels.items()
                       if len({w for by_w in v.values() for w in by_w}) > 1)  # a panel needs two widths


def accumulator_view(rows, out: Path) -> Optional[Dict[str, Any]]:
    panels = accumulator_panels(rows)
    if not panels:
        return None
    parts = []
    for (dataset, model, target), by_variant in panels.items():
        widths = sorted({w for by_w in by_variant.values() for w in by_w})
        lines = [f"### accuracy vs accumulator width — `{target}`, {dataset} / {model}", "",
                 "Simulated integer pipeline, QAT accuracy % (mean ± std over seeds); in brackets the float "
                 "fake-quant accuracy of the same models and the worst layer's overflowing outputs.", "",
                 "| algorithm | " + " | ".join(f"{w}-bit acc" for w in widths) + " |",
                 "|---|" + "---:|" * len(widths)]
        for variant, by_w in by_variant.items():
            cells = []
            for w in widths:
                c = by_w.get(w)
                if c is None:
                    cells.append("–")
                    continue
                over = c["overflow"][0]
                cells.append(f"{_pct(c['qat'])} [fq {_pct(c['fakequant'])}; overflow "
                             f"{'–' if over is None else f'{100 * over:.1f}%'}]")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    plt, fig, axes = panel_grid(len(panels), 2, 6.0, 4.4)
    cmap = plt.get_cmap("tab10")
    for ax, ((dataset, model, target), by_variant) in zip(axes, panels.items()):
        floats = []
        for i, (variant, by_w) in enumerate(by_variant.items()):
            ws = sorted(by_w)
            ax.errorbar(ws, [100 * by_w[w]["qat"][0] for w in ws], yerr=[100 * by_w[w]["qat"][1] for w in ws],
                        marker="o", capsize=3, color=cmap(i % 10), label=f"{variant} (simulated pipeline)")
            fq = [(w, by_w[w]["fakequant"][0]) for w in ws if by_w[w]["fakequant"][0] is not None]
            if fq:
                ax.plot([w for w, _ in fq], [100 * v for _, v in fq], linestyle="--", linewidth=1, alpha=0.6,
                        color=cmap(i % 10), label=f"{variant} (fake-quant)")
            floats += [by_w[w]["float"][0] for w in ws if by_w[w]["float"][0] is not None]
        if floats:
            ax.axhline(100 * statistics.fmean(floats), color="grey", linestyle=":", linewidth=1, label="float")
        ax.set_xticks(sorted({w for by_w in by_variant.values() for w in by_w}))
        ax.set_xlabel("accumulator width (bits)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{target} — {dataset}/{model}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return {"view": "accumulator", "markdown": "\n\n".join(parts),
            "plot": save(plt, fig, Path(out) / "accuracy_vs_accumulator_bits.png"), "panels": panels}


# ----------------------------------------------------------------------------- targets at a glance
def _native(r) -> str:
    w, a = r.get("weight_bits"), r.get("activation_bits")
    return f"W{w if w is not None else 'fp'}A{a if a is not None else 'fp'}"


def target_tables(rows) -> "OrderedDict[Tuple, Dict[str, Any]]":
    """(dataset, model) with >= 2 targets -> {targets, variants, cells[(variant, kind, target)] -> [(widths,
    stats)], float}."""
    by_model: Dict[Tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in _completed(rows):
        if not r.get("mixed_budget"):
            by_model[(r["dataset"], r["model"])].append(r)
    out: "OrderedDict[Tuple, Dict[str, Any]]" = OrderedDict()
    for key in sorted(by_model, key=lambda k: tuple(str(x) for x in k)):
        runs = by_model[key]
        targets = sorted({r["target"] for r in runs})
        if len(targets) < 2:
            continue
        groups: Dict[Tuple, List[Dict[str, Any]]] = defaultdict(list)
        for r in runs:
            groups[(r["variant"], r["target"], _native(r))].append(r)
        cells: Dict[Tuple, List] = defaultdict(list)
        for (variant, target, widths), rs in sorted(groups.items()):
            for kind, metric, _ in KINDS:
                stats = mean_std(r.get(metric) for r in rs)
                if stats[0] is not None:
                    cells[(variant, kind, target)].append((widths, stats))
        out[key] = {"targets": targets, "variants": sorted({r["variant"] for r in runs}), "cells": cells,
                    "float": mean_std(r.get("float_accuracy") for r in runs)}
    return out


def targets_view(rows, out: Path) -> Optional[Dict[str, Any]]:
    tables = target_tables(rows)
    if not tables:
        return None
    parts = []
    for (dataset, model), t in tables.items():
        lines = [f"### targets compared — {dataset} / {model}", "",
                 f"Test accuracy % (mean ± std over seeds), each target at the widths it ran (in brackets); "
                 f"float {_pct(t['float'])}.", "",
                 "| algorithm | kind | " + " | ".join(f"`{x}`" for x in t["targets"]) + " |",
                 "|---|---|" + "---:|" * len(t["targets"])]
        for variant in t["variants"]:
            for kind, _, label in KINDS:
                row = [t["cells"].get((variant, kind, x)) for x in t["targets"]]
                if not any(row):
                    continue
                cells = ["; ".join(f"{_pct(s)} [{w}]" for w, s in c) if c else "–" for c in row]
                lines.append(f"| {variant} | {label} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    plt, fig, axes = panel_grid(len(tables), 2, max(6.0, 1.3 * max(len(t["targets"]) for t in tables.values())), 4.4)
    cmap = plt.get_cmap("tab10")
    for ax, ((dataset, model), t) in zip(axes, tables.items()):
        xs = {x: i for i, x in enumerate(t["targets"])}
        n = len(t["variants"])
        for i, variant in enumerate(t["variants"]):
            dodge = (i - (n - 1) / 2) * 0.12
            for kind, marker, style in (("qat", "o", "-"), ("ptq", "x", "none"), ("deployed", "^", "none")):
                pts = [(xs[x] + dodge, s) for x in t["targets"] for _, s in t["cells"].get((variant, kind, x), [])]
                if not pts:
                    continue
                ax.errorbar([p[0] for p in pts], [100 * p[1][0] for p in pts], yerr=[100 * p[1][1] for p in pts],
                            marker=marker, linestyle="none", capsize=2, color=cmap(i % 10),
                            markerfacecolor="none" if kind != "qat" else cmap(i % 10),
                            label=f"{variant} ({kind})")
        if t["float"][0] is not None:
            ax.axhline(100 * t["float"][0], color="grey", linestyle="--", linewidth=1, label="float")
        ax.set_xticks(range(len(t["targets"])))
        ax.set_xticklabels(t["targets"], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"targets — {dataset}/{model}")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="lower right")
    return {"view": "targets", "markdown": "\n\n".join(parts),
            "plot": save(plt, fig, Path(out) / "accuracy_by_target.png"), "tables": tables}


VIEWS.register("accumulator", accumulator_view)
VIEWS.register("targets", targets_view)


def report(rows: List[Dict[str, Any]], out: Path) -> List[Dict[str, Any]]:
    """Every registered view with data in ``rows``."""
    return [v for v in (VIEWS.get(name)(rows, out) for name in VIEWS.names()) if v is not None]
