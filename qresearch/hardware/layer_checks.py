"""Per-layer checks against a hardware target, at quantize time (the scheme-level check is ``constrain``).

- ``layer_granularity``: the weight granularity a target allows for one layer's kind (``LayerSpec.target_kind``;
  a subclass counts as its base, a custom layer gets only what the target allows for every kind);
- ``constrain_layers``: that check over a ``ModelPlan``, flipping ``per_channel`` where needed;
- ``require_annotated``: on an integer-only target, layers left out of an annotated model conflict;
- ``check_user_configs``: the user's own tfmot quantizers (``quantize_annotate_layer(quantize_config=...)``).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

from qresearch.errors import IncompatibleTargetError
from qresearch.hardware.registry import get
from qresearch.schemes.annotate import Annotations
from qresearch.schemes.layers import TARGET_KINDS, layer_spec, target_kind
from qresearch.schemes.plan import ModelPlan
from qresearch.schemes.wrappers import ChannelAffine

_log = logging.getLogger(__name__)


def layer_kind(layer) -> Optional[str]:
    """The target layer kind of ``layer`` (a subclass counts as its base: ``MyDense(Dense)`` is dense),
    or None for a layer of no known kind (a custom layer, RNN, Embedding)."""
    return target_kind(layer)


def layer_granularity(target, layer, per_channel: bool) -> Optional[str]:
    """A note when ``target`` does not allow ``layer``'s weight granularity, else None.

    The scheme-level check covers the built-in classes by name; this one runs per layer at quantize
    time. A layer of no known kind gets only what the target allows for every kind (TFLite converts
    per-channel weights on CONV_2D/DEPTHWISE_CONV_2D only: a custom matmul layer with per-channel
    weights does not convert)."""
    t = get(target)
    kind = layer_kind(layer)
    if kind is not None:
        allowed = tuple(t.weights.allowed_granularity(kind))
    else:
        allowed = tuple(g for g in ("per_channel", "per_tensor")
                        if all(g in t.weights.allowed_granularity(k) for k in TARGET_KINDS))
    gran = "per_channel" if per_channel else "per_tensor"
    if not allowed or gran in allowed:
        return None
    inner = getattr(layer, "layer", layer)
    what = f"{kind} layers" if kind else "layers of no known kind (custom layers, RNN, Embedding)"
    return (f"layer {inner.name!r} ({type(inner).__name__}).weights.per_channel: {gran} -> {allowed[0]} "
            f"(target {t.name} allows {list(allowed)} for {what})")


def constrain_layers(plan: ModelPlan, target) -> List[str]:
    """Per-layer weight granularity the target allows; returns a note per layer changed."""
    notes = []
    for p in plan.layers:
        if p.weights_spec is None or p.removed or p.spec is None or not p.spec.weights:
            continue
        layer = ChannelAffine(name=p.layer.name) if p.affine else p.layer
        note = layer_granularity(target, layer, bool(p.weights_spec.get("per_channel", False)))
        if note is not None:
            p.weights_spec = dict(p.weights_spec, per_channel=not p.weights_spec.get("per_channel", False))
            notes.append(note)
            _log.warning("%s", note)
    return notes


def _facts(quantizer) -> Dict[str, object]:
    """bits/symmetric/narrow_range/per_axis a tfmot quantizer exposes (attributes, else its config)."""
    try:
        config = quantizer.get_config() or {}
    except Exception:  # noqa: BLE001 - a user's quantizer may not implement it
        config = {}
    out = {}
    for key, names in (("bits", ("num_bits", "bits")), ("symmetric", ("symmetric",)),
                       ("narrow_range", ("narrow_range",)), ("per_axis", ("per_axis", "per_channel"))):
        for name in names:
            value = getattr(quantizer, name, config.get(name))
            if value is not None:
                out[key] = value
                break
    return out


def _roles(config, layer):
    """(role, what, quantizer) for every quantizer the user's config puts on ``layer``."""
    for weight, q in config.get_weights_and_quantizers(layer):
        yield "weights", weight.name.split("/")[-1].split(":")[0], q
    for _, q in config.get_activations_and_quantizers(layer):
        yield "activations", "activation", q
    for q in config.get_output_quantizers(layer):
        yield "activations", "output", q


def check_user_configs(configured, hardware) -> List[str]:
    """Check the user's quantizers (``configured``: [(layer, config)]) against ``hardware``.

    A readable conflict (bit width, symmetry, narrow range of a tfmot quantizer) raises
    ``IncompatibleTargetError`` naming the layer and the fix: the scheme is coerced to a target, a
    user's own quantizer is not. A quantizer that exposes none of these is reported, not checked."""
    target = get(hardware)
    conflicts, notes = [], []
    for layer, config in configured:
        where = f"layer {layer.name!r} ({type(config).__name__})"
        for role, what, q in _roles(config, layer):
            facts, rules = _facts(q), target.rules(role)
            name = type(q).__name__
            if "bits" not in facts:
                notes.append(f"{where}: {what} quantizer {name} exposes no num_bits: not checked against "
                             f"target {target.name} (allows {list(rules.bits)} bits)")
                continue
            if facts["bits"] not in rules.bits:
                conflicts.append(f"{where}: {what} quantizer {name} has {facts['bits']} bits, target "
                                 f"{target.name} allows {list(rules.bits)}")
            if role == "weights" and rules.symmetric_required and facts.get("symmetric") is False:
                conflicts.append(f"{where}: {what} quantizer {name} is asymmetric, target {target.name} "
                                 "needs symmetric weights")
            if rules.narrow_range is not None and facts.get("narrow_range") not in (None, rules.narrow_range):
                conflicts.append(f"{where}: {what} quantizer {name} has narrow_range={facts['narrow_range']}, "
                                 f"target {target.name} needs narrow_range={rules.narrow_range}")
    if conflicts:
        raise IncompatibleTargetError(
            "a QuantizeConfig given to quantize_annotate_layer conflicts with hardware target "
            f"{target.name!r}: " + "; ".join(conflicts) + ". Fix: build the config's quantizers with what the "
            "target allows, or annotate the layer without quantize_config (the scheme, checked against the "
            "target, then decides), or quantize without hardware=")
    for note in notes:
        _log.warning("%s", note)
    return notes


def require_annotated(graph, annotations: Annotations, hardware, adapt: bool) -> List[str]:
    """On an integer-only target a float layer cannot run, so a layer left out of the annotations is a
    conflict, as a scheme's ``skip`` list is (``hardware.constrain``): raised, or with ``adapt`` annotated
    (the scheme then quantizes it) and noted. Pass-throughs (reshape, max pooling) keep their input's
    grid and are no conflict."""
    target = get(hardware)
    if not annotations.active or not target.integer_only:
        return []
    left = {}
    for node in graph.nodes:
        spec = layer_spec(node.layer)
        if annotations.annotated(node) or (spec is not None and spec.kind_of(node.layer) == "passthrough"
                                           and not spec.same_grid_of(node.layer)):
            continue
        left[id(node.layer)] = node.layer
    if not left:
        return []
    names = [layer.name for layer in left.values()]
    if not adapt:
        raise IncompatibleTargetError(
            f"layers {names} are not annotated, so they would stay float, which hardware target {target.name!r} "
            "(integer-only) cannot run. Fix: annotate them (quantize_annotate_layer, or quantize_annotate_model "
            "for the whole model), or pass adapt=True to let the scheme quantize them, or quantize without "
            "hardware=")
    for layer_id in left:
        annotations.configs[layer_id] = None
    note = f"not annotated: {names} -> quantized by the scheme (target {target.name} runs integer-only)"
    _log.warning("%s", note)
    return [note]
