"""A target's integer pipeline as data (the ``pipeline:`` block of its YAML), validated before training.

The kernel set it describes (``qresearch.kernels.pipeline``) is registered under the target's name, and
the target's ``kernels`` names it, so the QAT model's inference pass computes what that hardware computes.
Example (``conf/hardware/npu_w4a8_acc16.yaml``)::

    pipeline:
      accumulator_bits: 16        # 8-32; default: the target's accumulator_bits
      overflow: saturate          # saturate | wrap; required below 32 bits
      bias_bits: 16               # the bias is saturated to this signed width (default 32)
      bias_add: accumulator       # accumulator: the sum starts at the bias (TFLite) | requantize: added after
                                  # the MACs, in the wider requantization stage (the bias does not use the width)
      requantize: fixed_point     # fixed_point (31-bit multiplier + shift) | shift (power-of-two scales only)
                                  # | float32 (float32 scale, XNNPACK's rule with rounding: half_even)
      rounding: half_away_from_zero   # half_away_from_zero | half_up | half_even | floor | gemmlowp
      ops: [CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED]  # default: conv, depthwise, dense, transposed conv
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Tuple

from qresearch.errors import ConfigError

OVERFLOWS = ("saturate", "wrap")
BIAS_ADDS = ("accumulator", "requantize")
REQUANTIZATIONS = ("fixed_point", "shift", "float32")
ROUNDINGS = ("half_away_from_zero", "half_up", "half_even", "floor", "gemmlowp")
KEYS = ("accumulator_bits", "overflow", "bias_bits", "bias_add", "requantize", "rounding", "ops")
MIN_ACC, MAX_ACC = 8, 32  # above 32 bits the int64 emulation of acc·M could overflow


@dataclass(frozen=True)
class PipelineSpec:
    accumulator_bits: int = 32
    overflow: str = "wrap"
    bias_bits: int = 32
    requantize: str = "fixed_point"
    rounding: str = "half_away_from_zero"
    ops: Optional[Tuple[str, ...]] = None
    bias_add: str = "accumulator"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ops"] = list(self.ops) if self.ops else None
        return d

    def kernel_set(self, name: str, description: str = ""):
        """The ``qresearch.kernels`` kernel set of this pipeline (imports TensorFlow)."""
        from qresearch.kernels import pipeline_kernels

        return pipeline_kernels(name, self.accumulator_bits, self.overflow, self.bias_bits, self.requantize,
                                self.rounding, self.ops, description, self.bias_add)


def _where(source: Optional[str], key: str) -> str:
    return f"{source or 'hardware target'}: pipeline.{key}"


def parse_pipeline(d: Any, *, source: Optional[str], accumulator_bits: int, rounding: str,
                   weight_bits, activation_bits, weight_scales, activation_scales) -> PipelineSpec:
    """Validate a ``pipeline:`` block against the rest of the target (allowed bits and scale formats)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source or 'hardware target'}: pipeline must be a mapping with keys {KEYS}, got {d!r}")
    unknown = sorted(set(d) - set(KEYS))
    if unknown:
        raise ConfigError(f"{source or 'hardware target'}: unknown pipeline keys {unknown}; known: {list(KEYS)}")
    acc = d.get("accumulator_bits", accumulator_bits)
    if isinstance(acc, bool) or not isinstance(acc, int) or not MIN_ACC <= acc <= MAX_ACC:
        raise ConfigError(f"{_where(source, 'accumulator_bits')}: an integer in [{MIN_ACC}, {MAX_ACC}], got {acc!r}")
    product = max(weight_bits) + max(activation_bits)
    if acc < product:
        raise ConfigError(f"{_where(source, 'accumulator_bits')}: {acc} bits cannot hold even one product of "
                          f"{max(weight_bits)}-bit weights and {max(activation_bits)}-bit activations "
                          f"({product} bits); widen it to at least {product}")
    overflow = d.get("overflow")
    if overflow is None:
        if acc < 32:
            raise ConfigError(f"{_where(source, 'overflow')}: a {acc}-bit accumulator can overflow, so say what the "
                              f"hardware does: overflow: saturate or overflow: wrap")
        overflow = "wrap"
    if overflow not in OVERFLOWS:
        raise ConfigError(f"{_where(source, 'overflow')}: one of {OVERFLOWS}, got {overflow!r}")
    bias_bits = d.get("bias_bits", 32)
    if isinstance(bias_bits, bool) or not isinstance(bias_bits, int) or not 8 <= bias_bits <= 64:
        raise ConfigError(f"{_where(source, 'bias_bits')}: an integer in [8, 64], got {bias_bits!r}")
    bias_add = d.get("bias_add", "accumulator")
    if bias_add not in BIAS_ADDS:
        raise ConfigError(f"{_where(source, 'bias_add')}: one of {BIAS_ADDS}, got {bias_add!r}")
    requantize = d.get("requantize", "fixed_point")
    if requantize not in REQUANTIZATIONS:
        raise ConfigError(f"{_where(source, 'requantize')}: one of {REQUANTIZATIONS}, got {requantize!r}")
    if requantize == "shift":
        loose = [role for role, formats in (("weights", weight_scales), ("activations", activation_scales))
                 if tuple(formats) != ("pot",)]
        if loose:
            raise ConfigError(f"{_where(source, 'requantize')}: shift requantization needs power-of-two scales, but "
                              f"{' and '.join(loose)} allow {[list(f) for r, f in (('weights', weight_scales), ('activations', activation_scales)) if r in loose]}; "
                              f"set {', '.join(r + '.scale_format: [pot]' for r in loose)}, or requantize: fixed_point")
    rnd = d.get("rounding", rounding)
    if rnd not in ROUNDINGS:
        raise ConfigError(f"{_where(source, 'rounding')}: one of {ROUNDINGS}, got {rnd!r}")
    if requantize == "float32" and rnd == "gemmlowp":
        raise ConfigError(f"{_where(source, 'rounding')}: gemmlowp is a fixed-point rounding (two roundings of an "
                          f"integer product); with requantize: float32 use one of "
                          f"{[r for r in ROUNDINGS if r != 'gemmlowp']} (XNNPACK: half_even)")
    ops = d.get("ops")
    if ops is not None:
        if isinstance(ops, str) or not all(isinstance(o, str) for o in ops) or not ops:
            raise ConfigError(f"{_where(source, 'ops')}: a non-empty list of op names, got {ops!r}")
        from qresearch.kernels import TFLITE_OPS  # here: target data loads without TensorFlow otherwise

        missing = [o for o in ops if o not in TFLITE_OPS]
        if missing:
            raise ConfigError(f"{_where(source, 'ops')}: no integer handler for {missing}; known ops: "
                              f"{sorted(TFLITE_OPS)} (a new op: add a handler to a kernel set, qresearch.kernels)")
        ops = tuple(ops)
    return PipelineSpec(acc, overflow, bias_bits, requantize, rnd, ops, bias_add)
