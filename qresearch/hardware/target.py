"""A hardware target: what a deployment can represent, as plain data.

A ``Target`` is built from a dict (a ``conf/hardware/<name>.yaml`` file, which is
also the Hydra ``hardware`` config group) and validated on construction. It says
nothing about how to train; ``constrain`` checks a scheme against it and
``verify`` deploys to it when it has a runtime.

YAML layout (every key is validated; see ``conf/hardware/tflite_int8.yaml``)::

    name: tflite_int8               # equal to the file name
    description: ...
    runtime: tflite_int8            # a name in runtimes.RUNTIMES: tflite_int8 | tflite_int16x8 | none
    weights:
      bits: [8]                     # allowed bit widths
      granularity: {conv: [per_channel, per_tensor], conv1d: [per_tensor], conv_transpose: [per_tensor],
                    dense: [per_tensor]}     # per layer kind (LayerSpec.target_kind), or one list
      symmetry: symmetric           # symmetric (zero point 0) | asymmetric (zero point free)
      zero_point: zero              # zero | any   (must agree with symmetry)
      narrow_range: true            # true (required) | false (forbidden) | any
      signed: any                   # true: signed grid required (zero point 0 in signed storage) | false | any
      scale_format: [float32, pot]  # allowed scale forms
    activations: {...same keys; granularity is always per_tensor...}
    quantize_ops: all               # weights_only | inputs | compute | all (spec.QUANTIZE_OPS)
    bn_folding: fold                # fold (required; fold_batch_stats deploys as one) | no_fold (required) |
                                    # fold_batch_stats (required) | any
    first_last_bits: null           # int: first/last compute layers run at this precision
    accumulator_bits: 32
    rounding: half_away_from_zero   # the runtime's rounding (documentation + reports)
    kernels: tflite_builtin         # integer kernel set the simulation emulates in inference
                                    # (qresearch.kernels KERNELS) | none: float fake-quant only
    pipeline: {...}                 # or: the target's own integer pipeline as data (hardware/pipeline.py);
                                    # its kernel set is registered under the target's name
    fixed_output_ranges:            # op -> stored (scale, zero_point) of its output
      softmax: {scale: 0.00390625, zero_point: -128}
    costs:                          # optional: per-op cost table (hardware/costs.py), used by the cost model
      unit: pJ
      mac: {default: {w8a8: 0.23, w4a4: 0.07}}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from qresearch.errors import ConfigError
from qresearch.hardware.costs import CostTable
from qresearch.hardware.pipeline import PipelineSpec, parse_pipeline
from qresearch.hardware.runtimes import FIXED_OUTPUT_OPS, RUNTIMES, Runtime

# schemes.spec.QUANTIZE_OPS (target data imports no schemes: tests/test_layering.py; equal: test_targets.py)
QUANTIZE_OPS = ("weights_only", "inputs", "compute", "all")
# schemes.spec.BN_FOLDING + "any" (a test checks). "fold" is satisfied by a scheme's fold_batch_stats too (it
# deploys as a fold); "fold_batch_stats" requires training with batch statistics.
BN_FOLDING = ("fold", "no_fold", "fold_batch_stats", "any")
GRANULARITIES = ("per_channel", "per_tensor")
# The per-kind keys of ``granularity``; equal to schemes.layers.TARGET_KINDS (a test checks), kept here so
# a Target is plain data that loads without the schemes (tfmot).
LAYER_KINDS = ("conv", "conv1d", "conv_transpose", "dense")
SYMMETRIES = ("symmetric", "asymmetric")
ZERO_POINTS = ("zero", "any")
SCALE_FORMATS = ("float32", "pot")
ROUNDINGS = ("half_away_from_zero", "half_up", "half_even")
MIN_BITS, MAX_BITS = 2, 16
# Keras activation names for TFLite's fixed-output ops (LOGISTIC is Keras' sigmoid).
FIXED_OPS = tuple(FIXED_OUTPUT_OPS.values())
_OP_ALIASES = {"logistic": "sigmoid"}


def _where(source: Optional[str], key: str) -> str:
    return f"{source}: field {key!r}" if source else f"field {key!r}"


def _bits(value, source, key) -> Tuple[int, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(f"{_where(source, key)}: give at least one bit width")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not MIN_BITS <= v <= MAX_BITS:
            raise ConfigError(f"{_where(source, key)}: bit widths must be integers in "
                              f"[{MIN_BITS}, {MAX_BITS}], got {v!r}")
        out.append(int(v))
    return tuple(sorted(set(out)))


def _choice(value, allowed, source, key):
    if value not in allowed:
        raise ConfigError(f"{_where(source, key)}: must be one of {list(allowed)}, got {value!r}")
    return value


def _choices(value, allowed, source, key) -> Tuple[str, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(f"{_where(source, key)}: give at least one of {list(allowed)}")
    for v in values:
        _choice(v, allowed, source, key)
    return tuple(dict.fromkeys(values))


def _tristate(value, source, key) -> Optional[bool]:
    """true (required) | false (forbidden) | any/None (either)."""
    if value is None or value == "any":
        return None
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{_where(source, key)}: must be true, false or any, got {value!r}")


def _unknown_keys(d: Mapping, known, source, where):
    extra = sorted(set(d) - set(known))
    if extra:
        raise ConfigError(f"{_where(source, where + extra[0])}: unknown field; valid fields here: "
                          f"{', '.join(sorted(known))}")


@dataclass(frozen=True)
class TensorRules:
    """What one tensor role (weights or activations) may look like on a target."""

    bits: Tuple[int, ...]
    symmetry: str = "asymmetric"
    zero_point: str = "any"
    narrow_range: Optional[bool] = None
    signed: Optional[bool] = None
    scale_format: Tuple[str, ...] = ("float32",)
    granularity: Dict[str, Tuple[str, ...]] = field(
        default_factory=lambda: {k: ("per_tensor",) for k in LAYER_KINDS})

    @property
    def symmetric_required(self) -> bool:
        return self.symmetry == "symmetric"

    def allowed_granularity(self, kind: str) -> Tuple[str, ...]:
        return self.granularity.get(kind, self.granularity.get("default", GRANULARITIES))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], role: str, source: Optional[str] = None) -> "TensorRules":
        if not isinstance(d, Mapping):
            raise ConfigError(f"{_where(source, role)}: must be a mapping, got {d!r}")
        keys = ("bits", "symmetry", "zero_point", "narrow_range", "signed", "scale_format", "granularity")
        _unknown_keys(d, keys, source, f"{role}.")
        if "bits" not in d:
            raise ConfigError(f"{_where(source, role + '.bits')}: missing (list the allowed bit widths)")
        bits = _bits(d["bits"], source, f"{role}.bits")
        symmetry = _choice(d.get("symmetry", "asymmetric"), SYMMETRIES, source, f"{role}.symmetry")
        zero_point = _choice(d.get("zero_point", "zero" if symmetry == "symmetric" else "any"),
                             ZERO_POINTS, source, f"{role}.zero_point")
        if (symmetry == "symmetric") != (zero_point == "zero"):
            raise ConfigError(f"{_where(source, role + '.zero_point')}: {zero_point!r} contradicts "
                              f"symmetry {symmetry!r} (symmetric grids have zero point 0; asymmetric ones "
                              "a free zero point)")
        narrow = _tristate(d.get("narrow_range", "any"), source, f"{role}.narrow_range")
        signed = _tristate(d.get("signed", "any"), source, f"{role}.signed")
        scale_format = _choices(d.get("scale_format", ["float32"]), SCALE_FORMATS, source,
                                f"{role}.scale_format")
        gran_raw = d.get("granularity", "per_tensor")
        if isinstance(gran_raw, Mapping):
            _unknown_keys(gran_raw, LAYER_KINDS + ("default",), source, f"{role}.granularity.")
            default = _choices(gran_raw.get("default", list(GRANULARITIES)), GRANULARITIES, source,
                               f"{role}.granularity.default")
            gran = {k: _choices(gran_raw.get(k, list(default)), GRANULARITIES, source,
                                f"{role}.granularity.{k}") for k in LAYER_KINDS}
        else:
            allowed = _choices(gran_raw, GRANULARITIES, source, f"{role}.granularity")
            gran = {k: allowed for k in LAYER_KINDS}
        if role == "activations" and any(g != ("per_tensor",) for g in gran.values()):
            raise ConfigError(f"{_where(source, role + '.granularity')}: activations are per_tensor "
                              "(tfmot gives activation quantizers no channel axis)")
        return cls(bits=bits, symmetry=symmetry, zero_point=zero_point, narrow_range=narrow, signed=signed,
                   scale_format=scale_format, granularity=gran)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "bits": list(self.bits), "symmetry": self.symmetry, "zero_point": self.zero_point,
            "narrow_range": "any" if self.narrow_range is None else self.narrow_range,
            "signed": "any" if self.signed is None else self.signed,
            "scale_format": list(self.scale_format),
            "granularity": {k: list(v) for k, v in self.granularity.items()},
        }


@dataclass(frozen=True)
class FixedRange:
    """A stored (scale, zero_point) that the runtime forces on an op's output."""

    scale: float
    zero_point: int

    def real_range(self, bits: int, signed: bool = True) -> Tuple[float, float]:
        qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        return (float(self.scale * (qmin - self.zero_point)), float(self.scale * (qmax - self.zero_point)))


@dataclass(frozen=True)
class Target:
    """A simulated hardware target. Build with ``Target.from_dict`` (validates)."""

    name: str
    weights: TensorRules
    activations: TensorRules
    runtime: str = "none"
    description: str = ""
    quantize_ops: str = "compute"
    bn_folding: str = "any"
    first_last_bits: Optional[int] = None
    accumulator_bits: int = 32
    rounding: str = "half_away_from_zero"
    kernels: str = "none"
    fixed_output_params: Dict[str, FixedRange] = field(default_factory=dict)
    costs: Optional[CostTable] = None   # the target's own per-op cost table, when its YAML has one
    source: Optional[str] = None
    pipeline: Optional[PipelineSpec] = None

    # ------------------------------------------------------------ derived facts
    @property
    def runtime_facts(self) -> Runtime:
        return RUNTIMES.get(self.runtime)

    @property
    def has_runtime(self) -> bool:
        return self.runtime_facts.deploys

    @property
    def integer_only(self) -> bool:
        """Every tensor integer at deployment (TFLite full-integer runtimes)."""
        return self.runtime_facts.integer_only

    @property
    def activation_storage_bits(self) -> int:
        return max(self.activations.bits)

    @property
    def fixed_output_ranges(self) -> Dict[str, list]:
        """Real ``[min, max]`` of each fixed-output op, as the scheme's ``fixed_output_ranges`` wants."""
        bits = self.activation_storage_bits
        return {op: list(p.real_range(bits)) for op, p in self.fixed_output_params.items()}

    @property
    def zero_point_rules(self) -> Dict[str, str]:
        return {"weights": self.weights.zero_point, "activations": self.activations.zero_point}

    def rules(self, role: str) -> TensorRules:
        return {"weights": self.weights, "activations": self.activations}[role]

    # ------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Optional[str] = None) -> "Target":
        if hasattr(d, "items") and not isinstance(d, dict):  # OmegaConf DictConfig
            try:
                from omegaconf import OmegaConf

                d = OmegaConf.to_container(d, resolve=True)
            except Exception:
                d = dict(d)
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source or 'hardware target'}: must be a mapping, got {type(d).__name__}")
        known = ("name", "description", "runtime", "weights", "activations", "quantize_ops", "bn_folding",
                 "first_last_bits", "accumulator_bits", "rounding", "kernels", "fixed_output_ranges", "costs",
                 "pipeline")
        _unknown_keys(d, known, source, "")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{_where(source, 'name')}: a non-empty string is required")
        for role in ("weights", "activations"):
            if role not in d:
                raise ConfigError(f"{_where(source, role)}: missing (a mapping with at least 'bits')")
        weights = TensorRules.from_dict(d["weights"], "weights", source)
        acts = TensorRules.from_dict(d["activations"], "activations", source)
        runtime = _choice(d.get("runtime", "none"), tuple(RUNTIMES.names()), source, "runtime")
        quantize_ops = _choice(d.get("quantize_ops", "compute"), QUANTIZE_OPS, source, "quantize_ops")
        bn_folding = _choice(d.get("bn_folding", "any"), BN_FOLDING, source, "bn_folding")
        rounding = _choice(d.get("rounding", "half_away_from_zero"), ROUNDINGS, source, "rounding")
        kernels = d.get("kernels", "none")
        pipeline = None
        if d.get("pipeline") is not None:
            if kernels != "none":
                raise ConfigError(f"{_where(source, 'kernels')}: a target with a pipeline emulates that pipeline; "
                                  f"remove kernels: {kernels} (or the pipeline)")
            pipeline = parse_pipeline(d["pipeline"], source=source, accumulator_bits=d.get("accumulator_bits", 32),
                                      rounding=rounding, weight_bits=weights.bits, activation_bits=acts.bits,
                                      weight_scales=weights.scale_format, activation_scales=acts.scale_format)
        elif kernels != "none":
            from qresearch.kernels import KERNELS  # here, not at the top: target data loads without TensorFlow

            _choice(kernels, tuple(KERNELS.names()) + ("none",), source, "kernels")
        flb = d.get("first_last_bits")
        if flb is not None:
            if isinstance(flb, bool) or not isinstance(flb, int) or not MIN_BITS <= flb <= MAX_BITS:
                raise ConfigError(f"{_where(source, 'first_last_bits')}: an integer in [{MIN_BITS}, {MAX_BITS}] "
                                  f"or null, got {flb!r}")
        acc = d.get("accumulator_bits", 32)
        if isinstance(acc, bool) or not isinstance(acc, int) or not 8 <= acc <= 64:
            raise ConfigError(f"{_where(source, 'accumulator_bits')}: an integer in [8, 64], got {acc!r}")
        desc = d.get("description", "") or ""
        if not isinstance(desc, str):
            raise ConfigError(f"{_where(source, 'description')}: must be a string")
        fixed = {}
        raw_fixed = d.get("fixed_output_ranges") or {}
        if not isinstance(raw_fixed, Mapping):
            raise ConfigError(f"{_where(source, 'fixed_output_ranges')}: must map op -> {{scale, zero_point}}")
        for op, p in raw_fixed.items():
            key = f"fixed_output_ranges.{op}"
            op_name = _OP_ALIASES.get(op, op)
            _choice(op_name, FIXED_OPS, source, key)
            if not isinstance(p, Mapping) or set(p) != {"scale", "zero_point"}:
                raise ConfigError(f"{_where(source, key)}: must be {{scale: float, zero_point: int}}, got {p!r}")
            scale, zp = p["scale"], p["zero_point"]
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
                raise ConfigError(f"{_where(source, key + '.scale')}: a positive number, got {scale!r}")
            bits = max(acts.bits)
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            if isinstance(zp, bool) or not isinstance(zp, int) or not lo <= zp <= hi:
                raise ConfigError(f"{_where(source, key + '.zero_point')}: an integer in [{lo}, {hi}] "
                                  f"(the {bits}-bit activation grid), got {zp!r}")
            fixed[op_name] = FixedRange(float(scale), int(zp))
        costs = d.get("costs")
        if costs is not None:
            costs = CostTable.from_dict(costs, where=_where(source, "costs"))
        return cls(name=name, weights=weights, activations=acts, runtime=runtime, description=desc.strip(),
                   quantize_ops=quantize_ops, bn_folding=bn_folding, first_last_bits=flb,
                   accumulator_bits=pipeline.accumulator_bits if pipeline else acc, rounding=rounding,
                   kernels=name if pipeline else kernels, fixed_output_params=fixed, costs=costs, source=source,
                   pipeline=pipeline)

    @classmethod
    def from_yaml(cls, path) -> "Target":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        target = cls.from_dict(data if data is not None else {}, source=str(path))
        if target.name != path.stem:
            raise ConfigError(f"{_where(str(path), 'name')}: {target.name!r} must equal the file name "
                              f"{path.stem!r} (it is also the Hydra `hardware` option)")
        return target

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "runtime": self.runtime,
            "weights": self.weights.to_dict(), "activations": self.activations.to_dict(),
            "quantize_ops": self.quantize_ops, "bn_folding": self.bn_folding,
            "first_last_bits": self.first_last_bits, "accumulator_bits": self.accumulator_bits,
            "rounding": self.rounding, "kernels": "none" if self.pipeline else self.kernels,
            **({"pipeline": self.pipeline.to_dict()} if self.pipeline else {}),
            "fixed_output_ranges": {op: {"scale": p.scale, "zero_point": p.zero_point}
                                    for op, p in self.fixed_output_params.items()},
            **({"costs": self.costs.to_dict()} if self.costs is not None else {}),
        }

    def __repr__(self) -> str:
        return (f"Target({self.name!r}, runtime={self.runtime!r}, w{list(self.weights.bits)}"
                f"a{list(self.activations.bits)})")
