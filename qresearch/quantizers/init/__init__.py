"""Initialisation of quantizer parameters (steps, clips, ranges) as a sweepable choice.

- ``stats``: per-channel statistics of a tensor (in the graph) or of every calibration batch (accumulated);
- ``rules``: the registry of init rules (``paper``, ``max``, ``percentile``, ``mse``), each a function of
  those statistics, and the mapping from a range to a quantizer's declared parameters;
- ``collect``: the calibration-time collector that accumulates statistics over all batches and sets
  the variables once at the end.
"""
from qresearch.quantizers.init.rules import INIT_RULES, PARAM_KINDS, register_init_rule
from qresearch.quantizers.init.collect import collecting

__all__ = ["INIT_RULES", "PARAM_KINDS", "collecting", "register_init_rule"]
