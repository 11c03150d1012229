"""``quantize``: a float tf_keras model + a scheme → a tfmot QAT model.

The rewrite works on the flattened layer graph (nested models inlined):

1. every layer gets its ``LayerSpec`` (or is skipped); a layer with neither raises
   ``UnsupportedLayerError`` before anything is built;
2. ``bn_folding: fold`` folds each BatchNormalization into the conv/dense before it
   (``w' = w·γ/√(σ²+ε)``, ``b' = β + (b-μ)·γ/√(σ²+ε)``), so the weight quantizer sees the
   kernel TFLite deploys (tflite-int8-spec.md §8);
3. quantizers are resolved per layer (scheme → first/last bits → overrides), and output
   quantizers placed by TFLite's rules (§6): none between conv/dense/add and a ReLU/ReLU6
   after it, one after a concat instead of on its producers, fixed ranges for softmax/
   sigmoid/tanh, none on SAME-scale ops (reshape, pooling, padding);
4. float tensors entering quantized layers get a ``QuantizeInput``;
5. the model is rebuilt with ``QuantizeWrapper`` (tfmot ``QuantizeWrapperV2``) layers and the
   float weights copied in; optional calibration initialises ranges and step sizes.
"""
from __future__ import annotations

import copy
import inspect
import logging
import re
from typing import Any, Dict, List, Optional

import numpy as np

from qresearch._compat import ensure_keras2_model, keras, tf
from qresearch.checks import require_finite
from qresearch.errors import ConfigError, UnsupportedLayerError
from qresearch.quantizers import create
from qresearch.schemes import annotate as A
from qresearch.schemes import layers as L
from qresearch.schemes.graph import GNode, Graph, flatten, split_separable
from qresearch.schemes.spec import SchemeSpec, layer_matches, merge_quantizer_spec
from qresearch.schemes.wrappers import (ChannelAffine, FixedRangeQuantizer, LayerQuantizeConfig, QuantizeInput,
                                        QuantizeLike, QuantizeWrapper, calibration_mode, get_attr)

_log = logging.getLogger(__name__)
K = keras.layers
FOLDABLE = (K.Dense, K.Conv1D, K.Conv2D, K.Conv3D, K.DepthwiseConv2D, K.DepthwiseConv1D,
            K.SeparableConv1D, K.SeparableConv2D)  # Conv*Transpose subclass Conv*
WRAPPER_PREFIX = "quant_"
_MISSING = object()


def resolve_scheme(scheme) -> SchemeSpec:
    if isinstance(scheme, SchemeSpec):
        return copy.deepcopy(scheme)
    if isinstance(scheme, str):
        from qresearch.schemes.presets import get
        return get(scheme)
    if scheme is None:
        raise ConfigError("quantize needs a scheme: a preset name (see qresearch.schemes.names()), "
                          "a dict or a SchemeSpec")
    return SchemeSpec.from_dict(scheme)


# --------------------------------------------------------------------- plan
class _Plan:
    """Per-node decisions."""

    def __init__(self, node: GNode):
        self.node = node
        self.spec: Optional[L.LayerSpec] = None
        self.kind = "float"
        self.float_reason: Optional[str] = None
        self.folded_bn: Optional[keras.layers.Layer] = None
        self.affine = False             # an unfoldable BN deployed as a per-channel affine (ChannelAffine)
        self.removed = False            # a BN folded away
        self.weights_spec = None
        self.acts_spec = None
        self.output = False
        self.fixed_name: Optional[str] = None
        self.overrides: List[str] = []
        self.skipped_kind: Optional[str] = None       # kind of a skipped layer (first/last detection)
        self.nonneg_out = False                       # output known >= 0 (unsigned activation grid)
        self.nonneg_in: Dict[str, bool] = {}
        self.concat_shared: Optional[str] = None      # output range given to this concat
        self.fused_with: Optional[str] = None         # the activation this layer's output fuses into
        self.user_config = None                       # a tfmot QuantizeConfig given with quantize_annotate_layer
        self.input_spec = None                        # the scheme's input quantizer for a user_config layer

    @property
    def layer(self):
        return self.node.layer


def _fixed_name(layer, kind) -> Optional[str]:
    if isinstance(layer, K.Softmax):
        return "softmax"
    if L.op_name(layer) is not None:
        return L.op_name(layer)
    if kind == "fixed":
        return L.activation_name(getattr(layer, "activation", None))
    return None


def _unsupported_message(unsupported, annotated: bool = False) -> str:
    """One line per layer class with no config: the layers, the class and the fix."""
    lines = []
    for cls, plans in unsupported.items():
        names = ", ".join(repr(p.layer.name) for p in plans[:5]) + (f" and {len(plans) - 5} more"
                                                                      if len(plans) > 5 else "")
        first = plans[0].layer
        problem = A.wrapper_problem(first)
        if problem is not None:  # registering a tfmot wrapper class would be the wrong fix
            lines.append(problem)
        elif isinstance(first, keras.Model):
            lines.append(f"layer {names} is a subclassed model ({cls.__name__}), which cannot be rewritten: build it "
                         f"with the functional API, or add {first.name!r} to the scheme's skip list to keep it "
                         "in float")
        else:
            what = "layer" if len(plans) == 1 else "layers"
            lines.append(f"{what} {names} of class {cls.__module__}.{cls.__name__} has no quantization config. "
                         f"Fix: {L.register_fix(first)}"
                         + ("; or give it a tfmot QuantizeConfig: quantize_annotate_layer(layer, quantize_config=...)"
                            if annotated else ""))
    return "; ".join(lines)


def _matches_any(patterns, p: "_Plan") -> bool:
    """A pattern matches the layer, or the user's layer it was split from (SeparableConv)."""
    layers = [p.layer] + ([p.node.origin] if p.node.origin is not None else [])
    return any(layer_matches(s, layer) for s in patterns for layer in layers)


def _make_plans(graph: Graph, spec: SchemeSpec, annotations: Optional[A.Annotations] = None) -> List[_Plan]:
    annotations = annotations or A.Annotations()
    plans = [_Plan(n) for n in graph.nodes]
    unsupported: Dict[type, List[_Plan]] = {}
    counts: Dict[int, int] = {}
    for p in plans:
        counts[id(p.layer)] = counts.get(id(p.layer), 0) + 1
    for p in plans:
        layer = p.layer
        if _matches_any(spec.skip, p):
            p.float_reason = "skipped by the scheme"
            skipped_spec = L.layer_spec(layer)
            p.skipped_kind = skipped_spec.kind_of(layer) if skipped_spec is not None else None
            continue
        if not annotations.annotated(p.node):
            _not_annotated(p)
            continue
        if annotations.config(p.node) is not None:
            _user_configured(p, annotations.config(p.node), spec)
            continue
        p.spec = L.layer_spec(layer)
        if p.spec is None:
            unsupported.setdefault(type(layer), []).append(p)
            continue
        p.kind = p.spec.kind_of(layer)
    if unsupported:
        raise UnsupportedLayerError(_unsupported_message(unsupported, annotations.active))
    if spec.activations is None and spec.weights is None:
        raise ConfigError("the scheme quantizes nothing (weights and activations are both null)")

    producers = {r: p for p in plans for r in p.node.out_refs}
    consumers: Dict[str, List[_Plan]] = {}
    for p in plans:
        for r in dict.fromkeys(p.node.in_refs):
            consumers.setdefault(r, []).append(p)
    outputs = set(graph.output_refs)

    # BN folding
    for p in plans:
        if p.kind != "bn":
            continue
        bn = p.layer
        if spec.bn_folding != "fold":
            continue
        if len(p.node.in_refs) != 1 or counts[id(bn)] > 1:
            continue
        src = p.node.in_refs[0]
        prod = producers.get(src)
        if (prod is None or prod.kind != "compute" or not isinstance(prod.layer, FOLDABLE)
                or counts[id(prod.layer)] > 1 or len(consumers.get(src, [])) != 1 or src in outputs
                or L.activation_name(getattr(prod.layer, "activation", None)) != "linear"
                or prod.folded_bn is not None):
            continue
        axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
        bn_in = bn.input_shape
        out_rank = len(bn_in) if isinstance(bn_in, tuple) else None
        if out_rank is None or len(axis) != 1 or axis[0] % out_rank != out_rank - 1:
            continue
        if getattr(prod.layer, "data_format", "channels_last") == "channels_first":
            continue
        prod.folded_bn = bn
        p.removed = True
        p.kind = "folded"
        p.float_reason = f"folded into {prod.layer.name}"

    # A BN that cannot be folded (after a non-linearity, a pooling, at the input, ...) would deploy as float
    # MUL/ADD: when every op is integer (quantize_ops: all) it becomes a per-channel affine with quantized
    # weights, which TFLite runs as an int8 1x1 DEPTHWISE_CONV_2D.
    if spec.bn_folding == "fold" and spec.quantize_ops == "all" and spec.weights is not None:
        for p in plans:
            if p.kind == "bn" and not p.removed and _affine_ok(p.layer, counts):
                p.affine = True
                p.kind = "compute"
                p.spec = AFFINE_SPEC

    # rewire: consumers of a folded BN read the conv's output directly
    alias = {p.node.out_refs[0]: p.node.in_refs[0] for p in plans if p.removed}
    if alias:
        for p in plans:
            p.node.in_slots = [(alias.get(r, r), i) for r, i in p.node.in_slots]
        graph.output_refs = [alias.get(r, r) for r in graph.output_refs]
        outputs = set(graph.output_refs)
        consumers = {}
        for p in plans:
            if p.removed:
                continue
            for r in dict.fromkeys(p.node.in_refs):
                consumers.setdefault(r, []).append(p)

    # quantizer specs per layer
    # first/last compute layers of the model (a skipped one stays float; the width does not move inward)
    compute = [p for p in plans if (p.kind == "compute" and not p.affine) or p.skipped_kind == "compute"]
    first_last = {id(compute[0]), id(compute[-1])} if compute and spec.first_last_bits else set()
    for p in plans:
        if p.spec is None or p.removed:
            continue
        w, a = spec.weights, spec.activations
        if id(p) in first_last:
            w = None if w is None else dict(w, bits=spec.first_last_bits)
            a = None if a is None else dict(a, bits=spec.first_last_bits)
            p.overrides.append("first_last_bits")
        for o in spec.overrides:
            if _matches_any([o.match], p):
                if o.weights is None:
                    w = None
                elif o.weights:
                    w = merge_quantizer_spec(w, o.weights)
                if o.activations is None:
                    a = None
                elif o.activations:
                    a = merge_quantizer_spec(a, o.activations)
                p.overrides.append(o.match)
        p.weights_spec = w if p.spec.weights else None
        p.acts_spec = a if spec.quantize_ops != "weights_only" else None

    # output quantizers
    def has_acts(q: _Plan) -> bool:
        return q.spec is not None and not q.removed and q.acts_spec is not None

    def sole_consumer(q: _Plan) -> Optional[_Plan]:
        outs = q.node.out_refs
        if len(outs) != 1 or outs[0] in outputs:
            return None
        cs = consumers.get(outs[0], [])
        return cs[0] if len(cs) == 1 else None

    def fused_into_next(q: _Plan) -> bool:
        nxt = sole_consumer(q)
        if nxt is None or not has_acts(nxt) or counts[id(q.layer)] > 1:
            return False
        if nxt.kind == "activation" and q.kind in ("compute", "merge", "bn"):
            return True
        return nxt.kind == "bn" and q.kind == "compute" and \
            L.activation_name(getattr(q.layer, "activation", None)) == "linear"

    fused_tail = set()
    for p in plans:
        if has_acts(p) and fused_into_next(p) and p.kind == "compute":
            nxt = sole_consumer(p)
            fused_tail.add(id(nxt))
            if nxt.kind == "bn" and fused_into_next(nxt):
                fused_tail.add(id(sole_consumer(nxt)))
    for p in plans:
        if not has_acts(p):
            continue
        if p.kind == "compute":
            want = p.spec.quantize_output
        elif p.kind in ("activation", "bn"):
            want = spec.quantize_ops == "all" or id(p) in fused_tail
        elif p.kind in ("merge", "output", "fixed", "concat"):
            want = spec.quantize_ops == "all" and p.spec.quantize_output
        else:
            want = False
        if want and fused_into_next(p):
            want = False
            p.fused_with = sole_consumer(p).layer.name
        p.output = want
        if p.kind == "fixed" or (p.kind == "compute" and L.activation_name(
                getattr(p.layer, "activation", None)) in spec.fixed_output_ranges):
            p.fixed_name = _fixed_name(p.layer, "fixed") if p.kind == "fixed" else \
                L.activation_name(p.layer.activation)
    # sign of every tensor: unsigned grids (LSQ/PACT activations) only where values are >= 0
    nonneg: Dict[str, bool] = {r: False for r in graph.input_refs}
    for p in plans:
        if p.removed:
            continue
        ins = [nonneg.get(r, False) for r in p.node.in_refs]
        act = L.activation_name(getattr(p.layer, "activation", None))
        if p.spec is None:
            value = False
        elif p.kind == "activation":
            value = act in ("relu", "relu6") or isinstance(p.layer, K.ReLU) or \
                L.op_name(p.layer) in ("relu", "relu6") or (act == "linear" and all(ins))
        elif p.kind == "compute":
            value = act in ("relu", "relu6", "softmax", "sigmoid")
        elif p.kind == "fixed":
            value = p.fixed_name in ("softmax", "sigmoid")
        elif p.kind in ("passthrough", "concat") or isinstance(p.layer, (K.GlobalAveragePooling1D,
                                                                          K.GlobalAveragePooling2D,
                                                                          K.GlobalAveragePooling3D,
                                                                          K.Multiply, K.Maximum,
                                                                          K.Average, K.Add)):
            value = bool(ins) and all(ins)
        else:
            value = False
        for r in p.node.out_refs:
            nonneg[r] = bool(value)
        p.nonneg_out = bool(value)
        p.nonneg_in = {r: nonneg.get(r, False) for r in p.node.in_refs}

    # concat: one shared range after the concat, none on its producers
    for p in plans:
        if p.kind != "concat" or not p.output:
            continue
        for r in p.node.in_refs:
            prod = producers.get(r)
            if prod is None or not prod.output or prod.fixed_name:
                continue  # a fixed-range producer (sigmoid, ...) keeps its range: TFLite fixes it
            if all(c.kind == "concat" and c.output for c in consumers.get(r, [])) and r not in outputs \
                    and len(prod.node.out_refs) == 1 and counts[id(prod.layer)] == 1:
                prod.output = False
                prod.float_reason = None
                prod.concat_shared = p.layer.name
    return plans


def _not_annotated(p: _Plan) -> None:
    """A layer left out of an annotated model stays float. A pure pass-through (reshape, max pooling, ...)
    still carries its input's grid, so the next quantized layer needs no new input quantizer."""
    spec = L.layer_spec(p.layer)
    p.skipped_kind = spec.kind_of(p.layer) if spec is not None else None
    p.float_reason = A.NOT_ANNOTATED
    if p.skipped_kind == "passthrough" and not spec.same_grid:
        p.kind = "passthrough"
        p.float_reason = f"{A.NOT_ANNOTATED} (pass-through: keeps its input's range)"


def _user_configured(p: _Plan, config, spec: SchemeSpec) -> None:
    """A layer annotated with its own QuantizeConfig: the config decides its quantizers; the scheme only
    quantizes a float input of a layer with quantized weights (tfmot quantizes annotated layers' inputs).
    It keeps its place among the compute layers (first/last bits do not move past it)."""
    p.user_config = config
    p.kind = "user_config"
    layer_spec = L.layer_spec(p.layer)
    weights = A.quantizes_weights(config, p.layer)
    p.skipped_kind = layer_spec.kind_of(p.layer) if layer_spec is not None else ("compute" if weights else None)
    reads_int = layer_spec.quantized_input if layer_spec is not None else weights
    if reads_int and spec.activations is not None and spec.quantize_ops != "weights_only":
        p.input_spec = spec.activations


AFFINE_SPEC = L.LayerSpec(weights=("depthwise_kernel",), activations=(), quantize_output=True, kind="compute",
                          quantized_input=True)


def _affine_ok(bn, counts) -> bool:
    """A BN over the last axis of a rank 2-5 input, called once: it can become a ``ChannelAffine``."""
    if counts[id(bn)] > 1:
        return False
    axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    shape = bn.input_shape
    if not isinstance(shape, tuple) or not 2 <= len(shape) <= 5 or shape[-1] is None:
        return False
    return len(axis) == 1 and axis[0] % len(shape) == len(shape) - 1


def _affine_weights(bn) -> List[np.ndarray]:
    """``[kernel (1, 1, C, 1), bias (C,)]`` of the affine ``bn`` computes in inference mode."""
    mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    gamma = bn.gamma.numpy() if bn.gamma is not None else np.ones_like(mean)
    beta = bn.beta.numpy() if bn.beta is not None else np.zeros_like(mean)
    g = (gamma / np.sqrt(var + bn.epsilon)).astype(np.float32)
    return [g.reshape(1, 1, -1, 1), (beta - mean * g).astype(np.float32)]


# -------------------------------------------------------------------- build
def _clone_layer(layer, name: str, must_copy: bool = False):
    """A fresh copy of ``layer`` (from its config). A custom layer whose config cannot rebuild it is
    reused as is (its weights then stay shared with the float model) with a warning naming the fix."""
    try:
        config = layer.get_config()
        config["name"] = name
        return type(layer).from_config(config)
    except Exception as exc:  # noqa: BLE001 - custom layers fail in many ways
        fix = (f"give {type(layer).__name__} a get_config() that returns every __init__ argument "
               "(also needed to save and load the model)")
        if must_copy:
            raise ConfigError(f"cannot copy layer {layer.name!r} ({type(layer).__name__}): {exc}. Fix: {fix}") \
                from exc
        _log.warning("layer %r (%s) cannot be rebuilt from its config (%s): the QAT model reuses it, so it shares "
                     "its weights with the float model. Fix: %s", layer.name, type(layer).__name__, exc, fix)
        return layer


def _quantizer(spec_dict, role, where):
    try:
        return create(spec_dict, role=role)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _has_attrs(layer, attrs) -> bool:
    try:
        return all(get_attr(layer, a) is not None for a in attrs)
    except AttributeError:
        return False


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _float_reason(p: _Plan) -> str:
    if p.kind == "passthrough":
        return "pass-through: shares its input's range (no quantizer needed)"
    if p.fused_with:
        return f"fused with {p.fused_with}: one quantizer after it"
    if p.kind in ("activation", "bn"):
        return "fused: the quantizer after it or after its producer covers it"
    if p.concat_shared:
        return f"output range shared with {p.concat_shared}"
    if p.acts_spec is None and p.weights_spec is None:
        return "the scheme quantizes nothing here (weights/activations null or weights_only)"
    return "no quantizer needed by this scheme's quantize_ops"


def _model_input_spec(a: Dict[str, Any]) -> Dict[str, Any]:
    """A model input's quantizer starts from the data where the quantizer can (``data_init``): inputs
    come at any scale (pixels in [0, 255]), and a fixed start such as PACT's α = 6 would clip them."""
    from qresearch.quantizers.registry import get as get_quantizer, parameters

    name = a.get("quantizer") or a.get("name")
    try:
        known = parameters(get_quantizer(name)) if isinstance(name, str) else {}
    except Exception:  # unknown names are reported where the quantizer is created
        known = {}
    return dict(a, data_init=True) if "data_init" in known and "data_init" not in a else a


def _act_spec(a: Dict[str, Any], nonneg: bool) -> Dict[str, Any]:
    """An activation quantizer spec for one tensor: per-tensor, and a signed grid unless the tensor is
    known to be non-negative (after ReLU/ReLU6) or the scheme sets ``signed`` itself."""
    out = dict(a, per_channel=False)
    if "signed" not in a:
        out["signed"] = not nonneg
    return out


def _layer_config(p: _Plan, scheme: SchemeSpec) -> LayerQuantizeConfig:
    layer = p.layer
    weights = {}
    if p.weights_spec is not None:
        for attr in p.spec.weights:
            if p.affine:  # the ChannelAffine built for this BN has these weights
                weights[attr] = _quantizer(p.weights_spec, "weights", f"layer {layer.name!r} weights")
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
            weights[attr] = _quantizer(p.weights_spec, "weights", f"layer {layer.name!r} weights")
    acts = {}
    a = p.acts_spec
    if a is not None:
        act_q = _act_spec(a, nonneg=False)  # pre-activation values are signed
        for attr in p.spec.activations:
            fn = getattr(layer, attr, None)
            name = L.activation_name(fn)
            entry = {"pre": None, "post": None}
            if fn is not None and name not in L.FUSABLE_ACTIVATIONS:
                entry["pre"] = _quantizer(act_q, "activations", f"layer {layer.name!r} activations")
            if not p.spec.quantize_output and fn is not None:
                post = _act_spec(a, nonneg=name in ("relu", "relu6", "softmax", "sigmoid"))
                entry["post"] = _quantizer(post, "activations", f"layer {layer.name!r} activations")
            if entry["pre"] or entry["post"]:
                acts[attr] = entry
    output = None
    if p.output:
        bits = a.get("bits", 8)
        if p.fixed_name and p.fixed_name in scheme.fixed_output_ranges:
            lo, hi = scheme.fixed_output_ranges[p.fixed_name]
            output = FixedRangeQuantizer(bits=bits, range_min=lo, range_max=hi)
        else:
            output = _quantizer(_act_spec(a, p.nonneg_out), "activations",
                                f"layer {layer.name!r} output")
    info = {"kind": p.kind}
    if p.affine:
        info["bn_affine"] = True
    if p.folded_bn is not None:
        info["folded_bn"] = p.folded_bn.name
    if p.concat_shared:
        info["output_shared_with"] = p.concat_shared
    if p.overrides:
        info["overrides"] = list(p.overrides)
    return LayerQuantizeConfig(weights=weights, activations=acts, output=output, info=info)


def _fold_weights(layer, bn) -> Dict[str, np.ndarray]:
    """Folded ``{kernel attr: w', "bias": b'}`` for ``layer`` followed by ``bn``."""
    gamma = bn.gamma.numpy() if bn.gamma is not None else 1.0
    beta = bn.beta.numpy() if bn.beta is not None else 0.0
    mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    g = gamma / np.sqrt(var + bn.epsilon)
    g = np.broadcast_to(g, mean.shape).astype(np.float32)
    bias = layer.bias.numpy() if getattr(layer, "use_bias", False) and layer.bias is not None else 0.0
    out = {"bias": (beta + (bias - mean) * g).astype(np.float32)}
    if isinstance(layer, (K.SeparableConv1D, K.SeparableConv2D)):
        out["pointwise_kernel"] = layer.pointwise_kernel.numpy() * g
    elif isinstance(layer, (K.DepthwiseConv2D, K.DepthwiseConv1D)):
        k = layer.depthwise_kernel.numpy()
        out["depthwise_kernel"] = k * g.reshape(k.shape[-2], k.shape[-1])
    elif isinstance(layer, (K.Conv1DTranspose, K.Conv2DTranspose, K.Conv3DTranspose)):
        k = layer.kernel.numpy()
        out["kernel"] = k * g.reshape(-1, 1)
    else:
        out["kernel"] = layer.kernel.numpy() * g
    return out


def _short(var) -> str:
    return var.name.split("/")[-1].split(":")[0]


def _relative(var) -> str:
    """The variable's path inside its layer ("query/kernel" for "mha/query/kernel:0")."""
    parts = var.name.split(":")[0].split("/")
    return "/".join(parts[1:]) if len(parts) > 1 else parts[0]


def _build(graph: Graph, plans: List[_Plan], scheme: SchemeSpec):
    used = set()

    def unique(name):
        base, i = name, 1
        while name in used:
            name = f"{base}_{i}"
            i += 1
        used.add(name)
        return name

    new_inputs = []
    tensors: Dict[str, Any] = {}
    input_names: Dict[str, str] = {}
    for t, ref in zip(graph.inputs, graph.input_refs):
        name = unique(t._keras_history.layer.name)
        input_names[ref] = name
        x = keras.Input(type_spec=t.type_spec, name=name)
        new_inputs.append(x)
        tensors[ref] = x
    producers = {r: p for p in plans for r in p.node.out_refs}
    quantized_refs = set()

    def is_quantized(ref):
        return ref in quantized_refs

    made: Dict[int, Any] = {}          # id(original layer) -> new layer (wrapper or copy)
    copies = []                        # (new inner layer, original, plan)
    input_quantizers: Dict[str, Any] = {}
    after_ops: Dict[int, Any] = {}     # id(op layer) -> output quantizer applied after it
    alias: Dict[str, str] = {}
    for p in plans:
        node = p.node
        if p.removed:  # folded BN: its consumers were rewired to the conv's output
            continue
        quantized = p.spec is not None and (p.weights_spec is not None or p.acts_spec is not None)
        # float inputs of quantized layers get an input quantizer
        needs_q = quantized and p.acts_spec is not None and (
            (p.kind == "compute" and p.spec.quantized_input)
            or (scheme.quantize_ops == "all" and p.kind in ("merge", "output", "fixed", "bn")))
        in_spec = p.acts_spec
        if p.user_config is not None:  # the user's config quantizes the layer; the scheme its float input
            in_spec, needs_q = p.input_spec, p.input_spec is not None
        for ref in dict.fromkeys(node.in_refs):
            t = tensors[ref]
            if needs_q and not is_quantized(ref) and t.dtype.is_floating:
                if ref not in input_quantizers:
                    a = _act_spec(in_spec, p.nonneg_in.get(ref, False))
                    src = producers.get(ref)
                    if src is None:
                        a = _model_input_spec(a)
                    base = src.layer.name if src is not None else input_names.get(ref, "input")
                    q = QuantizeInput(_quantizer(a, "activations", "input quantizer"),
                                      name=unique(_safe(f"quantize_{base}")))
                    input_quantizers[ref] = q(t)
                tensors[ref + "#q"] = input_quantizers[ref]
        view = dict(tensors)
        for ref in node.in_refs:
            if ref + "#q" in tensors:
                view[ref] = tensors[ref + "#q"]
        args, kwargs = node.pack(view)
        if id(p.layer) not in made:
            name = unique(node.prefix + p.layer.name) if node.prefix and p.layer.name in used \
                else unique(p.layer.name)
            if p.affine:
                inner = ChannelAffine(name=name, dtype=p.layer.dtype)
            else:
                inner = _clone_layer(p.layer, name, must_copy=p.folded_bn is not None)
            if p.folded_bn is not None:
                cfg = inner.get_config()
                cfg["use_bias"] = True
                inner = type(inner).from_config(cfg)
            cfg = _layer_config(p, scheme) if quantized else None
            if cfg is not None and not p.spec.wrap:
                # TF op layers: tfmot's wrapper cannot call them; quantize their output in a layer after them
                if cfg.output is not None:
                    after_ops[id(p.layer)] = cfg.output
                cfg = None
            if cfg is not None and cfg.weights and not _has_attrs(inner, cfg.weights):
                inner(*args, **kwargs)  # layers that create weights on first call (MultiHeadAttention)
            if p.user_config is not None:  # the user's own QuantizeConfig decides this layer
                layer = A.ConfigWrapper(inner, p.user_config, name=unique(WRAPPER_PREFIX + inner.name))
            elif cfg is not None and (cfg.weights or cfg.activations or cfg.output is not None):
                layer = QuantizeWrapper(inner, cfg, name=unique(WRAPPER_PREFIX + inner.name))
            else:
                layer = inner
                if p.float_reason is None:
                    p.float_reason = _float_reason(p)
            made[id(p.layer)] = layer
            copies.append((inner, p))
        layer = made[id(p.layer)]
        if isinstance(layer, (QuantizeWrapper, A.ConfigWrapper)) and len(args) > 1:
            # the wrapper's call is (inputs, training=None, **kwargs): pass extra positionals by name
            names = [n for n in inspect.signature(layer.layer.call).parameters][1:]
            kwargs = dict(zip(names, args[1:]), **kwargs)
            args = args[:1]
        out = layer(*args, **kwargs)
        if (p.spec is not None and p.spec.same_grid and scheme.quantize_ops == "all" and p.acts_spec is not None
                and tf.is_tensor(out) and all(is_quantized(r) for r in node.in_refs)):
            out = QuantizeLike(name=unique(_safe(f"requantize_{p.layer.name}")))(out)
        if id(p.layer) in after_ops and tf.is_tensor(out):
            qname = unique(_safe(f"quantize_{p.layer.name}"))
            out = QuantizeInput(after_ops[id(p.layer)], name=qname)(out)
            quantized_refs.update(node.out_refs)
            p.float_reason = f"TF op layer: computed in float, its output quantized by {qname}"
        flat = tf.nest.flatten(out)
        for ref, t in zip(node.out_refs, flat):
            tensors[ref] = t
            if (quantized and p.output) or (p.user_config is not None
                                            and A.output_quantized(p.user_config, layer.layer)):
                quantized_refs.add(ref)
            elif p.kind == "passthrough" and all(is_quantized(r) or r + "#q" in tensors for r in node.in_refs):
                quantized_refs.add(ref)
        for ref in node.in_refs:
            tensors.pop(ref + "#q", None)

    outputs = [tensors[r] for r in graph.output_refs]
    outputs = tf.nest.pack_sequence_as(graph.nested_outputs, outputs)
    from qresearch.schemes.io import QATModel

    qmodel = QATModel(new_inputs, outputs, name=graph.name)

    for inner, p in copies:
        src = p.layer
        if inner is src:
            continue
        if p.affine:  # by attribute: the wrapper re-tracks variables, so the weights list order may differ
            kernel, bias = _affine_weights(src)
            inner.depthwise_kernel.assign(kernel)
            inner.bias.assign(bias)
            continue
        targets = inner.weights
        for key in (_short, _relative):  # by weight name, then by path inside the layer (sublayers)
            values = {key(w): w.numpy() for w in src.weights}
            if p.folded_bn is not None:
                values.update(_fold_weights(src, p.folded_bn))
            names = [key(w) for w in targets]
            if len(set(names)) == len(names) and set(names) <= set(values):
                for w, n in zip(targets, names):
                    w.assign(values[n])
                break
        else:
            if targets:
                inner.set_weights(src.get_weights())
    return qmodel


# --------------------------------------------------------------- calibrate
def _batches(data, n_inputs: int, max_batches: int, batch_size: int = 32):
    """Input batches from: an array (split in batches), ``(x, y)``/``(x, y, w)``, a list of batches,
    a dict or list of arrays for a multi-input model, or a ``tf.data.Dataset`` of ``x`` or ``(x, y)``."""
    def first(item):
        if isinstance(item, tuple) and len(item) in (2, 3) and not (n_inputs > 1 and len(item) == n_inputs):
            return item[0]
        return item

    def split(x):
        n = len(tf.nest.flatten(x)[0])
        for i in range(0, min(n, max_batches * batch_size), batch_size):
            yield tf.nest.map_structure(lambda a: a[i:i + batch_size], x)

    if isinstance(data, tf.data.Dataset):
        for i, item in enumerate(data):
            if i >= max_batches:
                break
            yield first(item)
        return
    data = first(data)
    if isinstance(data, dict) or (isinstance(data, (list, tuple)) and n_inputs > 1 and len(data) == n_inputs
                                  and all(hasattr(a, "shape") for a in data)):
        yield from split(data)  # one structure of arrays for a multi-input model
        return
    if isinstance(data, (list, tuple)):  # a list of batches
        for i, item in enumerate(data):
            if i >= max_batches:
                break
            yield first(item)
        return
    yield from split(np.asarray(data) if not tf.is_tensor(data) else data)


def _require_finite_batches(batches) -> None:
    """A NaN in calibration data makes every range it reaches NaN: the model predicts at chance, silently."""
    flat = [tf.nest.flatten(x) for x in batches]
    n_inputs = len(flat[0]) if flat else 0
    for i in range(n_inputs):
        require_finite("calibration_data" if n_inputs == 1 else f"calibration_data (model input {i})",
                       [f[i] for f in flat],
                       "pass calibration samples without NaN or infinity (e.g. the training images, once "
                       "cleaned; x[np.isfinite(x).reshape(len(x), -1).all(axis=1)] keeps the finite ones)")


def calibrate(qat_model, data, max_batches: int = 8) -> int:
    """Initialise ranges and step sizes: quantizers in training mode, layers (BN, dropout) in
    inference mode, no weight update. Returns the number of batches seen."""
    batches = list(_batches(data, len(qat_model.inputs), max_batches))  # a few batches: checked before use
    _require_finite_batches(batches)
    n = 0
    with calibration_mode():
        for x in batches:
            qat_model(x, training=False)
            n += 1
    if n == 0:
        raise ConfigError("calibration_data gave no batches; pass an array, (x, y), a list of batches "
                          "or a tf.data.Dataset")
    return n


def _constrain_layers(plans: List[_Plan], hardware) -> List[str]:
    """Per-layer weight granularity the target allows (subclasses, custom layers: see
    ``hardware.constrain.layer_granularity``); returns a note per layer changed."""
    try:
        from qresearch.hardware.constrain import layer_granularity
    except ImportError:  # pragma: no cover
        return []
    notes = []
    for p in plans:
        if p.weights_spec is None or p.removed or p.spec is None or not p.spec.weights:
            continue
        layer = ChannelAffine(name=p.layer.name) if p.affine else p.layer
        note = layer_granularity(hardware, layer, bool(p.weights_spec.get("per_channel", False)))
        if note is not None:
            p.weights_spec = dict(p.weights_spec, per_channel=not p.weights_spec.get("per_channel", False))
            notes.append(note)
            _log.warning("%s", note)
    return notes


# ----------------------------------------------------------------- quantize
def _kernel_set(kernels, hardware) -> Optional[str]:
    if kernels == "target":
        if hardware is None:
            return None
        from qresearch.hardware import get as get_target

        kernels = get_target(hardware).kernels
    if kernels in (None, "none"):
        return None
    from qresearch.schemes.integer import KERNELS

    KERNELS.get(kernels)  # unknown names fail here, with the known ones listed
    return kernels


def set_kernels(qmodel, kernels: Optional[str]) -> None:
    """Make ``qmodel``'s inference pass emulate integer kernel set ``kernels`` (None: float simulation).
    Takes effect in new eager calls and new traces (``predict``/``evaluate`` retrace on a new model)."""
    for layer in qmodel.layers:
        if isinstance(layer, QuantizeWrapper):
            if kernels:
                layer.quantize_config.info["kernels"] = kernels
            else:
                layer.quantize_config.info.pop("kernels", None)
        elif isinstance(layer, (QuantizeInput, QuantizeLike)):
            layer.kernels = kernels


def quantize(model, scheme, hardware=None, calibration_data=None, adapt: bool = False,
             kernels: Optional[str] = "target", constrained: bool = False):
    """Quantize a tf_keras model for QAT.

    Args:
      model: a built tf_keras Sequential or functional model (nested models are inlined).
      scheme: a preset name (``qresearch.schemes.names()``), a scheme dict or a ``SchemeSpec``.
      hardware: a hardware target (name or ``Target``); the scheme is checked (and with
        ``adapt=True`` coerced) against it first.
      calibration_data: array, ``(x, y)``, list of batches or ``tf.data.Dataset``; a few batches
        initialise every quantizer's range/step size, so the model is accurate before training.
      kernels: the integer kernel set the inference pass emulates (``qresearch.schemes.integer.KERNELS``):
        "target" takes the hardware target's (``tflite_int8``: LiteRT's builtin kernels), None or
        "none" keeps the float fake-quant simulation. Training always runs the float forward.
      constrained: ``scheme`` is already ``hardware.constrain``'s output for this ``hardware`` (the run
        checks it before loading data): the scheme-level check is not repeated; per-layer checks still run.
    Returns:
      the QAT model (its layers are tfmot ``QuantizeWrapperV2`` subclasses); ``qresearch_info``
      holds the scheme, hardware and coercions.
    """
    ensure_keras2_model(model)
    spec = resolve_scheme(scheme)
    coercions: List[str] = []
    hw_name = None
    if hardware is not None and not constrained:
        try:
            from qresearch import hardware as hw_mod
            constrain = getattr(hw_mod, "constrain")
        except (ImportError, AttributeError):
            _log.warning("qresearch.hardware.constrain is not available: hardware %r is not checked", hardware)
            constrain = None
        if constrain is not None:
            spec, coercions = constrain(spec, hardware, adapt=adapt)
            spec = resolve_scheme(spec)
    if hardware is not None:
        hw_name = hardware if isinstance(hardware, str) else getattr(hardware, "name", str(hardware))
    if not model.built:
        raise ConfigError(f"model {model.name!r} is not built: call model.build(input_shape) or give the "
                          "first layer an input_shape before quantizing")
    graph = flatten(model)
    annotations = A.unwrap(graph)
    if hardware is not None:
        coercions += A.require_annotated(graph, annotations, hardware, adapt)
    split_separable(graph, keep=lambda layer: any(layer_matches(s, layer) for s in spec.skip)
                    or annotations.keeps_whole(layer))
    plans = _make_plans(graph, spec, annotations)
    if hardware is not None:
        coercions += _constrain_layers(plans, hardware)
        configured = [(p.layer, p.user_config) for p in plans if p.user_config is not None]
        if configured:
            coercions += A.check_target(configured, hardware)
    qmodel = _build(graph, plans, spec)
    kernel_set = _kernel_set(kernels, hardware)
    if kernel_set:
        set_kernels(qmodel, kernel_set)
    float_reasons = {p.layer.name: p.float_reason for p in plans if p.float_reason}
    # plain attribute (not tracked by Keras, so it never reaches the SavedModel object graph)
    object.__setattr__(qmodel, "qresearch_info", {"scheme": spec.to_dict(), "hardware": hw_name,
                                                  "coercions": list(coercions), "float_layers": float_reasons,
                                                  "kernels": kernel_set})
    if calibration_data is not None:
        calibrate(qmodel, calibration_data)
    return qmodel
