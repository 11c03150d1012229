"""Mixed precision: a cost model (MACs, memory, BOPs), per-layer sensitivity, bit allocation under a
budget, and the choice as a plain scheme. Formulas and sources: ``notes/mixed.md``.

Public API: ``cost``, ``format_table``, ``CostTable``, ``register_mac_rule``, ``compute_layers``,
``sensitivity``, ``hessian_sensitivity``, ``hutchinson_traces``, ``allocate``, ``brute_force``,
``to_scheme``, ``reads_own_inputs``, ``qat_widths``, ``qat_cost``, ``describe`` (a QAT model with its cost
table), ``search``.
"""
from qresearch.mixed.cost import CostTable, Widths, cost, format_table, register_mac_rule, totals
from qresearch.mixed.graph import compute_layers
from qresearch.mixed.allocate import allocate, assignment_cost, brute_force, parse_budget, reference_cost
from qresearch.mixed.scheme import reads_own_inputs, to_scheme
from qresearch.mixed.realized import qat_cost, qat_widths
from qresearch.mixed.sensitivity import evaluate, hessian_sensitivity, hutchinson_traces, sensitivity
from qresearch.mixed.describe import describe
from qresearch.mixed.search import DEFAULT_BITS, allowed_widths, candidate_widths, search

__all__ = ["CostTable", "DEFAULT_BITS", "Widths", "allocate", "allowed_widths", "assignment_cost", "brute_force",
           "candidate_widths", "compute_layers", "cost", "describe", "evaluate", "format_table",
           "hessian_sensitivity", "hutchinson_traces", "parse_budget", "qat_cost", "qat_widths", "reads_own_inputs",
           "reference_cost", "register_mac_rule", "search", "sensitivity", "to_scheme", "totals"]
