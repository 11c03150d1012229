"""Integer kernels: what a deployment runtime computes, emulated in the QAT model's inference pass.

A float fake-quant simulation rounds once per tensor (FakeQuant, half up) and keeps biases float; an
int8 runtime accumulates in int32 with the bias on the grid ``S_in·S_w`` and requantizes with a
fixed-point multiplier, rounding twice. Each difference moves an output by one LSB now and then, and
on coarse grids (learned steps, few taps) one LSB in an early layer flips argmaxes later. So, in
inference only (training keeps the float straight-through forward its gradients need), layers whose
target names a kernel set compute what those kernels compute (``schemes/emulation.py`` hands each op
to the kernel set's handler). Exports never see this (``modes.exporting``).

Layout (one job each):
- ``grid``: integer grids from FakeQuant ranges; ``fixed_point``: multipliers and requantization roundings;
- ``calls``: what the emulation takes as fixed within one model call (grids, fused ReLUs, handed-on integers);
- ``tflite_ops``: the int8 arithmetic of each TFLite op and the table of op handlers ``TFLITE_OPS``;
- ``runtime``: ``IntegerKernels`` (a kernel set: rounding rules + op table) and the ``KERNELS`` registry;
- ``builtin``: the registered TFLite kernel sets; ``modes``: when the emulation runs;
- ``pipeline``: kernel sets built from a hardware target's ``pipeline:`` data (accumulator width and
  overflow, bias width, fixed-point or shift requantization and its rounding, which ops run integer);
- ``stats``: per-layer accumulator statistics on real data (``accumulator_stats``).

This package sits between ``quantizers`` and ``schemes``: it imports only ``quantizers`` and below.
"""
from qresearch.kernels.fixed_point import quantize_multiplier, srdhm
from qresearch.kernels.calls import fused_upstream, mark_fused, note_offsets, offsets_of, one_call
from qresearch.kernels.grid import (Grid, constant_operand, fake_quant_range, grid_of, grid_of_quantizer, hand_on,
                                    integer_values, pure_fake_quant, round_half_away)
from qresearch.kernels.modes import active_kernels, emulated_kernels, export_mode, exporting, in_saving_trace
from qresearch.kernels.runtime import KERNELS, IntegerKernels
from qresearch.kernels.tflite_ops import (CONV_OPS, FUSED_ACTIVATIONS, MAX_SOFTMAX_CLASSES, TFLITE_OPS, OpCall,
                                          average_pool, average_pool_counts, mean, mean_keepdims, softmax)
from qresearch.kernels.pipeline import PipelineKernels, pipeline_kernels
from qresearch.kernels.stats import accumulator_stats
from qresearch.kernels import builtin  # noqa: F401  (registers the TFLite kernel sets)

__all__ = [
    "CONV_OPS", "FUSED_ACTIVATIONS", "Grid", "IntegerKernels", "KERNELS", "MAX_SOFTMAX_CLASSES", "OpCall",
    "PipelineKernels", "TFLITE_OPS", "accumulator_stats", "active_kernels", "average_pool", "average_pool_counts",
    "constant_operand", "emulated_kernels", "export_mode", "exporting", "fake_quant_range", "fused_upstream",
    "grid_of", "grid_of_quantizer", "hand_on", "in_saving_trace", "integer_values", "mark_fused", "mean",
    "mean_keepdims", "note_offsets", "offsets_of", "one_call", "pipeline_kernels", "pure_fake_quant",
    "quantize_multiplier", "round_half_away", "softmax", "srdhm",
]
