"""Rebuild a planned model: ``QuantizeWrapper`` layers (tfmot ``QuantizeWrapperV2``) with the planned
``LayerQuantizeConfig``, ``QuantizeInput`` on float tensors entering quantized layers, and the float
weights (folded where a BN was folded) copied in."""
from __future__ import annotations

import contextlib
import inspect
import logging
import re
from typing import Any, Dict, Optional

import numpy as np

from qresearch._compat import keras, tf
from qresearch.errors import ConfigError
from qresearch.schemes import annotate as A
from qresearch.schemes.batch_stats_fold import BatchStatsFold, batch_norm_config
from qresearch.schemes.configs import act_spec, layer_config, model_input_spec, quantizer
from qresearch.schemes.emulation import fuses_following_relu
from qresearch.schemes.folding import affine_weights, fold_weights
from qresearch.schemes.layers import layer_spec
from qresearch.schemes.io import QATModel
from qresearch.schemes.plan import LayerPlan, ModelPlan
from qresearch.schemes.spec import trains_model_input
from qresearch.schemes.wrappers import (ChannelAffine, QuantizeInput, QuantizeLike, QuantizeWrapper, has_attrs,
                                        start_latent_weights)

_log = logging.getLogger(__name__)
WRAPPER_PREFIX = "quant_"


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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _float_reason(p: LayerPlan, quantize_ops: str) -> str:
    if quantize_ops == "inputs" and p.kind in ("activation", "bn", "merge", "passthrough", "output", "fixed",
                                               "concat"):
        return "float by quantize_ops: inputs (only compute layers' inputs are quantized)"
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


def _short(var) -> str:
    return var.name.split("/")[-1].split(":")[0]


def _relative(var) -> str:
    """The variable's path inside its layer ("query/kernel" for "mha/query/kernel:0")."""
    parts = var.name.split(":")[0].split("/")
    return "/".join(parts[1:]) if len(parts) > 1 else parts[0]


def _attribute_paths(layer, prefix: str = "", seen=None) -> Dict[int, str]:
    """``id(variable) -> its attribute path in layer`` ("value_proj.kernel"): the same in a clone, whose sublayers
    get other generated names ("dense_7/kernel" for "dense_2/kernel")."""
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return {}
    seen.add(id(layer))
    out: Dict[int, str] = {}
    for name, value in vars(layer).items():
        if isinstance(value, tf.Variable):
            out.setdefault(id(value), prefix + name)
        elif isinstance(value, keras.layers.Layer):
            for key, path in _attribute_paths(value, f"{prefix}{name}.", seen).items():
                out.setdefault(key, path)
    return out


@contextlib.contextmanager
def _float32_policy():
    """The QAT model computes in float32 whatever the global mixed-precision policy (TF's FakeQuant takes float32
    only): the layers it adds (wrappers, input quantizers) are made under a float32 policy, the model's own layers
    are copied as float32 (``_in_float32``)."""
    policy = keras.mixed_precision.global_policy()
    if policy.name == "float32":
        yield
        return
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _in_float32(layer):
    """A copy of ``layer`` that computes in float32 (its weights are copied in later, as for any clone)."""
    config = layer.get_config()
    config["dtype"] = "float32"
    return type(layer).from_config(config)


def build(plan: ModelPlan):
    """The QAT model (``io.QATModel``) of ``plan``, with the float model's weights."""
    with _float32_policy():
        return _build(plan)


def _build(plan: ModelPlan):
    graph, plans, scheme = plan.graph, plan.layers, plan.scheme
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
    producers = plan.producers
    consumers = graph.consumers()
    quantized_refs = set()

    def is_quantized(ref):
        return ref in quantized_refs

    made: Dict[int, Any] = {}          # id(original layer) -> new layer (wrapper or copy)
    copies = []                        # (new inner layer, original, plan)
    input_quantizers: Dict[str, Any] = {}
    after_ops: Dict[int, Any] = {}     # id(op layer) -> output quantizer applied after it

    def quantized_input(ref, reader):
        """Float tensor ``ref`` through its input quantizer, made with ``reader``'s input spec where it has none."""
        src = producers.get(ref)
        key, a = ref, None
        if scheme.quantize_ops == "inputs" or ref not in input_quantizers:
            a = act_spec(reader.input_spec, reader.nonneg_in.get(ref, False))
            a = model_input_spec(a) if src is None else a
            # one quantizer per float tensor; with quantize_ops: inputs one per distinct spec, so each
            # compute layer reads its input at its own width (a mixed-precision choice)
            key = (ref, repr(sorted(a.items()))) if scheme.quantize_ops == "inputs" else ref
        if key not in input_quantizers:
            base = src.layer.name if src is not None else input_names.get(ref, "input")
            qz = quantizer(a, "activations", "input quantizer")
            # a model input's quantizer: trained only if the scheme says so (its gradient is the
            # first layer's input gradient, computed for it alone)
            trainable = src is not None or trains_model_input(scheme.train_input_quantizers,
                                                              getattr(qz, "bits", 8))
            q = QuantizeInput(qz, name=unique(_safe(f"quantize_{base}")), trainable=trainable)
            input_quantizers[key] = q(tensors[ref])
        return input_quantizers[key]

    # A quantized model input arrives on one integer grid (TFLite's int8 I/O): every layer reading it reads it there,
    # not only those that quantize their inputs. A Concatenate reading the raw input would round it once onto its
    # own grid, where the deployed model requantizes the integer input (a 1-2 LSB difference, measured).
    one_grid_inputs = {}
    if scheme.quantize_ops != "inputs":
        for ref in graph.input_refs:
            readers = [c for c in plan.consumers.get(ref, []) if not c.removed and c.input_spec is not None]
            if readers and tensors[ref].dtype.is_floating:
                one_grid_inputs[ref] = readers[0]
    for p in plans:
        node = p.node
        if p.removed:  # folded BN: its consumers were rewired to the conv's output
            continue
        quantized = p.quantized
        for ref in dict.fromkeys(node.in_refs):
            if is_quantized(ref) or not tensors[ref].dtype.is_floating:
                continue
            if p.input_spec is not None:
                tensors[ref + "#q"] = quantized_input(ref, p)
            elif ref in one_grid_inputs:
                tensors[ref + "#q"] = quantized_input(ref, one_grid_inputs[ref])
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
                if inner.compute_dtype in ("float16", "bfloat16"):
                    # the simulation runs in float32: a wrapped mixed-precision layer casts its input to float16
                    # itself (FakeQuant takes float32), and a float16 layer between two quantizers moves values
                    # off their grid (11-bit mantissa), which TFLite's int8 kernels never do
                    inner = _in_float32(inner)
            if p.folded_bn is not None:
                cfg = inner.get_config()
                cfg["use_bias"] = True
                inner = type(inner).from_config(cfg)
            cfg = layer_config(p, scheme) if quantized else None
            if cfg is not None and not p.spec.wrap:
                # TF op layers: tfmot's wrapper cannot call them; quantize their output in a layer after them
                if cfg.output is not None:
                    after_ops[id(p.layer)] = cfg.output
                cfg = None
            if cfg is not None and cfg.weights and not has_attrs(inner, cfg.weights):
                inner(*args, **kwargs)  # layers that create weights on first call (MultiHeadAttention)
            if p.user_config is not None:  # the user's own QuantizeConfig decides this layer
                layer = A.ConfigWrapper(inner, p.user_config, name=unique(WRAPPER_PREFIX + inner.name))
            elif p.batch_stats_fold:
                layer = BatchStatsFold(inner, cfg, batch_norm=batch_norm_config(p.folded_bn),
                                       freeze_steps=scheme.bn_freeze_steps, name=unique(WRAPPER_PREFIX + inner.name))
            elif cfg is not None and (cfg.weights or cfg.activations or cfg.output is not None
                                      or (scheme.quantize_ops == "all"   # its ReLU holds the range: emulated
                                          and fuses_following_relu(p.spec.integer_op_of(inner)))):
                layer = QuantizeWrapper(inner, cfg, name=unique(WRAPPER_PREFIX + inner.name))
            else:
                layer = inner
                if p.float_reason is None:
                    p.float_reason = _float_reason(p, scheme.quantize_ops)
            made[id(p.layer)] = layer
            copies.append((inner, p, layer))
        layer = made[id(p.layer)]
        if isinstance(layer, (QuantizeWrapper, A.ConfigWrapper)) and len(args) > 1:
            # the wrapper's call is (inputs, training=None, **kwargs): pass extra positionals by name
            names = [n for n in inspect.signature(layer.layer.call).parameters][1:]
            kwargs = dict(zip(names, args[1:]), **kwargs)
            args = args[:1]
        out = layer(*args, **kwargs)
        if (p.spec is not None and scheme.quantize_ops == "all" and p.acts_spec is not None and tf.is_tensor(out)
                and all(is_quantized(r) for r in node.in_refs)
                and (p.spec.same_grid_of(p.layer)
                     or (p.kind == "passthrough" and _feeds_same_grid_among_others(node, consumers)))):
            requantize = QuantizeLike(name=unique(_safe(f"requantize_{p.layer.name}")))
            # a bilinear resize: the emulation recomputes it from its input (RESIZE_BILINEAR's own rounding)
            out = requantize([out, args[0]] if _bilinear_resize(p.layer) and tf.is_tensor(args[0]) else out)
        if (scheme.quantize_ops == "all" and isinstance(layer, QuantizeWrapper) and tf.is_tensor(out)
                and layer.output_grid_source() is not None):
            # gathered weight values (an Embedding): on the weight's grid, as GATHER keeps it in TFLite; an
            # activation quantizer of its own would cost a requantizing QUANTIZE the simulation does not model
            out = QuantizeLike(name=unique(_safe(f"quantize_{p.layer.name}")))(out)
            quantized_refs.update(node.out_refs)
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
    qmodel = QATModel(new_inputs, outputs, name=graph.name)
    for inner, p, layer in copies:
        _copy_weights(inner, p)
        if isinstance(layer, BatchStatsFold):
            layer.set_batch_norm(p.folded_bn)
    for inner, p, layer in copies:   # the float weights are in place: quantizers that train a latent weight map them
        if layer is not inner:
            start_latent_weights(layer, shared=inner is p.layer)
    return qmodel


def _bilinear_resize(layer) -> bool:
    """A resize the emulation recomputes as RESIZE_BILINEAR from its input (NHWC, half-pixel centres, no crop: what
    ``Resizing`` and ``UpSampling2D`` run through ``tf.image.resize``)."""
    return isinstance(layer, (keras.layers.Resizing, keras.layers.UpSampling2D)) \
        and getattr(layer, "interpolation", None) == "bilinear" and not getattr(layer, "crop_to_aspect_ratio", False) \
        and getattr(layer, "data_format", "channels_last") == "channels_last"


def _feeds_same_grid_among_others(node, consumers) -> bool:
    """A grid-keeping op (max pooling, padding) whose output feeds a re-quantized one (average pooling) or a merge
    on one grid (a concatenation, Maximum, Minimum) and other layers. Without its own FakeQuant the TFLite converter
    meets that reader's range coming back through it: after an average pool it ran the other consumers in float,
    after a DEQUANTIZE (InceptionV3's max pool feeding its branches' convs and an average pool); before a
    concatenation it requantized the op's output onto the concatenation's grid with a QUANTIZE that every reader
    then reads (a DenseNet transition's pool feeding the block's concatenation and conv: 2 LSB; both measured, TF
    2.21). Its output lies on its input's grid, so a ``QuantizeLike`` after it changes no value and gives the
    converter a range there: the merge then requantizes that input itself, as the emulation runs it."""
    readers = [c for r in node.out_refs for c in consumers.get(r, [])]
    return len(readers) > 1 and any(_holds_a_grid_of_its_own(c.layer) for c in readers)


def _holds_a_grid_of_its_own(layer) -> bool:
    """A reader whose range the converter would push back through a grid-keeping op before it."""
    spec = layer_spec(layer)
    return spec is not None and (spec.same_grid_of(layer) or spec.kind_of(layer) == "concat")


def _copy_weights(inner, p: LayerPlan) -> None:
    src = p.layer
    if inner is src:
        return
    if p.affine:  # by attribute: the wrapper re-tracks variables, so the weights list order may differ
        kernel, bias = affine_weights(src)
        inner.depthwise_kernel.assign(kernel)
        inner.bias.assign(bias)
        return
    targets = inner.weights
    paths = {}

    def by_attribute(w):   # the walk over both layers' attributes, once, and only when names do not match
        if not paths:
            paths.update(_attribute_paths(src))
            paths.update(_attribute_paths(inner))
        return paths.get(id(w))

    # by weight name, then by path inside the layer (sublayers), then by attribute (sublayers' generated names)
    for key in (_short, _relative, by_attribute):
        values = {key(w): w.numpy() for w in src.weights}
        if p.batch_stats_fold:  # the layer's own weights; the BN's go to the wrapper (set_batch_norm)
            values.setdefault("bias", np.zeros(inner.bias.shape, np.float32))
        elif p.folded_bn is not None:
            values.update(fold_weights(src, p.folded_bn, p.spec.fold))
        names = [key(w) for w in targets]
        if len(set(names)) == len(names) and set(names) <= set(values):
            for w, n in zip(targets, names):
                w.assign(values[n])
            break
    else:
        if targets:
            inner.set_weights(src.get_weights())
    # Normalization's mean and variance are constants computed from its adapted weights in finalize_state (as
    # Keras' loading calls it); without it the copy keeps the 0 and 1 it was built with
    inner.finalize_state()


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
