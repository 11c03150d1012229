"""A scheme's ``low_bits: {max_bits: N, <scheme field>: <value>, ...}``: scheme fields that replace its own where its
width is at most N bits, so one preset can train BN one way at 4 bits and another at 2 (the scheme-level twin of a
quantizer spec's ``low_bits``, ``qresearch.quantizers.registry``).

The width is the narrower of the scheme's weight and activation ``bits`` (the sweep's ``bits=``); per-layer overrides
and ``first_last_bits`` do not count. A rule that applies is consumed: the fields are set and ``low_bits`` leaves the
scheme, so a later change of a field (a hardware target's coercion, ``fold_for_deployment``'s fold) is not undone. A
rule that does not apply stays, for a later width. ``scheme.low_bits=null`` keeps the scheme's own fields at every
width; in a run, a field set on the command line (``scheme.bn_folding=fold bits=2``) keeps its value, and so does a
quantizer field that a role's own rule would replace (``scheme.weights.init=max bits=2``, or a per-layer override's).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from qresearch.errors import ConfigError
from qresearch.spec_keys import LOW_BITS_KEY as KEY, NAME_KEYS, split_low_bits

#: What a scheme's rule may set: how BN trains and how quantizer parameters train. The quantizers themselves (and
#: what a hardware target checks) are the scheme's own at every width; a quantizer's rule is its spec's ``low_bits``.
FIELDS = ("bn_folding", "bn_freeze_steps", "bn_reestimation_batches", "quantizer_lr_multiplier",
          "quantizer_weight_decay", "freeze_quantizer_steps")


def parse(value) -> Tuple[int, Dict[str, Any]]:
    """``(max_bits, fields)`` of a scheme's ``low_bits`` (``(0, {})`` for null); the shape checked, not the values
    (the scheme checks those as its own)."""
    example = "{max_bits: 3, bn_folding: no_fold}"
    max_bits, fields = split_low_bits(value, f"scheme key {KEY}", example)
    if not max_bits:
        return 0, {}
    other = [k for k in fields if k not in FIELDS]
    if other:
        raise ConfigError(f"scheme key {KEY!r} cannot set {', '.join(map(repr, other))}; it sets {', '.join(FIELDS)}. "
                          "A quantizer's own low-bit fields go in its spec (weights.low_bits, activations.low_bits)")
    if not fields:
        raise ConfigError(f"scheme key {KEY!r} sets no field: give at least one of {', '.join(FIELDS)}, e.g. {example}")
    return max_bits, fields


def width(weights: Optional[Mapping[str, Any]], activations: Optional[Mapping[str, Any]]) -> Optional[int]:
    """The narrower of the two quantizer specs' ``bits`` (a spec without ``bits``: its quantizer's default); None
    where both roles stay float."""
    from qresearch.quantizers import registry

    widths = []
    for spec in (weights, activations):
        if not spec:
            continue
        bits = spec.get("bits")
        if bits is None:
            name = next((spec[k] for k in NAME_KEYS if k in spec), None)
            bits = registry.parameters(registry.get(name)).get("bits") if name else None
        if isinstance(bits, int) and not isinstance(bits, bool):
            widths.append(bits)
    return min(widths) if widths else None


def applied_fields(rule, weights, activations) -> Optional[Dict[str, Any]]:
    """The fields a scheme's rule sets where it applies to these quantizer specs (the narrower width at most its
    ``max_bits``); None where it does not (or there is no rule)."""
    max_bits, fields = parse(rule)
    w = width(weights, activations) if max_bits else None
    return fields if w is not None and w <= max_bits else None


def resolved(scheme: Mapping[str, Any], keep: Iterable[str] = ()) -> Dict[str, Any]:
    """A scheme dict with its ``low_bits`` rule applied and consumed where its width is at most ``max_bits``;
    otherwise a copy as it is. What the runner's dict readers (target coercion, BN re-estimation) see. Fields in
    ``keep`` (set explicitly, e.g. ``scheme.bn_folding=fold`` on the command line) keep the scheme's value."""
    d = copy.deepcopy(dict(scheme or {}))
    keep = set(keep)
    fields = applied_fields(d.get(KEY), d.get("weights"), d.get("activations"))
    if fields is not None:
        d.update({k: v for k, v in fields.items() if k not in keep})
        d.pop(KEY)
    for role in ("weights", "activations"):
        keep_given_quantizer_fields(d.get(role), {k.split(".", 1)[1] for k in keep if k.startswith(role + ".")})
    return d


def keep_given_quantizer_fields(spec, given) -> None:
    """Drop from a quantizer spec's own ``low_bits`` rule (applied when the quantizer is created) the fields given
    explicitly, in place: on the command line (``scheme.weights.init=max bits=2``) or in a per-layer override. The
    given value, not the rule's, holds at every width."""
    given = set(given or ()) - {KEY}
    if not given or not isinstance(spec, dict) or not isinstance(spec.get(KEY), dict):
        return
    rule = {k: v for k, v in spec[KEY].items() if k not in given}
    spec[KEY] = rule if set(rule) - {"max_bits"} else None
