"""``describe`` with the cost: the schemes' report of a QAT model plus the cost model at the widths it
really has (totals and per-layer table). Here, not in ``schemes.describe``: the cost model needs the
float model's shapes, and the schemes do not import ``mixed``."""
from __future__ import annotations

from qresearch.mixed.cost import cost, format_table
from qresearch.mixed.realized import qat_cost


def describe(qat_model, float_model, table=None, print_report: bool = False):
    """``schemes.describe(qat_model)`` with ``cost`` (``qat_cost``: totals, layers), ``cost_reference`` (all
    8-bit totals) and the cost table printed under it. ``table``: a target (its ``costs:``) or a cost table."""
    from qresearch.schemes import describe as describe_scheme

    report = describe_scheme(qat_model)
    c = qat_cost(float_model, qat_model, table=table)
    ref = cost(float_model, table=table)["totals"]
    report["cost"], report["cost_reference"] = c, ref
    ratio = ", ".join(f"{k} {c['totals'][k] / ref[k]:.4f}" for k in ("bops", "weight_bits", "table_cost")
                      if ref.get(k))
    report.setdefault("sections", {})["cost"] = (f"cost (cost model, at the widths this model has):\n{format_table(c)}\n"
                                                 f"of the all-8-bit cost: {ratio}")
    if print_report:
        print(report)
    return report
