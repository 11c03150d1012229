"""Reports: ``python -m qresearch.report PATH [PATH...] [--out DIR]``.

Gathers every ``result.json`` under the paths and writes, into ``--out`` (default: the first
path when it is a folder):

* ``results.csv``: one row per run (every status), with labels, metrics, times and errors;
* ``report.md``: per (dataset, model, target) a table of algorithm x bit width, mean ± std of
  the accuracy over seeds, with float and PTQ reference rows (and deployed accuracy where a
  runtime checked it), then the failed runs, listed and never averaged;
* ``accuracy_vs_bits.png``: one panel per target, one line per algorithm, error bars (std);
* ``pareto_<axis>.png`` (``qresearch.pareto``), when the runs carry cost data: accuracy against the
  realised BOPs and weight memory (``--x`` names others, e.g. ``table_cost``), uniform and mixed-precision
  points of every algorithm on the same axes, the Pareto front drawn; its table goes into ``report.md``.
  Mixed-precision runs (no one bit width) appear there, not in the bit-width tables.

With ``--wandb`` it also logs them to Weights & Biases as one run of job type ``report`` (what a
sweep does by itself when it ends).

It prints the tables and the plot's path. Two records with the same config hash (the same
experiment reported twice) count once: the most recent.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from qresearch.config import is_coordinate
from qresearch.errors import QResearchError
from qresearch.labels import variant_label
from qresearch.figures import panel_grid, save
from qresearch.results import COMPLETED, load_results

CSV_COLUMNS = ["status", "dataset", "model", "target", "algorithm", "variant", "weight_bits", "activation_bits",
               "seed", "float_accuracy", "ptq_accuracy", "qat_accuracy", "deployed_accuracy", "weight_memory_bits",
               "float_weight_memory_bits", "qat_step_time_s", "float_step_time_s", "step_time_ratio",
               "mixed_budget", "bops", "bops_ratio", "cost_weight_bits", "weight_bits_ratio", "activation_peak_bits",
               "activation_bits_ratio", "table_cost", "table_cost_ratio", "accumulator_bits", "qat_fakequant_accuracy",
               "accumulator_overflow_fraction", "float_baseline", "total_s", "config_hash", "error_type", "error_stage", "error_message",
               "git_commit", "sweep", "path"]
METRICS = ("float_accuracy", "ptq_accuracy", "qat_accuracy", "deployed_accuracy")


# ------------------------------------------------------------------ rows
def flatten(rec: Dict[str, Any]) -> Dict[str, Any]:
    labels = rec.get("labels") or {}
    metrics = rec.get("metrics") or {}
    err = rec.get("error") or {}
    row = {k: labels.get(k) for k in ("dataset", "model", "target", "algorithm", "variant", "weight_bits",
                                      "activation_bits", "seed", "sweep", "mixed_budget", "accumulator_bits")}
    row.update({k: metrics.get(k) for k in ("float_accuracy", "ptq_accuracy", "qat_accuracy", "deployed_accuracy",
                                            "weight_memory_bits", "float_weight_memory_bits", "qat_step_time_s",
                                            "float_step_time_s", "step_time_ratio", "bops", "bops_ratio",
                                            "cost_weight_bits", "weight_bits_ratio", "activation_peak_bits",
                                            "activation_bits_ratio", "table_cost", "table_cost_ratio",
                                            "qat_fakequant_accuracy", "accumulator_overflow_fraction")})
    row.update(status=rec.get("status"), config_hash=rec.get("config_hash"),
               float_baseline=(rec.get("float_baseline") or {}).get("key"),
               total_s=(rec.get("times") or {}).get("total_s"),
               error_type=err.get("type"), error_stage=err.get("stage"),
               error_message=(err.get("message") or "").strip(),
               path=rec.get("_path"), finished_at=rec.get("finished_at") or "")
    ver = rec.get("versions") or {}
    row["git_commit"] = (ver.get("git_commit") or "")[:12] + ("+dirty" if ver.get("git_dirty") == "true" else "") \
        if ver.get("git_commit") else ""
    row["algorithm"] = row.get("algorithm") or "?"
    row["variant"] = row["algorithm"]
    config = dotted(rec.get("config") or {})
    if not row.get("mixed_budget"):  # mixed precision off: its settings changed nothing in this run
        config = {k: v for k, v in config.items() if not k.startswith(MIXED_PREFIX)}
    row["_config"] = config
    return row


MIXED_PREFIX = "mixed."


def dotted(d: Any, prefix: str = "") -> Dict[str, str]:
    """A nested config as {"a.b.c": "value"} (lists as their text)."""
    out: Dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(dotted(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = str(d)
    return out


def assign_variants(rows: List[Dict[str, Any]]) -> None:
    """Label each run "algorithm[k=v,...]" by the config keys that vary among the runs of the same
    algorithm on the same (dataset, model, target), coordinates (seed, bit widths) left out; so runs
    that differ only by seed and bits share a line, however their configs were written."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"], r["target"], r["algorithm"])].append(r)
    for grp in groups.values():
        # Keys that vary among the completed runs name their lines; a failed run (often failed
        # *because* of an odd value) adds only its own odd values to its label, not to the others'.
        done = [r for r in grp if r["status"] == COMPLETED] or grp
        keys = set().union(*(r["_config"].keys() for r in grp))
        # a mixed-precision setting (mixed.bits) tells mixed runs apart, not a mixed run from a uniform one
        among = lambda k: [r for r in done if r.get("mixed_budget")] if k.startswith(MIXED_PREFIX) else done  # noqa
        varying = sorted(k for k in keys if not is_coordinate(k)
                         and len({r["_config"].get(k) for r in among(k)}) > 1)
        seen = {k: {r["_config"].get(k) for r in done} for k in keys if not is_coordinate(k)}
        for r in grp:
            extra = list(varying)
            if r["status"] != COMPLETED:
                extra += [k for k in sorted(seen) if k not in varying and r["_config"].get(k) not in seen[k]]
            r["variant"] = variant_label(r["algorithm"], [f"{k}={r['_config'].get(k)}" for k in extra])


def dedupe(rows: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], int]:
    """Keep one record per config hash: a completed one over others, then the most recent."""
    best: Dict[str, Dict[str, Any]] = OrderedDict()
    rank = lambda r: (r["status"] == COMPLETED, r.get("finished_at") or "")  # noqa: E731
    no_hash = []
    for r in rows:
        h = r.get("config_hash")
        if not h:
            no_hash.append(r)
        elif h not in best or rank(r) > rank(best[h]):
            best[h] = r
    out = list(best.values()) + no_hash
    return out, len(rows) - len(out)


# ------------------------------------------------------------------ statistics
def mean_std(values: Iterable[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def seed_stats(runs: List[Dict[str, Any]], metric: str) -> Tuple[Optional[float], Optional[float], int]:
    """Mean ± std over seeds; runs repeating a seed (same experiment written twice) average first."""
    per_seed: Dict[Any, List[float]] = defaultdict(list)
    for r in runs:
        v = r.get(metric)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            per_seed[r.get("seed")].append(float(v))
    return mean_std(statistics.fmean(v) for v in per_seed.values())


def fmt(stats: Tuple[Optional[float], Optional[float], int], n_expected: Optional[int] = None) -> str:
    m, s, n = stats
    if m is None:
        return "–"
    text = f"{100 * m:.2f}" if n <= 1 else f"{100 * m:.2f} ± {100 * s:.2f}"
    if n_expected is not None and n != n_expected:
        text += f" (n={n})"
    return text


def bits_key(row) -> Tuple:
    w, a = row.get("weight_bits"), row.get("activation_bits")
    return (w if w is not None else 99, a if a is not None else 99)


def bits_label(w, a, joint: bool) -> str:
    if joint:
        return "fp" if w is None else f"{w}"
    return f"W{w if w is not None else 'fp'}A{a if a is not None else 'fp'}"


def build_tables(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (dataset, model, target): columns (bit widths), rows (float, algorithms, PTQ, deployed)."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = OrderedDict()
    # mixed-precision runs have no one bit width: they are points of the cost panels (qresearch.pareto)
    for r in sorted((r for r in rows if r["status"] == COMPLETED and not r.get("mixed_budget")),
                    key=lambda r: (str(r["dataset"]), str(r["model"]), str(r["target"]))):
        groups.setdefault((r["dataset"], r["model"], r["target"]), []).append(r)
    tables = []
    for (dataset, model, target), grp in groups.items():
        joint = all(r.get("weight_bits") == r.get("activation_bits") for r in grp)
        col_keys = sorted({(r.get("weight_bits"), r.get("activation_bits")) for r in grp},
                          key=lambda k: (-(k[0] or 99), -(k[1] or 99)))
        variants = sorted({r["variant"] for r in grp})
        cells: Dict[Tuple[str, Tuple], List[Dict[str, Any]]] = defaultdict(list)
        for r in grp:
            cells[(r["variant"], (r.get("weight_bits"), r.get("activation_bits")))].append(r)
        seeds = max(len({r.get("seed") for r in c}) for c in cells.values())

        def float_stats(col, runs):
            # one value per float baseline (a seed's baseline is shared by every algorithm)
            baselines = {}
            for r in runs:
                if (r.get("weight_bits"), r.get("activation_bits")) == col:
                    baselines[r.get("float_baseline") or (r.get("seed"), r["variant"])] = r
            return seed_stats(list(baselines.values()), "float_accuracy")

        # Variants trained from different float baselines (float epochs, dataset subset, model options)
        # get a float row each: one row averaging different float models would describe none of them.
        per_seed: Dict[Any, set] = defaultdict(set)
        for r in grp:
            per_seed[r.get("seed")].add(r.get("float_baseline"))
        by_baselines: Dict[frozenset, List[str]] = OrderedDict()
        for v in variants:
            key = frozenset((r.get("seed"), r.get("float_baseline")) for r in grp if r["variant"] == v)
            by_baselines.setdefault(key, []).append(v)
        if all(len(b) <= 1 for b in per_seed.values()):  # one float model per seed: one row
            body = [{"name": "float (reference)", "kind": "float",
                     "cells": {col: float_stats(col, grp) for col in col_keys}}]
        else:
            body = [{"name": f"float (reference) for {', '.join(vs)}", "kind": "float", "variants": vs,
                     "cells": {col: float_stats(col, [r for r in grp if r["variant"] in vs]) for col in col_keys}}
                    for vs in by_baselines.values()]
        for v in variants:
            body.append({"name": v, "kind": "qat", "variant": v,
                         "cells": {col: seed_stats(cells.get((v, col), []), "qat_accuracy")
                                   for col in col_keys}})
        for v in variants:
            body.append({"name": f"{v} (PTQ)", "kind": "ptq", "variant": v,
                         "cells": {col: seed_stats(cells.get((v, col), []), "ptq_accuracy")
                                   for col in col_keys}})
        if any(r.get("deployed_accuracy") is not None for r in grp):
            for v in variants:
                body.append({"name": f"{v} (deployed)", "kind": "deployed", "variant": v,
                             "cells": {col: seed_stats(cells.get((v, col), []), "deployed_accuracy")
                                       for col in col_keys}})
        tables.append({"dataset": dataset, "model": model, "target": target, "joint": joint, "columns": col_keys,
                       "rows": body, "seeds": seeds, "runs": len(grp)})
    return tables


def summary_rows(tables: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The report's tables as flat rows (one per table row x bit-width column), for wandb.Table and CSV."""
    out = []
    for t in tables:
        for row in t["rows"]:
            for w, a in t["columns"]:
                m, s, n = row["cells"][(w, a)]
                out.append({"dataset": t["dataset"], "model": t["model"], "target": t["target"], "row": row["name"],
                            "kind": row["kind"], "weight_bits": w, "activation_bits": a,
                            "accuracy_mean": m, "accuracy_std": s, "seeds": n})
    return out


# ------------------------------------------------------------------ rendering
def table_markdown(t: Dict[str, Any]) -> str:
    heads = [bits_label(w, a, t["joint"]) for w, a in t["columns"]]
    title = "bits" if t["joint"] else "weights/activations"
    lines = [f"### target `{t['target']}` — {t['dataset']} / {t['model']}",
             "",
             f"Test accuracy (%) by {title}, mean ± std over {t['seeds']} seed(s); {t['runs']} completed runs.",
             "",
             "| algorithm | " + " | ".join(heads) + " |",
             "|---|" + "---:|" * len(heads)]
    for row in t["rows"]:
        name = f"**{row['name']}**" if row["kind"] == "qat" else row["name"]
        lines.append(f"| {name} | " + " | ".join(fmt(row["cells"][c], t["seeds"]) for c in t["columns"]) + " |")
    return "\n".join(lines)


def one_line(message: str, limit: int = 400) -> str:
    """An error message on one line (its whole text, whitespace collapsed): a multi-line message
    ("... (1 conflict):" then the conflict) keeps its reason; cut at ``limit`` characters."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failed_markdown(failed: List[Dict[str, Any]], limit: int = 40) -> str:
    if not failed:
        return ""
    lines = [f"## Failed runs ({len(failed)}; not averaged)", "",
             "| target | algorithm | bits (W/A) | seed | stage | error | folder |", "|---|---|---|---|---|---|---|"]
    for r in sorted(failed, key=lambda r: (str(r["target"]), str(r["variant"]), bits_key(r), str(r["seed"])))[:limit]:
        msg = one_line(r.get("error_message") or "").replace("|", "\\|")
        lines.append(f"| {r['target']} | {r['variant']} | {r.get('weight_bits')}/{r.get('activation_bits')} | "
                     f"{r.get('seed')} | {r.get('error_stage') or r['status']} | {r.get('error_type') or r['status']}: "
                     f"{msg} | {Path(r['path']).parent.name if r.get('path') else ''} |")
    if len(failed) > limit:
        lines.append(f"\n... and {len(failed) - limit} more (all of them are in results.csv).")
    return "\n".join(lines)


def plot(tables: List[Dict[str, Any]], rows: List[Dict[str, Any]], path: Path) -> Optional[Path]:
    if not tables:
        return None
    plt, fig, axes = panel_grid(len(tables), 3, 5.2, 4.0)
    cmap = plt.get_cmap("tab10")
    variants = sorted({r["variant"] for r in rows if r["status"] == COMPLETED})
    color = {v: cmap(i % 10) for i, v in enumerate(variants)}
    for ax, t in zip(axes, tables):
        acts = sorted({a for _, a in t["columns"]}, key=lambda a: -(a or 99))
        names = sorted({row["variant"] for row in t["rows"] if row.get("variant")})
        span = max(1, max((w for w, _ in t["columns"] if w is not None), default=1)
                   - min((w for w, _ in t["columns"] if w is not None), default=0))
        dodge = {v: (i - (len(names) - 1) / 2) * 0.012 * max(span, 4) for i, v in enumerate(names)}
        for row in t["rows"]:
            if row["kind"] not in ("qat", "ptq", "deployed"):
                continue
            for a in ([None] if t["joint"] else acts):
                pts = sorted(((w, row["cells"][(w, aa)]) for (w, aa) in t["columns"]
                              if (t["joint"] or aa == a) and row["cells"][(w, aa)][0] is not None and w is not None),
                             key=lambda p: p[0])
                if not pts:
                    continue
                xs = [p[0] + dodge[row["variant"]] for p in pts]
                ys = [100 * p[1][0] for p in pts]
                es = [100 * p[1][1] for p in pts]
                label = row["variant"] + ("" if t["joint"] else f" A{a}")
                if row["kind"] == "qat":
                    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=color[row["variant"]], label=label,
                                linestyle="-" if t["joint"] or a == acts[0] else "--")
                elif row["kind"] == "ptq":
                    ax.plot(xs, ys, marker="x", linestyle=":", linewidth=1, alpha=0.6, color=color[row["variant"]],
                            label=f"{label} (PTQ)")
                else:
                    ax.plot(xs, ys, marker="^", linestyle="none", markerfacecolor="none", color=color[row["variant"]],
                            label=f"{label} (deployed)")
        fl = [v[0] for v in t["rows"][0]["cells"].values() if v[0] is not None]
        if fl:
            ax.axhline(100 * statistics.fmean(fl), color="grey", linestyle="--", linewidth=1, label="float")
        ticks = sorted({w for w, _ in t["columns"] if w is not None})
        if ticks:
            ax.set_xticks(ticks)
            if len(ticks) == 1:
                ax.set_xlim(ticks[0] - 1, ticks[0] + 1)
        ax.set_xlabel("weight bits" if not t["joint"] else "bits (weights and activations)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{t['target']} — {t['dataset']}/{t['model']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return save(plt, fig, path)


def write_csv(rows: List[Dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: (str(r["status"]), str(r["target"]), str(r["variant"]), bits_key(r),
                                             str(r["seed"]))):
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})


def make_report(paths: Sequence, out: Optional[Path] = None, quiet: bool = False,
                cost_axes: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Gather results under ``paths``, write results.csv, report.md, accuracy_vs_bits.png and (runs with cost
    data) pareto_<axis>.png for each of ``cost_axes`` (default ``pareto.DEFAULT_AXES``) into ``out``."""
    from qresearch import pareto, views

    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    if out is None:
        out = paths[0] if paths[0].is_dir() else paths[0].parent
    out = Path(out)
    records = load_results(paths)
    rows, dupes = dedupe([flatten(r) for r in records])
    views.mark_accumulator_widths(rows)
    assign_variants(rows)
    completed = [r for r in rows if r["status"] == COMPLETED]
    failed = [r for r in rows if r["status"] != COMPLETED]
    tables = build_tables(rows)
    csv_path, md_path, png_path = out / "results.csv", out / "report.md", out / "accuracy_vs_bits.png"
    write_csv(rows, csv_path)
    png = plot(tables, rows, png_path)
    costs = pareto.report(rows, out, cost_axes)
    hardware_views = views.report(rows, out)
    status_counts: Dict[str, int] = defaultdict(int)
    for r in rows:
        status_counts[str(r["status"])] += 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status_counts.items())) or "none"
    header = [f"# qresearch report", "", f"Sources: {', '.join(str(p) for p in paths)}", "",
              f"Runs: {len(rows)} ({counts})" + (f"; {dupes} duplicate record(s) of the same config ignored"
                                                 if dupes else "") + ".", ""]
    codes = sorted({r["git_commit"] for r in completed if r.get("git_commit")})
    if len(codes) > 1:  # a resumed sweep keeps results computed by earlier code
        header += [f"Note: the completed runs come from {len(codes)} code versions ({', '.join(codes)}; column "
                   f"git_commit in results.csv). Re-run the sweep with resume=false to recompute them all.", ""]
    parts = [table_markdown(t) for t in tables] + [c["markdown"] for c in costs] + \
        [v["markdown"] for v in hardware_views] or ["No completed runs."]
    failed_md = failed_markdown(failed)
    md = "\n".join(header) + "\n" + "\n\n".join(parts) + "\n"
    if failed_md:
        md += "\n" + failed_md + "\n"
    if png:
        md += f"\n![accuracy vs bits]({png.name})\n"
    for c in costs:
        md += f"\n![accuracy vs {c['axis']}]({c['plot'].name})\n"
    for v in hardware_views:
        md += f"\n![{v['view']}]({v['plot'].name})\n"
    md_path.write_text(md)
    if not quiet:
        print("\n\n".join(parts))
        if failed_md:
            print("\n" + failed_md)
        print(f"\nruns: {len(rows)} ({counts})")
        print(f"table: {md_path}\ncsv:   {csv_path}")
        print(f"plot:  {png}" if png else "plot:  (nothing to plot)")
        for c in costs + hardware_views:
            print(f"plot:  {c['plot']}")
    return {"rows": rows, "tables": tables, "pareto": costs, "pareto_plots": [c["plot"] for c in costs], "views": hardware_views, "completed": completed, "failed": failed, "csv": csv_path,
            "markdown": md_path, "plot": png, "duplicates": dupes, "sources": paths}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qresearch.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="sweep or run folders (searched recursively) or result.json files")
    ap.add_argument("--out", default=None, help="folder for results.csv, report.md and the plot "
                                                "(default: the first path)")
    ap.add_argument("--x", default=None, help="cost axes of the accuracy-vs-cost panels, comma-separated: "
                                              "bops, weight_memory (default, when runs have cost data), "
                                              "activation_memory, table_cost")
    ap.add_argument("--wandb", action="store_true",
                    help="also log the report to Weights & Biases: the tables as wandb.Tables, the plot as an "
                         "image, results.csv and report.md as an artifact (offline without an API key)")
    ap.add_argument("--wandb-group", default=None, help="wandb group (default: the sweep name of the runs, else "
                                                        "the folder's name)")
    ap.add_argument("--wandb-mode", default="auto", help="auto (default), online, offline")
    ap.add_argument("--wandb-project", default="qresearch")
    args = ap.parse_args(argv)
    try:
        missing = [p for p in args.paths if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
        if not load_results([Path(p) for p in args.paths]):  # write no empty report next to nothing
            print(f"error: no result.json under {', '.join(args.paths)} (a sweep's folder is "
                  f"<paths.output_dir>/multirun/<sweep_name>; single runs are under <paths.output_dir>/runs)",
                  file=sys.stderr)
            return 1
        axes = [a.strip() for a in args.x.split(",") if a.strip()] if args.x else None
        rep = make_report(args.paths, Path(args.out) if args.out else None, cost_axes=axes)
    except (FileNotFoundError, QResearchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.wandb:
        from qresearch.logger import log_report

        out = rep["csv"].parent
        sweeps = sorted({str(r["sweep"]) for r in rep["rows"] if r.get("sweep")})
        group = args.wandb_group or (sweeps[0] if len(sweeps) == 1 else out.name)
        where = log_report(rep, {"mode": args.wandb_mode, "project": args.wandb_project}, group, str(out))
        print(f"wandb: report logged in group {group!r}" + (f" (offline: {where})" if where else ""))
    return 0 if rep["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
