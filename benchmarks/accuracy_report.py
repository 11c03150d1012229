"""Summaries, the markdown table, the accuracy-vs-bits plot and issue #12's targets for ``benchmarks.accuracy``.

Pure functions of the per-seed records (plain dicts, one per dataset x seed x contestant x layer policy x bits),
so the target checker can be tested on constructed results. A record::

    {"dataset": "mnist", "seed": 0, "contestant": "lsq", "policy": "all", "bits": 4,
     "float": 0.99, "ptq": 0.98, "qat": 0.985, "status": "completed", "error": None, ...}

``policy``: ``all`` (every layer n-bit) or ``fl8`` (first and last layers 8-bit). ``qat_skipped`` is true where only
PTQ was run (W8). ``status``: ``completed`` or ``failed`` (then ``error`` says why; a number not reached is None).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

#: Contestants that are not presets: tfmot's stock 8-bit ``quantize_model`` and its experimental n-bit scheme.
TFMOT_STOCK = "tfmot quantize_model"
TFMOT_NBIT = "tfmot n-bit"
#: The learned quantizers the targets judge (issue #12's table: learned steps/clips/offsets). a2q also learns
#: (weight norms and steps) but under a 16-bit accumulator bound that, by design, zeroes most weights of a wide
#: layer at any width (its preset targets accumulator-limited hardware): its numbers are printed beside the
#: verdict, not judged. dorefa is not learned as shipped (fixed activation clip, init: paper; no weight
#: parameter); minmax_nbit, tflite_int8 and pot track ranges.
LEARNED = ("lsq", "lsq_plus", "pact_lsq")
ALSO_SHOWN = ("a2q",)
POLICIES = {"all": "every layer n-bit", "fl8": "first/last 8-bit"}
#: Which tensors a row quantizes (its scheme's ``quantize_ops``; tfmot's schemes quantize every op): rows that
#: differ here are different experiments (docs/benchmark-protocol.md, "say what is quantized").
TENSORS = {"weights_only": "weights only", "inputs": "conv/dense inputs", "compute": "conv/dense inputs + outputs",
           "all": "every op"}
PHASES = ("ptq", "qat")
#: A 10-class model within this many points of chance (10%) "has collapsed" (docs/benchmark-protocol.md).
CHANCE_MARGIN = 0.05

Key = Tuple[str, str, int, str]  # (contestant, policy, bits, phase)


def _stats(values: Sequence[float]) -> Dict[str, Any]:
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0 if n else None
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def summarize(records: Iterable[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per dataset: ``float`` (mean/std/n/values over seeds), ``chance``, and ``cells`` {(contestant, policy, bits,
    phase): mean/std/n/values/failed/errors}. W8 runs of a preset under policy ``all`` also fill ``fl8`` (with
    ``first_last_bits`` 8 and every width 8 the two policies are the same model, measured once)."""
    out: Dict[str, Dict[str, Any]] = {}
    floats: Dict[str, Dict[int, float]] = {}
    raw: Dict[str, Dict[Key, Dict[str, Any]]] = {}
    for r in records:
        ds = r["dataset"]
        out.setdefault(ds, {"model": r.get("model"), "num_classes": r.get("num_classes", 10)})
        if r.get("float") is not None:
            floats.setdefault(ds, {})[r["seed"]] = r["float"]
        policies = [r["policy"]]
        if r.get("quantize_ops"):
            out[ds].setdefault("tensors", {})[r["contestant"]] = r["quantize_ops"]
        if int(r["bits"]) == 8 and r["policy"] == "all" and r["contestant"] not in (TFMOT_STOCK, TFMOT_NBIT):
            policies.append("fl8")
        for policy in policies:
            for phase in PHASES:
                if phase == "qat" and r.get("qat_skipped"):
                    continue
                cell = raw.setdefault(ds, {}).setdefault((r["contestant"], policy, int(r["bits"]), phase),
                                                         {"values": [], "failed": 0, "errors": []})
                v = r.get(phase)
                if v is not None and math.isfinite(v):
                    cell["values"].append(float(v))
                else:  # failed before this phase's number, or it was not finite
                    cell["failed"] += 1
                    if r.get("error"):
                        cell["errors"].append(str(r["error"])[:300])
    for ds, info in out.items():
        info["float"] = _stats([floats.get(ds, {})[s] for s in sorted(floats.get(ds, {}))])
        info["chance"] = 1.0 / float(info.get("num_classes") or 10)
        info["cells"] = {k: {**_stats(c["values"]), "failed": c["failed"], "errors": c["errors"]}
                         for k, c in raw.get(ds, {}).items()}
    return out


def _mean(s: Dict[str, Any], contestant: str, policy: str, bits: int, phase: str) -> Optional[float]:
    """The cell's mean, or None when it was not run or any seed failed (a failure never passes a target)."""
    c = s["cells"].get((contestant, policy, bits, phase))
    if c is None or c["failed"] or not c["n"]:
        return None
    return c["mean"]


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def contestant_order(summary: Dict[str, Dict[str, Any]]) -> List[Tuple[str, str]]:
    """Table rows: tfmot's two rows, then each preset under each layer policy (in name order)."""
    seen = {(k[0], k[1]) for s in summary.values() for k in s["cells"]}
    rows = [(c, p) for c, p in ((TFMOT_STOCK, "all"), (TFMOT_NBIT, "all")) if (c, p) in seen]
    presets = sorted({c for c, _ in seen if c not in (TFMOT_STOCK, TFMOT_NBIT)})
    rows += [(c, p) for c in presets for p in POLICIES if (c, p) in seen]
    return rows


def _cell_text(c: Optional[Dict[str, Any]], chance: float) -> str:
    if c is None:
        return ""
    if not c["n"]:
        return "failed" if c["failed"] else ""
    text = f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}"
    if c["mean"] <= chance + CHANCE_MARGIN:
        text += " (chance)"
    if c["failed"]:
        text += f" ({c['failed']} failed)"
    return text


def row_label(contestant: str, policy: str) -> Tuple[str, str]:
    if contestant == TFMOT_STOCK:
        return "tfmot `quantize_model` (stock, 8-bit)", "no (every layer 8-bit)"
    if contestant == TFMOT_NBIT:
        return "tfmot `DefaultNBitQuantizeScheme(n, n)`", "no (every layer n-bit)"
    return contestant, "yes" if policy == "fl8" else "no"


def markdown_table(summary: Dict[str, Dict[str, Any]], dataset: str, bits: Sequence[int]) -> str:
    """Rows contestant x layer policy, columns bits x PTQ/QAT, mean ± std over seeds (test accuracy %)."""
    s = summary[dataset]
    cols = [(b, ph) for b in sorted(bits, reverse=True) for ph in PHASES
            if any(k[2] == b and k[3] == ph for k in s["cells"])]
    f = s["float"]
    head = (f"**{dataset}** ({s.get('model')}): float {_pct(f['mean'])} ± {100 * (f['std'] or 0):.1f} "
            f"(seeds: {', '.join(_pct(v) for v in f['values'])}); chance {100 * s['chance']:.0f}%; "
            f"test accuracy %, mean ± std over {f['n']} seeds\n\n")
    lines = ["| contestant | first/last 8-bit | quantized | " + " | ".join(f"W{b}A{b} {ph.upper()}" for b, ph in cols)
             + " |", "|---|---|---|" + "---:|" * len(cols)]
    tensors = s.get("tensors", {})
    for contestant, policy in contestant_order({dataset: s}):
        name, fl = row_label(contestant, policy)
        ops = tensors.get(contestant)
        cells = [_cell_text(s["cells"].get((contestant, policy, b, ph)), s["chance"]) for b, ph in cols]
        lines.append(f"| {name} | {fl} | {TENSORS.get(ops, ops or '')} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


# ------------------------------------------------------------------ targets
def _verdict(ok: Optional[bool]) -> str:
    return "not measured" if ok is None else "met" if ok else "NOT MET"


def _geq(a: Optional[float], b: Optional[float], margin: float = 0.0) -> Optional[bool]:
    if a is None or b is None:
        return False if (a is None) != (b is None) else None
    return a >= b + margin - 1e-12


def check_targets(summary: Dict[str, Dict[str, Any]],
                  other: Optional[Dict[str, Dict[str, Any]]] = None,
                  other_recipe: str = "the other recipe") -> List[Dict[str, Any]]:
    """Issue #12's targets on one recipe's summary (``summarize``). Each result: ``target``, ``dataset``,
    ``policy`` (or None), ``met`` (True/False, None: not measured) and ``detail`` (the numbers, %).

    A cell where any seed failed counts as not meeting a target. ``other``: the other recipe's summary, for the
    robustness target (the same pairwise relations under both recipes)."""
    out: List[Dict[str, Any]] = []

    def add(target, ds, policy, met, detail):
        out.append({"target": target, "dataset": ds, "policy": policy, "met": met, "detail": detail})

    for ds, s in summary.items():
        presets = sorted({k[0] for k in s["cells"] if k[0] not in (TFMOT_STOCK, TFMOT_NBIT)})
        flt = s["float"]["mean"]
        # PTQ W8A8: every built-in within 0.5 pt of float
        if any(k[2] == 8 and k[0] in presets for k in s["cells"]):
            bad, parts = [], []
            for p in presets:
                v = _mean(s, p, "all", 8, "ptq")
                ok = v is not None and flt is not None and v >= flt - 0.005 - 1e-12
                parts.append(f"{p} {_pct(v)}")
                if not ok:
                    bad.append(p)
            add("PTQ W8A8: every built-in within 0.5 pt of float", ds, None, not bad,
                f"float {_pct(flt)}; " + ", ".join(parts) + (f"; outside: {', '.join(bad)}" if bad else ""))
        for policy in POLICIES:
            learned = [p for p in LEARNED if p in presets]
            mm = lambda b, ph: _mean(s, "minmax_nbit", policy, b, ph)  # noqa: E731
            # PTQ W4A4: every learned quantizer >= minmax_nbit
            if (("minmax_nbit", policy, 4, "ptq") in s["cells"]) and learned:
                res = {p: _geq(_mean(s, p, policy, 4, "ptq"), mm(4, "ptq")) for p in learned}
                add("PTQ W4A4: every learned quantizer >= minmax_nbit", ds, policy, _all(res.values()),
                    f"minmax_nbit {_pct(mm(4, 'ptq'))}; " + ", ".join(
                        f"{p} {_pct(_mean(s, p, policy, 4, 'ptq'))}"
                        f"{_below(s, (p, policy, 4, 'ptq'), ('minmax_nbit', policy, 4, 'ptq'), ok)}"
                        for p, ok in res.items())
                    + _also(s, presets, policy, 4, "ptq"))
            # QAT W4A4 / W3A3: every learned built-in >= minmax_nbit >= tfmot n-bit
            for b in (4, 3):
                if ("minmax_nbit", policy, b, "qat") not in s["cells"]:
                    continue
                res = {p: _geq(_mean(s, p, policy, b, "qat"), mm(b, "qat")) for p in learned}
                tf_nbit = _mean(s, TFMOT_NBIT, "all", b, "qat")
                chain = _geq(mm(b, "qat"), tf_nbit) if (TFMOT_NBIT, "all", b, "qat") in s["cells"] else None
                add(f"QAT W{b}A{b}: every learned built-in >= minmax_nbit >= tfmot n-bit", ds, policy,
                    _all(list(res.values()) + ([chain] if chain is not None else [])),
                    f"tfmot n-bit (every layer) {_pct(tf_nbit)}, minmax_nbit {_pct(mm(b, 'qat'))}"
                    f"{_below(s, ('minmax_nbit', policy, b, 'qat'), (TFMOT_NBIT, 'all', b, 'qat'), chain is not False)}"
                    "; "
                    + ", ".join(
                        f"{p} {_pct(_mean(s, p, policy, b, 'qat'))}"
                        f"{_below(s, (p, policy, b, 'qat'), ('minmax_nbit', policy, b, 'qat'), ok)}"
                        for p, ok in res.items()) + _also(s, presets, policy, b, "qat"))
            # QAT W2A2: lsq >= minmax_nbit + 10 pt; no built-in at chance
            if ("lsq", policy, 2, "qat") in s["cells"] and ("minmax_nbit", policy, 2, "qat") in s["cells"]:
                lsq2 = _mean(s, "lsq", policy, 2, "qat")
                room = None if flt is None or mm(2, "qat") is None else flt - mm(2, "qat")
                add("QAT W2A2: lsq >= minmax_nbit + 10 pt", ds, policy, _geq(lsq2, mm(2, "qat"), 0.10),
                    f"lsq {_pct(lsq2)}, minmax_nbit {_pct(mm(2, 'qat'))}"
                    + (f"; out of reach here: float is only {100 * room:.1f} pt above minmax_nbit"
                       if room is not None and room < 0.10 else ""))
            w2 = [p for p in presets if (p, policy, 2, "qat") in s["cells"]]
            if w2:
                limit = s["chance"] + CHANCE_MARGIN
                at_chance = [p for p in w2 if (_mean(s, p, policy, 2, "qat") or 0.0) <= limit]
                add(f"QAT W2A2: no built-in at chance (<= {100 * limit:.0f}%)", ds, policy, not at_chance,
                    ", ".join(f"{p} {_pct(_mean(s, p, policy, 2, 'qat'))}" for p in w2)
                    + (f"; at chance or failed: {', '.join(at_chance)}" if at_chance else ""))
            # CIFAR-10 small ResNet: lsq within 1.5 / 4 / 12 pt of float at W4 / W3 / W2
            if ds == "cifar10":
                for b, drop in ((4, 1.5), (3, 4.0), (2, 12.0)):
                    if ("lsq", policy, b, "qat") not in s["cells"]:
                        continue
                    v = _mean(s, "lsq", policy, b, "qat")
                    ok = None if flt is None else (v is not None and v >= flt - drop / 100 - 1e-12)
                    add(f"CIFAR-10: lsq QAT W{b}A{b} >= float - {drop:g} pt", ds, policy, ok,
                        f"lsq {_pct(v)}, float {_pct(flt)}, drop "
                        f"{'–' if v is None or flt is None else f'{100 * (flt - v):.1f}'} pt")
    if other is not None:
        out += robustness(summary, other, other_recipe)
    return out


def _below(s, a: Key, b: Key, ok: Optional[bool]) -> str:
    """`` (below X by d pt[, within seed std])`` when cell ``a`` misses cell ``b``: a miss smaller than the larger of
    the two cells' standard deviations over seeds is not an ordering the seeds can tell."""
    if ok is not False:
        return ""
    ca, cb = s["cells"].get(a), s["cells"].get(b)
    if not ca or not cb or ca["failed"] or cb["failed"] or not ca["n"] or not cb["n"]:
        return f" (not measured or failed: {b[0] if not ca or ca['failed'] else a[0]})"
    d = cb["mean"] - ca["mean"]
    noise = max(ca["std"] or 0.0, cb["std"] or 0.0)
    return f" (below {b[0]} by {100 * d:.2f} pt{', within seed std' if d <= noise else ''})"


def _also(s, presets, policy, bits, phase) -> str:
    shown = [p for p in ALSO_SHOWN if p in presets and (p, policy, bits, phase) in s["cells"]]
    return "".join(f"; not judged: {p} {_pct(_mean(s, p, policy, bits, phase))}" for p in shown)


def _all(values: Iterable[Optional[bool]]) -> Optional[bool]:
    values = list(values)
    if any(v is False for v in values):
        return False
    return None if not values or all(v is None for v in values) else True


def _margin(s, a: Key, b: Key, margin: float = 0.0) -> Optional[Tuple[float, float]]:
    """(mean(a) - mean(b) - margin, the larger of the two cells' stds over seeds); None if either is missing."""
    ca, cb = s["cells"].get(a), s["cells"].get(b)
    if _mean(s, *a) is None or _mean(s, *b) is None:
        return None
    return ca["mean"] - cb["mean"] - margin, max(ca["std"] or 0.0, cb["std"] or 0.0)


def relations(summary: Dict[str, Dict[str, Any]]) -> Dict[Tuple[str, str, int, str], Dict[str, Any]]:
    """The pairwise QAT relations the targets assert, per (dataset, policy, bits, relation): learned >=
    minmax_nbit, minmax_nbit >= tfmot n-bit (W4, W3), lsq >= minmax_nbit + 10 pt (W2). Each: ``holds`` (as
    ``_geq``), ``diff`` (the left side minus the right, pt fraction) and ``noise`` (the larger std)."""
    rel: Dict[Tuple[str, str, int, str], Dict[str, Any]] = {}

    def put(ds, s, policy, b, name, left: Key, right: Key, margin=0.0):
        if left in s["cells"] and right in s["cells"]:
            m = _margin(s, left, right, margin)
            rel[(ds, policy, b, name)] = {"holds": _geq(_mean(s, *left), _mean(s, *right), margin),
                                          "diff": None if m is None else m[0], "noise": None if m is None else m[1]}

    for ds, s in summary.items():
        for policy in POLICIES:
            for b in (4, 3):
                for p in LEARNED:
                    put(ds, s, policy, b, f"{p} >= minmax_nbit", (p, policy, b, "qat"),
                        ("minmax_nbit", policy, b, "qat"))
                put(ds, s, policy, b, "minmax_nbit >= tfmot n-bit", ("minmax_nbit", policy, b, "qat"),
                    (TFMOT_NBIT, "all", b, "qat"))
            put(ds, s, policy, 2, "lsq >= minmax_nbit + 10", ("lsq", policy, 2, "qat"),
                ("minmax_nbit", policy, 2, "qat"), 0.10)
    return rel


def robustness(summary, other, other_recipe: str) -> List[Dict[str, Any]]:
    """The same ordering under both recipes: every relation measured under both holds or fails alike. A flip
    whose difference is within the seeds' std under both recipes is labelled so (the seeds cannot order it)."""
    a, b = relations(summary), relations(other)
    out = []

    def noisy(k):
        return all(r[k]["diff"] is not None and abs(r[k]["diff"]) <= r[k]["noise"] for r in (a, b))

    def diff(r):
        return "–" if r["diff"] is None else f"{100 * r['diff']:+.2f}"

    for ds in sorted({k[0] for k in a} & {k[0] for k in b}):
        common = sorted(k for k in a if k in b and k[0] == ds)
        flips = [k for k in common if a[k]["holds"] != b[k]["holds"]]
        real = [k for k in flips if not noisy(k)]
        out.append({"target": f"same ordering with {other_recipe}", "dataset": ds, "policy": None,
                    "met": None if not common else not flips,
                    "detail": f"{len(common)} relations compared, {len(flips)} flipped"
                    + (f" ({len(flips) - len(real)} of them within the seeds' std under both recipes)" if flips else "")
                    + ("; flipped: " + "; ".join(
                        f"W{k[2]} {POLICIES[k[1]]}: {k[3]} ({'holds' if a[k]['holds'] else 'fails'} here, "
                        f"{diff(a[k])} pt; {'holds' if b[k]['holds'] else 'fails'} there, {diff(b[k])} pt"
                        f"{', within seed std' if noisy(k) else ''})" for k in flips) if flips else "")})
    return out


def checks_text(results: List[Dict[str, Any]]) -> str:
    lines = []
    for r in results:
        where = r["dataset"] + (f", {POLICIES[r['policy']]}" if r.get("policy") else "")
        lines.append(f"- [{_verdict(r['met'])}] {r['target']} ({where}): {r['detail']}")
    return "\n".join(lines or ["(no target applies to these results)"]) + "\n"


def plot(summary: Dict[str, Dict[str, Any]], path) -> Optional[str]:
    """Accuracy against bits: one column of panels per dataset, one row per layer policy (tfmot's rows in
    both), PTQ dashed and QAT solid, the float reference dotted."""
    from qresearch import figures

    datasets = list(summary)
    if not datasets:
        return None
    plt, fig, axes = figures.panel_grid(len(datasets) * 2, len(datasets), 6.0, 4.2)
    # panel_grid fills rows: reorder so column = dataset, row = policy
    rows = contestant_order(summary)
    names = sorted({c for c, _ in rows})
    cmap = plt.get_cmap("tab10")
    colour = {c: cmap(i % 10) for i, c in enumerate(names)}
    for j, ds in enumerate(datasets):
        s = summary[ds]
        for i, policy in enumerate(POLICIES):
            ax = axes[i * len(datasets) + j]
            for contestant, pol in rows:
                if pol != policy and contestant not in (TFMOT_STOCK, TFMOT_NBIT):
                    continue
                label = contestant
                for phase, style in (("ptq", "--"), ("qat", "-")):
                    pts = sorted((k[2], c["mean"]) for k, c in s["cells"].items()
                                 if k[0] == contestant and k[1] == pol and k[3] == phase and c["n"])
                    if not pts:
                        continue
                    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], style, marker="o", ms=3,
                            color=colour[contestant], label=label)
                    label = None
            if s["float"]["mean"] is not None:
                ax.axhline(100 * s["float"]["mean"], color="k", ls=":", lw=1, label="float")
            ax.axhline(100 * s["chance"], color="grey", ls=":", lw=0.8)
            ax.set_title(f"{ds} ({s.get('model')}), {POLICIES[policy]}", fontsize=9)
            ax.set_xlabel("bits (weights = activations)")
            ax.set_ylabel("test accuracy % (QAT solid, PTQ dashed)")
            ax.set_xticks(sorted({k[2] for k in s["cells"]}))
            ax.set_ylim(0, 100)
            ax.legend(fontsize=6, loc="lower right")
    return str(figures.save(plt, fig, path))
