"""Check a quantization scheme against a hardware target, before any training.

``constrain(spec, target, adapt=False) -> (spec, coercions)``

* Every conflict (bit width, granularity, symmetry, narrow range, scale form, float tensors the
  target cannot run, ...) in the scheme's ``weights``/``activations`` *and* in each of its
  ``overrides`` is collected; without ``adapt`` they are raised together as one
  ``IncompatibleTargetError`` that names, for each, the field, the scheme's value, what the target
  allows and the fix.
* With ``adapt=True`` each conflict is coerced (bits snapped to the nearest allowed width,
  ``per_channel``/``symmetric``/``narrow_range`` set, ``scale_format: pot`` so learned scales are
  rounded to powers of two in the forward pass, ...) and reported in ``coercions``. Conflicts
  no coercion can fix (e.g. a quantizer that cannot use power-of-two scales) are still raised.
* The target-driven fields are filled in either way: ``fixed_output_ranges``, ``quantize_ops``,
  ``bn_folding`` (when the target requires one) and ``first_last_bits``; changed values are
  reported in ``coercions`` too ("set by target").

Effective quantizer settings are what ``qresearch.quantizers.create(spec, role)`` would build:
the class defaults, then the algorithm's role defaults, then the scheme's fields.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from qresearch import quantizers
from qresearch.errors import ConfigError, IncompatibleTargetError
from qresearch.hardware.registry import get as get_target
from qresearch.hardware.target import Target
from qresearch.quantizers.registry import ROLES
from qresearch.schemes import presets
from qresearch.schemes.layers import TARGET_KINDS, classes_of_target_kind, target_kind_of_name
from qresearch.schemes.spec import SchemeSpec, bn_folding_satisfies
from qresearch.spec_keys import NAME_KEYS

# Plain defaults when a quantizer class cannot be looked up (mirrors quantizers.base.Quantizer).
BASE_DEFAULTS = {"bits": 8, "symmetric": False, "narrow_range": False, "per_channel": False,
                 "signed": True, "scale_format": "float32"}
DEFAULT_QUANTIZER = "minmax"


@dataclass
class Conflict:
    """One way a scheme breaks a target's rules."""

    field: str
    scheme_value: Any
    allowed: Any
    fix: str
    coercible: bool = True

    def __str__(self) -> str:
        how = "change the scheme, or pass adapt=True to " + self.fix if self.coercible else self.fix
        return f"{self.field}: scheme has {self.scheme_value!r}, target allows {self.allowed} — {how}"


def _fmt(values) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def nearest(value: int, allowed) -> int:
    """The allowed bit width closest to ``value`` (ties go to the wider one, never lose precision)."""
    return min(allowed, key=lambda b: (abs(b - value), -b))


def kind_of_match(match: Any) -> Optional[str]:
    """'conv' / 'dense' when an override's ``match`` names a layer class of that kind, else None."""
    return target_kind_of_name(match)


# ----------------------------------------------------------------- quantizer fields
def _quantizer_info(qspec: Mapping[str, Any], role: str):
    """(name, class or None, effective fields) for a quantizer spec dict."""
    name = next((qspec[k] for k in NAME_KEYS if k in qspec), None)
    cls = None
    eff = dict(BASE_DEFAULTS)
    if name is not None:
        cls = quantizers.get(name)  # unknown names fail here, with the known ones listed
        eff = dict(quantizers.parameters(cls))
        eff.update(getattr(cls, "role_defaults", {}).get(role, {}))
    eff.update({k: v for k, v in qspec.items() if k not in NAME_KEYS})
    return name, cls, eff


def _spec_to_dict(spec) -> Dict[str, Any]:
    if isinstance(spec, str):
        spec = presets.get(spec)
    if hasattr(spec, "to_dict"):
        return copy.deepcopy(spec.to_dict())
    if hasattr(spec, "items") and not isinstance(spec, dict):  # OmegaConf
        try:
            from omegaconf import OmegaConf

            return OmegaConf.to_container(spec, resolve=True)
        except Exception:
            spec = dict(spec)
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec))
    raise ConfigError(f"a scheme must be a SchemeSpec, a dict or a preset name, got {type(spec).__name__}")


# ----------------------------------------------------------------- the checker
class _Checker:
    def __init__(self, target: Target, adapt: bool):
        self.t = target
        self.adapt = adapt
        self.conflicts: List[Conflict] = []
        self.coercions: List[str] = []

    def conflict(self, field, value, allowed, fix, coercible=True, apply=None, note=None):
        c = Conflict(field, value, allowed, fix, coercible)
        if self.adapt and coercible and apply is not None:
            apply()
            self.coercions.append(note or f"{field}: {value!r} -> {fix} (target {self.t.name})")
        else:
            self.conflicts.append(c)

    # One quantizer spec (base or override-merged). ``qspec`` is the dict we edit; ``base``
    # holds inherited fields for an override (so effective = base + override).
    def check_quantizer(self, where: str, role: str, qspec: Dict[str, Any], base: Mapping[str, Any],
                        kind: Optional[str]):
        rules = self.t.rules(role)
        merged = dict(base)
        merged.update(qspec)
        name, cls, eff = _quantizer_info(merged, role)
        valid = None
        if cls is not None:
            valid = set(quantizers.parameters(cls))
        tname = self.t.name

        def setter(key, value):
            def apply():
                qspec[key] = value
            return apply

        def settable(key) -> bool:
            return valid is None or key in valid

        # An override answers for the fields it sets (inherited ones are reported at the base),
        # unless it switches quantizer, which changes every default.
        own = None if (base is None or not base or any(k in qspec for k in NAME_KEYS)) else set(qspec)

        def require(key, value, allowed_text, how):
            if own is not None and key not in own:
                return
            if settable(key):
                self.conflict(f"{where}.{key}", eff.get(key), allowed_text, how, apply=setter(key, value),
                              note=f"{where}.{key}: {eff.get(key)!r} -> {value!r} (target {tname} allows "
                                   f"{allowed_text})")
            else:
                self.conflict(f"{where}.{key}", eff.get(key), allowed_text,
                              f"quantizer {name!r} has no field {key!r}: pick another quantizer for {role}",
                              coercible=False)

        bits = eff.get("bits")
        allowed_bits = rules.bits
        if isinstance(bits, int) and bits not in allowed_bits:
            snap = nearest(bits, allowed_bits)
            require("bits", snap, _fmt(allowed_bits), f"use bits: {snap}")

        if rules.symmetric_required and not eff.get("symmetric", False):
            require("symmetric", True, "symmetric only (zero point 0)", "use symmetric: true")

        nr = rules.narrow_range
        if nr is not None and bool(eff.get("narrow_range", False)) != nr:
            text = "narrow_range: true ([-(2^(b-1)-1), 2^(b-1)-1])" if nr else "narrow_range: false"
            require("narrow_range", nr, text, f"use narrow_range: {str(nr).lower()}")

        sg = rules.signed
        if sg is not None and "signed" in qspec and bool(qspec["signed"]) != sg:
            require("signed", sg, f"signed: {str(sg).lower()} (the runtime stores this grid "
                    f"{'signed with zero point 0' if sg else 'unsigned'})", f"use signed: {str(sg).lower()}")

        sf = eff.get("scale_format", "float32")
        if sf not in rules.scale_format:
            want = rules.scale_format[0]
            if want == "pot" and cls is not None and not getattr(cls, "supports_pot_scales", True):
                self.conflict(f"{where}.scale_format", sf, _fmt(rules.scale_format),
                              f"quantizer {name!r} cannot use power-of-two scales: use the 'pot' quantizer "
                              f"or another that supports scale_format: pot", coercible=False)
            else:
                require("scale_format", want, _fmt(rules.scale_format),
                        f"use scale_format: {want}" + (" (scales rounded to powers of two in the forward pass)"
                                                       if want == "pot" else ""))

        per_channel = bool(eff.get("per_channel", False))
        if role == "activations":
            if per_channel:
                require("per_channel", False, "per_tensor activations", "use per_channel: false")
        else:
            if own is None or "per_channel" in own:
                self.check_granularity(where, qspec, eff, kind, settable, name)

    def check_granularity(self, where, qspec, eff, kind, settable, name):
        gran = "per_channel" if eff.get("per_channel", False) else "per_tensor"
        rules = self.t.weights
        kinds = [kind] if kind else list(TARGET_KINDS)
        bad = [k for k in kinds if gran not in rules.allowed_granularity(k)]
        if not bad:
            return
        want = "per_tensor" if gran == "per_channel" else "per_channel"
        allowed = ", ".join(f"{k}: {_fmt(rules.allowed_granularity(k))}" for k in kinds)
        if kind is None and len(bad) < len(kinds) and self.base_level:
            # The scheme's granularity fits the target's main layer kinds but not these ones (e.g.
            # TFLite: per-channel conv, per-tensor Dense): the target fills one override per layer
            # class of each such kind, unless the scheme already has one. Reported, not refused.
            for k in bad:
                if self.override_fixes(k, want):
                    continue
                classes = classes_of_target_kind(k)
                for c in classes:
                    self.new_overrides.append({"match": c, "weights": {"per_channel": want == "per_channel"}})
                self.coercions.append(
                    f"{where}.per_channel: {k} layers ({', '.join(classes)}) -> {want} via overrides (set by "
                    f"target {self.t.name}: {k}: {_fmt(rules.allowed_granularity(k))})")
            return
        if not settable("per_channel"):
            self.conflict(f"{where}.per_channel", eff.get("per_channel"), allowed,
                          f"quantizer {name!r} has no field 'per_channel'", coercible=False)
            return

        def apply():
            qspec["per_channel"] = want == "per_channel"

        self.conflict(f"{where}.per_channel", eff.get("per_channel", False), allowed,
                      f"use per_channel: {str(want == 'per_channel').lower()}", apply=apply,
                      note=f"{where}.per_channel: {gran} -> {want} (target {self.t.name} allows {allowed})")

    def override_fixes(self, kind: str, want: str) -> bool:
        for ov in self.overrides:
            w = ov.get("weights")
            if kind_of_match(ov.get("match")) == kind and isinstance(w, Mapping) and "per_channel" in w:
                if ("per_channel" if w["per_channel"] else "per_tensor") == want:
                    return True
        return False

    # ------------------------------------------------------------- whole scheme
    def run(self, d: Dict[str, Any]) -> Dict[str, Any]:
        t = self.t
        self.overrides = d.get("overrides") or []
        self.new_overrides: List[Dict[str, Any]] = []
        quantizes_acts = t.quantize_ops != "weights_only"

        for role in ROLES:
            q = d.get(role)
            needed = role == "weights" or quantizes_acts
            if q is None:
                if needed:
                    rules = t.rules(role)
                    fill = {"quantizer": DEFAULT_QUANTIZER, "bits": nearest(8, rules.bits)}

                    def apply(role=role, fill=fill):
                        d[role] = fill

                    self.conflict(role, None, f"quantized {role} ({t.quantize_ops})",
                                  f"quantize {role} with the default {fill}", apply=apply,
                                  note=f"{role}: null (float) -> {fill} (target {t.name} quantizes {role})")
                continue
            if isinstance(q, str):
                q = d[role] = {"quantizer": q}
            if not isinstance(q, Mapping):
                raise ConfigError(f"scheme field {role!r} must be a quantizer spec dict or null, got {q!r}")
            self.base_level = True
            self.check_quantizer(role, role, q, {}, None)
            sg = t.rules(role).signed
            if sg is not None and "signed" not in q:
                # Schemes pick unsigned grids after ReLU unless told; a signed-only runtime must be told.
                q["signed"] = sg
                self.coercions.append(f"{role}.signed: (auto) -> {str(sg).lower()} (set by target {t.name})")
        self.base_level = False

        for i, ov in enumerate(self.overrides):
            if not isinstance(ov, Mapping):
                raise ConfigError(f"scheme overrides[{i}] must be a mapping, got {ov!r}")
            kind = kind_of_match(ov.get("match"))
            label = f"overrides[{i}] (match {ov.get('match')!r})"
            for role in ROLES:
                if role not in ov:
                    continue
                q = ov[role]
                needed = role == "weights" or quantizes_acts
                if q is None:
                    if needed and d.get(role) is not None:
                        def apply(ov=ov, role=role):
                            del ov[role]

                        self.conflict(f"{label}.{role}", None, f"quantized {role}",
                                      f"drop the override's {role}: null (use the scheme's {role})", apply=apply,
                                      note=f"{label}.{role}: null (float) -> the scheme's {role} "
                                           f"(target {t.name} quantizes {role})")
                    continue
                if not isinstance(q, Mapping):
                    raise ConfigError(f"scheme {label}.{role} must be a partial quantizer spec dict or null")
                base = d.get(role) or {}
                self.check_quantizer(f"{label}.{role}", role, ov[role], base, kind)
        if self.new_overrides:
            d["overrides"] = list(self.overrides) + self.new_overrides

        skip = d.get("skip") or []
        if skip and t.integer_only:
            def apply():
                d["skip"] = []

            self.conflict("skip", list(skip), "[] (integer-only runtime: a float layer cannot run)",
                          "quantize every layer (skip: [])", apply=apply,
                          note=f"skip: {list(skip)} -> [] (target {t.name} runs integer-only)")

        flb = d.get("first_last_bits")
        if t.first_last_bits is not None:
            if flb != t.first_last_bits:
                d["first_last_bits"] = t.first_last_bits
                self.coercions.append(f"first_last_bits: {flb!r} -> {t.first_last_bits} (set by target {t.name})")
        elif flb is not None:
            common = sorted(set(t.weights.bits) & set(t.activations.bits))
            if flb not in common:
                value = nearest(flb, common) if common else None

                def apply():
                    d["first_last_bits"] = value

                self.conflict("first_last_bits", flb, _fmt(common) + " (allowed for both weights and "
                              "activations) or null", f"use first_last_bits: {value}", apply=apply,
                              note=f"first_last_bits: {flb!r} -> {value!r} (target {t.name})")

        self.fill(d, "quantize_ops", t.quantize_ops)
        if folds_kept_bn_at_deployment(d, t):
            self.coercions.append(f"bn_folding: 'no_fold' kept: BN trains as the scheme says and folds into the "
                                  f"trained per-channel weight grids for target {t.name} (fold_for_deployment)")
        elif not bn_folding_satisfies(d.get("bn_folding", "fold"), t.bn_folding):
            self.fill(d, "bn_folding", t.bn_folding)
        if t.fixed_output_params:
            self.fill(d, "fixed_output_ranges", t.fixed_output_ranges)

        # Whatever the coercions did, each quantizer must still build.
        if not self.conflicts:
            self.validate_builds(d)
        return d

    def fill(self, d, key, value):
        old = d.get(key)
        if old != value:
            d[key] = copy.deepcopy(value)
            if isinstance(old, Mapping) and isinstance(value, Mapping):
                # entries the target adds are no change to the scheme: report the ones it replaces
                changed = {k: v for k, v in value.items() if k in old and old[k] != v}
                for k in set(old) - set(value):
                    d[key][k] = copy.deepcopy(old[k])
                if changed:
                    was = {k: old[k] for k in changed}
                    self.coercions.append(f"{key}: {was!r} -> {changed!r} (set by target {self.t.name})")
            elif old is not None:
                self.coercions.append(f"{key}: {old!r} -> {value!r} (set by target {self.t.name})")

    def validate_builds(self, d):
        specs = [(r, r, d.get(r)) for r in ROLES]
        for i, ov in enumerate(d.get("overrides") or []):
            for r in ROLES:
                if isinstance(ov.get(r), Mapping) and isinstance(d.get(r), Mapping):
                    merged = dict(d[r])
                    merged.update(ov[r])
                    specs.append((f"overrides[{i}].{r}", r, merged))
        for where, role, q in specs:
            if not isinstance(q, Mapping) or not any(k in q for k in NAME_KEYS):
                continue
            try:
                quantizers.create(dict(q), role=role)
            except ConfigError as exc:
                self.conflicts.append(Conflict(where, dict(q), f"a quantizer spec valid on {self.t.name}",
                                               f"the constrained spec does not build: {exc}", coercible=False))


def folds_kept_bn_at_deployment(d: Mapping[str, Any], t: Target) -> bool:
    """Whether a scheme dict trained with ``bn_folding: no_fold`` deploys on ``t``, which requires a fold, through
    ``qresearch.fold_for_deployment`` rather than being set to ``fold``: the fold is exact where the weight grid is
    per output channel on float scales (``schemes/refold.py``), so the scheme's weights must be both and the target
    must allow float scales. A power-of-two scale times γ/σ is no power of two: such schemes train the fold."""
    if d.get("bn_folding", "fold") != "no_fold" or t.bn_folding != "fold" or not d.get("weights"):
        return False
    _, _, eff = _quantizer_info(d["weights"], "weights")
    return bool(eff.get("per_channel")) and eff.get("scale_format", "float32") == "float32" \
        and "float32" in t.weights.scale_format


def constrain(spec, target, adapt: bool = False, adapt_bits: bool = True) -> Tuple[SchemeSpec, List[str]]:
    """Check ``spec`` against ``target``; return ``(constrained SchemeSpec, coercions)``.

    ``spec``: SchemeSpec | dict | preset name. ``target``: Target | name | dict.
    Raises ``IncompatibleTargetError`` naming every conflict (all of them; with ``adapt`` only
    the ones no coercion can fix). ``adapt_bits=False`` (with ``adapt``): the scheme's weight or
    activation width is never snapped, since a run labelled "4 bits" must not silently train at 8;
    a width the target lacks raises instead.
    """
    t = get_target(target)
    d = _spec_to_dict(spec)
    wanted = _role_bits(d)  # before the checker, which edits ``d`` in place
    checker = _Checker(t, adapt)
    out = checker.run(d)
    if adapt and not adapt_bits and not checker.conflicts:
        _refuse_snapped_bits(wanted, _role_bits(out), t)
    if checker.conflicts:
        n = len(checker.conflicts)
        lines = "\n".join(f"  - {c}" for c in checker.conflicts)
        tail = ("" if any(not c.coercible for c in checker.conflicts) or adapt else
                "\nFix the scheme, or pass adapt=True to coerce it to the target (every coercion is reported).")
        err = IncompatibleTargetError(
            f"scheme is incompatible with hardware target {t.name!r} ({n} conflict{'s' * (n != 1)}):\n"
            f"{lines}{tail}")
        err.conflicts = checker.conflicts
        err.target = t.name
        raise err
    _accumulator_aware(out, t, checker.coercions)
    return SchemeSpec.from_dict(out), checker.coercions


def _accumulator_aware(d: Dict[str, Any], t: Target, notes: List[str]) -> None:
    """A weight quantizer that bounds the accumulator (``accumulator_bits``/``input_bits`` parameters, e.g.
    A2Q) takes the width of the target's integer pipeline and the scheme's activation width, so sweeping
    ``hardware.pipeline.accumulator_bits`` moves the bound with the hardware."""
    w, a = d.get("weights"), d.get("activations")
    if not isinstance(w, dict) or t.pipeline is None:
        return
    _, cls, _ = _quantizer_info(w, "weights")
    params = quantizers.parameters(cls) if cls is not None else {}
    updates = {"accumulator_bits": t.pipeline.accumulator_bits}
    if isinstance(a, dict) and a.get("bits") is not None:
        updates["input_bits"] = int(a["bits"])
    for key, value in updates.items():
        if key in params and w.get(key) != value:
            notes.append(f"weights.{key}: {w.get(key, params[key])!r} -> {value!r} (from target {t.name!r}'s "
                         f"{'pipeline accumulator' if key == 'accumulator_bits' else 'activation width'})")
            w[key] = value


def _role_bits(spec: Mapping[str, Any]) -> Dict[str, Optional[int]]:
    return {role: int(q["bits"]) if isinstance(q, Mapping) and q.get("bits") is not None else None
            for role, q in ((role, spec.get(role)) for role in ROLES)}


def _refuse_snapped_bits(wanted: Dict[str, Optional[int]], got: Dict[str, Optional[int]], t: Target) -> None:
    changed = [f"{role} at {wanted[role]} bits (allowed: {list(t.rules(role).bits)})" for role in ROLES
               if None not in (wanted[role], got[role]) and wanted[role] != got[role]]
    if changed:
        raise IncompatibleTargetError(
            f"target {t.name!r} cannot run {' and '.join(changed)}. Pick a bit width the target supports, "
            f"another hardware target, or set adapt_bits=true to snap to the nearest allowed width.")
