"""The quantizer objects of one planned layer: its ``LayerQuantizeConfig`` and its input quantizers' specs."""
from __future__ import annotations

from typing import Any, Dict

from qresearch._compat import keras
from qresearch.errors import ConfigError
from qresearch.quantizers import create
from qresearch.quantizers.registry import get as get_quantizer, parameters
from qresearch.schemes import layers as L
from qresearch.schemes.lowered_activations import lowering
from qresearch.schemes.plan import LayerPlan
from qresearch.schemes.spec import SchemeSpec
from qresearch.schemes.wrappers import FixedRangeQuantizer, LayerQuantizeConfig, get_attr

_MISSING = object()


def quantizer(spec_dict, role, where):
    try:
        return create(spec_dict, role=role)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def model_input_spec(a: Dict[str, Any]) -> Dict[str, Any]:
    """A model input's quantizer starts from the data where the quantizer can (``data_init``): inputs
    come at any scale (pixels in [0, 255]), and a fixed start such as PACT's α = 6 would clip them."""
    name = a.get("quantizer") or a.get("name")
    try:
        known = parameters(get_quantizer(name)) if isinstance(name, str) else {}
    except Exception:  # unknown names are reported where the quantizer is created
        known = {}
    return dict(a, data_init=True) if "data_init" in known and "data_init" not in a else a


def act_spec(a: Dict[str, Any], nonneg: bool) -> Dict[str, Any]:
    """An activation quantizer spec for one tensor: per-tensor, and a signed grid unless the tensor is
    known to be non-negative (after ReLU/ReLU6) or the scheme sets ``signed`` itself."""
    out = dict(a, per_channel=False)
    if "signed" not in a:
        out["signed"] = not nonneg
    return out


def _fixed_range(op, bits, scheme: SchemeSpec) -> FixedRangeQuantizer:
    lo, hi = scheme.fixed_output_ranges[op]
    return FixedRangeQuantizer(bits=bits, range_min=lo, range_max=hi)


def _inner_quantizer(fn, a, scheme: SchemeSpec):
    """The fixed-grid quantizer of the tensor inside an activation the runtime runs as several ops (swish: its
    LOGISTIC output), where the scheme fixes that op's range; else None (lowered_activations.py)."""
    rule = lowering(fn)
    if rule is None or rule.inner not in scheme.fixed_output_ranges:
        return None
    return _fixed_range(rule.inner, a.get("bits", 8), scheme)


def layer_config(p: LayerPlan, scheme: SchemeSpec) -> LayerQuantizeConfig:
    layer = p.layer
    weights = {}
    if p.weights_spec is not None:
        for attr in p.spec.weights:
            if p.affine:  # the ChannelAffine built for this BN has these weights
                weights[attr] = quantizer(p.weights_spec, "weights", f"layer {layer.name!r} weights")
                continue
            try:
                value = get_attr(layer, attr)
            except AttributeError:
                value = _MISSING
            if value is _MISSING:
                raise ConfigError(
                    f"layer {layer.name!r} ({type(layer).__name__}) has no attribute {attr!r} named in its layer "
                    f"config; fix the weights list in qresearch.schemes.register_layer({type(layer).__name__}, ...)")
            if value is None:
                continue
            weights[attr] = quantizer(p.weights_spec, "weights", f"layer {layer.name!r} weights")
    acts = {}
    a = p.acts_spec
    if a is not None:
        act_q = act_spec(a, nonneg=False)  # pre-activation values are signed
        for attr in p.spec.activations:
            fn = getattr(layer, attr, None)
            name = L.activation_name(fn)
            entry = {"pre": None, "post": None}
            if fn is not None and (name not in L.FUSABLE_ACTIVATIONS or (name != "linear" and not p.spec.fuses_relu)):
                entry["pre"] = quantizer(act_q, "activations", f"layer {layer.name!r} activations")
            if not p.spec.quantize_output and fn is not None:
                post = act_spec(a, nonneg=name in L.NON_NEGATIVE_ACTIVATIONS)
                entry["post"] = quantizer(post, "activations", f"layer {layer.name!r} activations")
            inner = _inner_quantizer(fn, a, scheme) if entry["pre"] and (p.output or entry["post"]) else None
            if inner is not None:
                entry["inner"] = inner
            if entry["pre"] or entry["post"]:
                acts[attr] = entry
        if isinstance(layer, keras.layers.Activation) and p.output and p.kind == "output":
            inner = _inner_quantizer(layer.activation, a, scheme)  # the layer's call is its activation
            if inner is not None:
                acts["activation"] = {"pre": None, "post": None, "inner": inner}
    inner = None
    if (p.output or p.fused_with) and p.spec.split is not None and p.spec.split.applies(layer):
        # the tensor between the two ops the converter makes of the layer (Rescaling with an offset: MUL, ADD)
        inner = quantizer(act_spec(a, nonneg=False), "activations", f"layer {layer.name!r} inner tensor")
    output = None
    if p.output:
        bits = a.get("bits", 8)
        if p.fixed_name and p.fixed_name in scheme.fixed_output_ranges:
            output = _fixed_range(p.fixed_name, bits, scheme)
        else:
            output = quantizer(act_spec(a, p.nonneg_out), "activations", f"layer {layer.name!r} output")
    info = {"kind": p.kind}
    if p.affine:
        info["bn_affine"] = True
    if p.folded_bn is not None:
        info["folded_bn"] = p.folded_bn.name
        if p.batch_stats_fold:
            info["bn_batch_stats"] = True
    if p.concat_shared:
        info["output_shared_with"] = p.concat_shared
    if p.overrides:
        info["overrides"] = list(p.overrides)
    return LayerQuantizeConfig(weights=weights, activations=acts, output=output, info=info, inner=inner)
