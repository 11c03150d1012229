"""SchemeSpec: what a quantization scheme asks for, as plain data.

A scheme names a weight quantizer and an activation quantizer (each a
``qresearch.quantizers`` spec dict), per-layer overrides, layers to leave in
float, and a few graph-level policies (BN folding, which tensors to quantize,
fixed output ranges). It is validated when built; the planning passes
(``qresearch.schemes.passes``) and the rebuild (``build.py``) turn it into tfmot wrappers.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from typing import Any, Dict, List, Mapping, Optional, Union

from qresearch.errors import ConfigError
from qresearch.schemes import low_bits
from qresearch.spec_keys import GRID_FIELDS, LOW_BITS_KEY, NAME_KEYS

BN_FOLDING = ("fold", "no_fold", "fold_batch_stats")
#: What each ``bn_folding`` deploys as: a target that requires "fold" is satisfied by ``fold_batch_stats`` too
#: (trained with batch statistics, it exports the static fold's conv: batch_stats_fold.py).
BN_DEPLOYS_AS = {"fold": "fold", "fold_batch_stats": "fold", "no_fold": "no_fold"}
#: ``bn_freeze_steps``' default: training steps with batch statistics before they freeze (fold_batch_stats).
DEFAULT_BN_FREEZE_STEPS = 1000
#: Which tensors a scheme quantizes, fewest first: weights only; + the inputs of compute layers (conv/dense: the
#: papers' and MQBench's academic convention, residual adds, BN and activations in float); + compute layers'
#: outputs; every op's input and output (what an integer-only runtime such as TFLite runs).
QUANTIZE_OPS = ("weights_only", "inputs", "compute", "all")
#: The grid of a model input's quantizer: read from the calibration data (unsigned where every value is >= 0),
#: or fixed. A hardware target or a scheme that sets ``signed`` itself still wins.
INPUT_SIGNS = ("data", "signed", "unsigned")
#: ``train_input_quantizers``: whether a model input's quantizer parameters train. "below_8_bits": only where its
#: grid is narrower than 8 bits (an 8-bit grid over a calibrated range leaves little to learn, and the training
#: costs the first layer's input gradient; notes/performance.md, 2026-12-06).
TRAIN_INPUT_QUANTIZERS = (True, False, "below_8_bits")
# TFLite's fixed int8 output ranges (tflite-int8-spec.md §5): softmax/logistic (1/256, -128), tanh (1/128, 0).
DEFAULT_FIXED_OUTPUT_RANGES: Dict[str, List[float]] = {
    "softmax": [0.0, 0.99609375],
    "sigmoid": [0.0, 0.99609375],
    "tanh": [-1.0, 0.9921875],
}
#: How quantizer parameters (steps, clips, offsets) train: read by the training stage, not by the rewrite.
TRAINING_FIELDS = {"quantizer_lr_multiplier": 1.0, "quantizer_weight_decay": False, "freeze_quantizer_steps": 0}
FIELDS = ("weights", "activations", "overrides", "skip", "first_last_bits", "bn_folding", "bn_freeze_steps",
          "bn_reestimation_batches", "quantize_ops", "input_sign", "train_input_quantizers", "fixed_output_ranges",
          "name", low_bits.KEY) + tuple(TRAINING_FIELDS)


def trains_model_input(setting: Union[bool, str], bits: int) -> bool:
    """Whether a model input's quantizer of ``bits`` bits trains its parameters under ``train_input_quantizers``."""
    return setting == "below_8_bits" and bits < 8 if isinstance(setting, str) else bool(setting)


def reestimated_bn_batches(scheme: Mapping[str, Any]) -> int:
    """Batches of BN re-estimation after QAT that a (validated) scheme dict asks for: its
    ``bn_reestimation_batches`` where ``bn_folding`` is no_fold (BN stays), else 0. Reads the dict: no rebuild."""
    return int(scheme.get("bn_reestimation_batches") or 0) if scheme.get("bn_folding", "fold") == "no_fold" else 0


def bn_folding_satisfies(scheme_value: str, required: str) -> bool:
    """Whether a scheme's ``bn_folding`` gives what a target requires ("any", or what it deploys as)."""
    return required in ("any", scheme_value) or BN_DEPLOYS_AS.get(scheme_value) == required


def _quantizer_name(part: Mapping[str, Any]) -> Optional[str]:
    for key in NAME_KEYS:
        if key in part:
            return part[key]
    return None


def _check_quantizer_spec(value, where: str, partial: bool) -> Optional[Dict[str, Any]]:
    """Validate a quantizer spec dict; return a normalised copy ('quantizer' key)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"quantizer": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"scheme key {where!r} must be a dict like {{quantizer: minmax, bits: 8}} or null, "
                          f"got {value!r}")
    out = dict(value)
    name = None
    for key in NAME_KEYS:
        if key in out:
            name = out.pop(key)
    if name is not None:
        out["quantizer"] = name
    elif not partial:
        raise ConfigError(f"scheme key {where!r} has no 'quantizer' (e.g. quantizer: minmax); got {dict(value)!r}")
    return out


def _check_bits(value, where: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 16:
        raise ConfigError(f"scheme key {where!r} must be an integer bit width in [2, 16] or null, got {value!r}")
    return value


@dataclasses.dataclass
class Override:
    """Per-layer change: ``match`` is a regex on the layer name or a layer class name."""

    match: str
    weights: Any = dataclasses.field(default_factory=dict)      # partial dict, or None = float weights
    activations: Any = dataclasses.field(default_factory=dict)  # partial dict, or None = float outputs

    def matches(self, layer) -> bool:
        return layer_matches(self.match, layer)

    def to_dict(self) -> Dict[str, Any]:
        return {"match": self.match, "weights": copy.deepcopy(self.weights),
                "activations": copy.deepcopy(self.activations)}


def layer_matches(pattern: str, layer) -> bool:
    """True when ``pattern`` is the layer's class name or a regex fully matching its name."""
    wrapped = type(layer).__name__ in ("QuantizeWrapper", "QuantizeWrapperV2")
    inner = layer.layer if wrapped else layer
    cls = type(inner)
    if pattern == cls.__name__ or pattern == f"{cls.__module__}.{cls.__name__}":
        return True  # exact class: "Conv2D" does not match DepthwiseConv2D (a Conv2D subclass)
    try:
        return re.fullmatch(pattern, inner.name) is not None
    except re.error:
        return False


@dataclasses.dataclass
class SchemeSpec:
    """A quantization scheme, built from a dict with ``SchemeSpec.from_dict``.

    weights / activations: quantizer specs (``{quantizer: lsq, bits: 4, ...}``) or None (float).
    overrides: ``[{match, weights, activations}]`` applied in order (later wins).
    skip: regexes on layer names or layer class names left in float.
    first_last_bits: bit width of the first and last compute layers (weights and outputs).
    bn_folding: "fold" (BN folded into the preceding conv/dense kernel), "no_fold" (BN stays, float), or
      "fold_batch_stats" (folded, trained with batch statistics and a correction until frozen: Krishnamoorthi
      2018 §3.2.2; deploys as "fold").
    bn_freeze_steps: with fold_batch_stats, training steps that use batch statistics before the moving ones
      freeze (null: never; 0: frozen from the start). Ignored otherwise.
    bn_reestimation_batches: with no_fold, training batches over which each BN's moving statistics are
      re-estimated after QAT (0: off; Nagel et al. 2022 §4). Ignored otherwise (no BN is left to re-estimate).
    quantize_ops: "weights_only", "inputs" (weights + the inputs of compute layers, everything between them float:
      the convention of the LSQ/PACT papers and MQBench's academic setting), "compute" (weights + compute layers'
      inputs and outputs) or "all" (every op's input and output: integer-only runtimes).
    input_sign: the grid of each model input's activation quantizer: "data" (unsigned where every calibration
      value of that input is >= 0, e.g. pixels in [0, 1]; signed without calibration data), "signed" or
      "unsigned". Only where the activation spec does not set ``signed`` itself.
    train_input_quantizers: whether the model inputs' quantizer parameters (a learned step, clip or offset)
      train with the model (true, the default of a scheme dict), keep the values calibration gave them (false),
      or train only where that input is quantized below 8 bits ("below_8_bits", the learned presets'). Their
      gradient is the first layer's input gradient, which nothing else needs: on a small model with a large
      input it is a large part of a QAT step (LeNet-5, lsq: 1.41x float with it, 1.29x without;
      notes/performance.md, 2026-12-06).
    fixed_output_ranges: ``{softmax: [min, max], ...}`` forced on those ops' outputs.
    quantizer_lr_multiplier: learning rate of quantizer parameters (steps, clips, offsets) over the model's.
    quantizer_weight_decay: whether the optimizer's weight decay applies to them (off: steps are not
      pulled towards 0).
    freeze_quantizer_steps: training steps during which they stay at their initial values (warm-up).
    low_bits: ``{max_bits: N, <field>: <value>, ...}``: BN and quantizer-training fields that replace the scheme's
      own where its weights or activations are at most N bits (``qresearch.schemes.low_bits``). Applied when the
      scheme is built, then dropped; kept while the widths are above N.
    """

    weights: Optional[Dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {"quantizer": "minmax", "bits": 8})
    activations: Optional[Dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {"quantizer": "minmax", "bits": 8})
    overrides: List[Override] = dataclasses.field(default_factory=list)
    skip: List[str] = dataclasses.field(default_factory=list)
    first_last_bits: Optional[int] = None
    bn_folding: str = "fold"
    bn_freeze_steps: Optional[int] = DEFAULT_BN_FREEZE_STEPS
    bn_reestimation_batches: int = 0
    quantize_ops: str = "all"
    input_sign: str = "data"
    train_input_quantizers: Union[bool, str] = True
    fixed_output_ranges: Dict[str, List[float]] = dataclasses.field(
        default_factory=lambda: copy.deepcopy(DEFAULT_FIXED_OUTPUT_RANGES))
    name: Optional[str] = None
    quantizer_lr_multiplier: float = TRAINING_FIELDS["quantizer_lr_multiplier"]
    quantizer_weight_decay: bool = TRAINING_FIELDS["quantizer_weight_decay"]
    freeze_quantizer_steps: int = TRAINING_FIELDS["freeze_quantizer_steps"]
    low_bits: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        self.validate()

    @property
    def folds_bn(self) -> bool:
        """BN after a linear conv/dense is folded into it (statically or with batch statistics)."""
        return BN_DEPLOYS_AS[self.bn_folding] == "fold"

    @property
    def reestimated_bn_batches(self) -> int:
        """Batches of BN re-estimation after QAT: ``bn_reestimation_batches`` where BN stays, else 0."""
        return reestimated_bn_batches(vars(self))

    # ------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "SchemeSpec") -> "SchemeSpec":
        if isinstance(d, SchemeSpec):
            return copy.deepcopy(d)
        if not isinstance(d, Mapping):
            raise ConfigError(f"a scheme must be a dict, a SchemeSpec or a preset name, got {type(d).__name__}")
        d = dict(d)
        # Hydra/OmegaConf containers arrive as DictConfig: turn them into plain data.
        try:
            from omegaconf import OmegaConf
            d = {k: (OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v) for k, v in d.items()}
        except ImportError:  # pragma: no cover
            pass
        unknown = [k for k in d if k not in FIELDS and not k.startswith("_")]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, FIELDS, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"unknown scheme key {', '.join(hints)}; valid keys: {', '.join(FIELDS)}")
        kwargs = {k: v for k, v in d.items() if k in FIELDS}
        if "overrides" in kwargs:
            kwargs["overrides"] = _parse_overrides(kwargs["overrides"])
        if "fixed_output_ranges" in kwargs and kwargs["fixed_output_ranges"] is not None:
            merged = copy.deepcopy(DEFAULT_FIXED_OUTPUT_RANGES)
            merged.update(kwargs["fixed_output_ranges"])
            kwargs["fixed_output_ranges"] = merged
        return cls(**kwargs)

    def to_dict(self) -> Dict[str, Any]:
        out = {
            "weights": copy.deepcopy(self.weights),
            "activations": copy.deepcopy(self.activations),
            "overrides": [o.to_dict() for o in self.overrides],
            "skip": list(self.skip),
            "first_last_bits": self.first_last_bits,
            "bn_folding": self.bn_folding,
            "bn_freeze_steps": self.bn_freeze_steps,
            "bn_reestimation_batches": self.bn_reestimation_batches,
            "quantize_ops": self.quantize_ops,
            "input_sign": self.input_sign,
            "train_input_quantizers": self.train_input_quantizers,
            "fixed_output_ranges": {k: list(v) for k, v in self.fixed_output_ranges.items()},
            **{k: getattr(self, k) for k in TRAINING_FIELDS},
        }
        if self.name is not None:
            out["name"] = self.name
        if self.low_bits is not None:  # (a scheme without a rule keeps the dict, and the run hash, of before)
            out[low_bits.KEY] = copy.deepcopy(self.low_bits)
        return out

    def replace(self, **changes) -> "SchemeSpec":
        d = self.to_dict()
        d.update(changes)
        return SchemeSpec.from_dict(d)

    # ---------------------------------------------------------- validation
    def validate(self) -> None:
        self.weights = _check_quantizer_spec(self.weights, "weights", partial=False)
        self.activations = _check_quantizer_spec(self.activations, "activations", partial=False)
        self._apply_low_bits()
        if not isinstance(self.overrides, list):
            raise ConfigError(f"scheme key 'overrides' must be a list of {{match, weights, activations}}, "
                              f"got {self.overrides!r}")
        self.overrides = _parse_overrides(self.overrides)
        if isinstance(self.skip, str):
            self.skip = [self.skip]
        if self.skip is None:
            self.skip = []
        if not isinstance(self.skip, (list, tuple)) or not all(isinstance(s, str) for s in self.skip):
            raise ConfigError(f"scheme key 'skip' must be a list of layer-name regexes or class names, "
                              f"got {self.skip!r}")
        self.skip = list(self.skip)
        for pattern in self.skip:
            _check_regex(pattern, "skip")
        self.first_last_bits = _check_bits(self.first_last_bits, "first_last_bits")
        if self.bn_folding not in BN_FOLDING:
            raise ConfigError(f"scheme key 'bn_folding' must be one of {BN_FOLDING}, got {self.bn_folding!r}")
        n = self.bn_freeze_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ConfigError(f"scheme key 'bn_freeze_steps' must be an integer >= 0 (training steps with batch "
                              f"statistics before they freeze; null: never), got {n!r}")
        n = self.bn_reestimation_batches
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"scheme key 'bn_reestimation_batches' must be an integer >= 0 (training batches "
                              f"that re-estimate BN statistics after QAT where BN stays; 0: off), got {n!r}")
        if self.quantize_ops not in QUANTIZE_OPS:
            raise ConfigError(f"scheme key 'quantize_ops' must be one of {QUANTIZE_OPS}, got {self.quantize_ops!r}")
        if self.input_sign not in INPUT_SIGNS:
            raise ConfigError(f"scheme key 'input_sign' must be one of {INPUT_SIGNS} (data: unsigned where the "
                              f"calibration data of that input is >= 0), got {self.input_sign!r}")
        v = self.train_input_quantizers
        if not (isinstance(v, bool) or (isinstance(v, str) and v in TRAIN_INPUT_QUANTIZERS)):
            raise ConfigError(f"scheme key 'train_input_quantizers' must be true, false or 'below_8_bits' (false: the "
                              f"model inputs' quantizers keep their calibrated values; below_8_bits: they train only "
                              f"where quantized below 8 bits), got {self.train_input_quantizers!r}")
        if self.fixed_output_ranges is None:
            self.fixed_output_ranges = {}
        if not isinstance(self.fixed_output_ranges, Mapping):
            raise ConfigError("scheme key 'fixed_output_ranges' must map an activation name to [min, max], "
                              f"got {self.fixed_output_ranges!r}")
        ranges = {}
        for op, rng in self.fixed_output_ranges.items():
            if (not isinstance(rng, (list, tuple)) or len(rng) != 2
                    or not all(isinstance(v, (int, float)) for v in rng) or not rng[0] <= 0.0 <= rng[1]
                    or rng[0] >= rng[1]):
                raise ConfigError(f"scheme key 'fixed_output_ranges.{op}' must be [min, max] with "
                                  f"min <= 0 <= max and min < max, got {rng!r}")
            ranges[str(op)] = [float(rng[0]), float(rng[1])]
        self.fixed_output_ranges = ranges
        check_training_fields(self)
        self._check_quantizers()

    def _apply_low_bits(self) -> None:
        """Set the ``low_bits`` rule's fields and drop it where the widths are at most its ``max_bits``; else
        check its fields on a bare scheme (they are BN and training keys only), so a bad value fails now and not at
        the first low-bit run."""
        fields = low_bits.applied_fields(self.low_bits, self.weights, self.activations)
        if fields is not None:
            for key, value in fields.items():
                setattr(self, key, value)
            self.low_bits = None
        elif self.low_bits is not None:
            try:
                SchemeSpec(weights=None, activations=None, **low_bits.parse(self.low_bits)[1])
            except ConfigError as exc:
                raise ConfigError(f"scheme key '{low_bits.KEY}': {exc}") from exc

    def _check_quantizers(self) -> None:
        """Build every quantizer the scheme can ask for once, so bad fields fail now."""
        for role in ("weights", "activations"):
            base = getattr(self, role)
            if base is not None:
                _create(base, role, role)
            for i, o in enumerate(self.overrides):
                part = getattr(o, role)
                if part is None or not part:
                    continue
                merged = merge_quantizer_spec(base, part)
                if merged is None or _quantizer_name(merged) is None:
                    raise ConfigError(f"scheme key 'overrides[{i}].{role}' names no quantizer and the scheme has "
                                      f"no base {role} quantizer: add quantizer: <name>")
                _create(merged, role, f"overrides[{i}].{role}")
            if base is not None and self.first_last_bits is not None:
                _create(dict(base, bits=self.first_last_bits), role, "first_last_bits")


def check_training_fields(obj) -> None:
    """The quantizer-training fields of a scheme (attributes of ``obj``), checked and normalised."""
    import math

    m = obj.quantizer_lr_multiplier
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
        raise ConfigError(f"scheme key 'quantizer_lr_multiplier' must be a finite number >= 0 (1: the model's "
                          f"learning rate), got {m!r}")
    if not isinstance(obj.quantizer_weight_decay, bool):
        raise ConfigError(f"scheme key 'quantizer_weight_decay' must be true or false, got "
                          f"{obj.quantizer_weight_decay!r}")
    n = obj.freeze_quantizer_steps
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"scheme key 'freeze_quantizer_steps' must be an integer >= 0, got {n!r}")
    obj.quantizer_lr_multiplier = float(m)


def _create(spec, role, where):
    from qresearch.quantizers import create

    try:
        return create(spec, role=role)
    except ConfigError as exc:
        raise ConfigError(f"scheme key {where!r}: {exc}") from None
    except KeyError as exc:  # UnknownNameError
        raise ConfigError(f"scheme key {where!r}: {exc}") from None


def _check_regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"scheme key {where!r}: {pattern!r} is not a valid regex ({exc})") from None


def _parse_overrides(items) -> List[Override]:
    if items is None:
        return []
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"scheme key 'overrides' must be a list of {{match, weights, activations}}, got {items!r}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Override):
            out.append(item)
            continue
        if not isinstance(item, Mapping) or "match" not in item:
            raise ConfigError(f"scheme key 'overrides[{i}]' must be a dict with 'match' (a layer-name regex or "
                              f"class name) and 'weights'/'activations', got {item!r}")
        extra = [k for k in item if k not in ("match", "weights", "activations")]
        if extra:
            raise ConfigError(f"scheme key 'overrides[{i}]' has unknown keys {extra}; "
                              "valid: match, weights, activations")
        match = item["match"]
        if not isinstance(match, str):
            raise ConfigError(f"scheme key 'overrides[{i}].match' must be a string, got {match!r}")
        _check_regex(match, f"overrides[{i}].match")
        parts = {}
        for role in ("weights", "activations"):
            if role not in item:
                parts[role] = {}
            else:
                parts[role] = _check_quantizer_spec(item[role], f"overrides[{i}].{role}", partial=True)
        out.append(Override(match=match, **parts))
    return out


def merge_quantizer_spec(base: Optional[Dict[str, Any]], part: Optional[Dict[str, Any]]):
    """``base`` updated by the partial ``part``; a new quantizer name starts from ``part`` alone."""
    if part is None:
        return None
    part = dict(part)
    name = _quantizer_name(part)
    if base is None:
        return part
    if name is not None and name != _quantizer_name(base):
        # Another algorithm: keep only the fields every quantizer has (bits, per_channel, ...).
        merged = {k: v for k, v in base.items() if k in GRID_FIELDS}
        merged.update(part)
        return merged
    merged = dict(base)
    merged.update(part)
    if LOW_BITS_KEY not in part:   # the override's own fields win over the base spec's low_bits rule
        low_bits.keep_given_quantizer_fields(merged, part)
    return merged
