"""Planning as named, ordered passes over a ``ModelPlan``: each pass makes one kind of decision.

``PASSES`` is the order ``make_plan`` runs them in; a researcher can run a prefix, test one pass, or insert their own
(``i = PASSES.index(classify) + 1; make_plan(..., passes=PASSES[:i] + (my_pass,) + PASSES[i:])``). Before them,
``read_model`` flattens the model (nested models inlined) and unwraps tfmot annotations (``annotate.unwrap``).

0. ``keras_layers_for_tf_ops``: with ``quantize_ops: all``, TF ops on Keras tensors that a Keras layer computes
   (``x + y``, ``tf.concat``, ``tf.nn.relu6``, ``tf.reduce_mean(x, [1, 2])``, ``x / 255.0``, ...) become that layer,
   which the integer emulation runs as TFLite does (a TF op layer is simulated in float).
0a. ``merge_duplicate_relus``: with ``quantize_ops: all``, a ReLU / ReLU6 repeating another on the same tensor is
   dropped for it (the converter merges the two and fuses the one into the op before).
0b. ``fuse_hard_swish``: with ``quantize_ops: all``, hard swish written as ``Multiply([x, ReLU6(x + 3)]) / 6``
   becomes one ``Activation(hard_swish)`` (the converter's one HARD_SWISH op, emulated).
1. ``split_separable``: SeparableConv → depthwise + 1x1 conv (TFLite runs two ops; the tensor between
   them needs its own int8 range).
1b. ``split_nary_merges``: with ``quantize_ops: all``, an Add / Multiply of three or more inputs → a chain of
   two-input ones (TFLite's chain of ADD / MUL ops; each partial result needs its own int8 range); an Average →
   that chain of Adds, then ``Rescaling(1/n)`` (the converter's MUL).
1c. ``split_normalized_dots``: with ``quantize_ops: all``, a ``Dot(normalize=True)`` → a ``UnitNormalization`` of
   each input, then the Dot (the converter's L2_NORMALIZATIONs and BATCH_MATMUL).
2. ``classify``: every layer gets its ``LayerSpec`` and kind, or is skipped/left float; a layer with
   neither raises ``UnsupportedLayerError`` naming the ``register_layer`` fix.
3. ``fold_batch_norms``: ``bn_folding: fold`` (or ``fold_batch_stats``) folds a BN into the linear conv/dense
   before it (``LayerSpec.fold``; maths in ``folding.py``).
4. ``affine_batch_norms``: with ``quantize_ops: all`` a BN that cannot be folded becomes a
   ``ChannelAffine`` (TFLite runs an int8 1x1 DEPTHWISE_CONV_2D instead of float MUL/ADD).
5. ``rewire_folded``: consumers of a folded BN read the conv's output.
6. ``resolve_quantizers``: each layer's weight/activation specs (scheme, first/last bits, overrides).
6b. ``fold_with_batch_stats``: with ``bn_folding: fold_batch_stats`` a fold whose weight is quantized trains
   with batch statistics and a correction, frozen after ``bn_freeze_steps`` (``batch_stats_fold.py``).
7. ``place_output_quantizers``: TFLite's rules: none between conv/dense/add/BN and a ReLU after it,
   fixed ranges for softmax/sigmoid/tanh, none on SAME-scale ops; none at all with ``quantize_ops: inputs``.
8. ``infer_signs``: unsigned activation grids only where a tensor is known non-negative.
9. ``share_concat_ranges``: one range after a concat, none on its producers.
10. ``place_input_quantizers``: float tensors entering quantized layers get a ``QuantizeInput``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

from qresearch._compat import keras
from qresearch.errors import ConfigError, UnsupportedLayerError
from qresearch.schemes import annotate as A
from qresearch.schemes import layers as L
from qresearch.schemes.graph import Graph, flatten, fuse_hard_swish as _fuse_hard_swish
from qresearch.schemes.graph import keras_layers_for_tf_ops as _keras_layers, merge_duplicate_relus as _merge_relus
from qresearch.schemes.graph import split_nary_merges as _split_merges, split_normalized_dots as _split_dots
from qresearch.schemes.graph import split_separable as _split_graph
from qresearch.schemes.plan import LayerPlan, ModelPlan
from qresearch.schemes.spec import SchemeSpec, layer_matches, merge_quantizer_spec

# The per-channel affine an unfoldable BN becomes (ChannelAffine: a 1x1 DepthwiseConv2D).
AFFINE_SPEC = L.LayerSpec(weights=("depthwise_kernel",), activations=(), quantize_output=True, kind="compute",
                          quantized_input=True)


def read_model(model):
    """Pass 0: the flattened graph of a built model and its tfmot annotations (``annotate.unwrap``)."""
    if not model.built:
        raise ConfigError(f"model {model.name!r} is not built: call model.build(input_shape) or give the "
                          "first layer an input_shape before quantizing")
    graph = flatten(model)
    return graph, A.unwrap(graph)


def _activation(layer) -> str:
    return L.activation_name(getattr(layer, "activation", None))


# ------------------------------------------------------------------ 1-2: what each layer is
def keras_layers_for_tf_ops(plan: ModelPlan) -> None:
    if plan.scheme.quantize_ops == "all":   # elsewhere neither form is quantized: the user's graph stays
        _keras_layers(plan.graph, keep=lambda layer: _kept_whole(plan, layer))


def merge_duplicate_relus(plan: ModelPlan) -> None:
    if plan.scheme.quantize_ops == "all":   # elsewhere no ReLU output is quantized: the user's graph stays
        _merge_relus(plan.graph, keep=lambda layer: _kept_whole(plan, layer))


def fuse_hard_swish(plan: ModelPlan) -> None:
    if plan.scheme.quantize_ops == "all":   # elsewhere the chain's tensors get no quantizer: the user's graph stays
        _fuse_hard_swish(plan.graph, keep=lambda layer: _kept_whole(plan, layer))


def split_separable(plan: ModelPlan) -> None:
    _split_graph(plan.graph, keep=lambda layer: _kept_whole(plan, layer))


def split_nary_merges(plan: ModelPlan) -> None:
    if plan.scheme.quantize_ops == "all":   # elsewhere the partial sums get no quantizer: the layer stays one
        _split_merges(plan.graph, keep=lambda layer: _kept_whole(plan, layer))


def split_normalized_dots(plan: ModelPlan) -> None:
    if plan.scheme.quantize_ops == "all":   # elsewhere the normalised tensors get no quantizer: the layer stays one
        _split_dots(plan.graph, keep=lambda layer: _kept_whole(plan, layer))


def _kept_whole(plan: ModelPlan, layer) -> bool:
    """A layer the split passes leave as it is: skipped by the scheme, or annotated whole by the user."""
    return any(layer_matches(s, layer) for s in plan.scheme.skip) or plan.annotations.keeps_whole(layer)


def classify(plan: ModelPlan) -> None:
    spec, annotations = plan.scheme, plan.annotations
    plan.layers = [LayerPlan(n) for n in plan.graph.nodes]
    unsupported: Dict[type, List[LayerPlan]] = {}
    for p in plan.layers:
        if p.matches(spec.skip):
            p.float_reason = "skipped by the scheme"
            skipped_spec = L.layer_spec(p.layer)
            p.skipped_kind = skipped_spec.kind_of(p.layer) if skipped_spec is not None else None
        elif not annotations.annotated(p.node):
            _not_annotated(p)
        elif annotations.config(p.node) is not None:
            _user_configured(p, annotations.config(p.node), spec)
        else:
            p.spec = L.layer_spec(p.layer)
            if p.spec is None:
                unsupported.setdefault(type(p.layer), []).append(p)
            else:
                p.kind = p.spec.kind_of(p.layer)
    if unsupported:
        raise UnsupportedLayerError(_unsupported_message(unsupported, annotations.active))
    if spec.activations is None and spec.weights is None:
        raise ConfigError("the scheme quantizes nothing (weights and activations are both null)")
    plan.index()


def _not_annotated(p: LayerPlan) -> None:
    """A layer left out of an annotated model stays float. A pure pass-through (reshape, max pooling, ...)
    still carries its input's grid, so the next quantized layer needs no new input quantizer."""
    spec = L.layer_spec(p.layer)
    p.skipped_kind = spec.kind_of(p.layer) if spec is not None else None
    p.float_reason = A.NOT_ANNOTATED
    if p.skipped_kind == "passthrough" and not spec.same_grid_of(p.layer):
        p.kind = "passthrough"
        p.float_reason = f"{A.NOT_ANNOTATED} (pass-through: keeps its input's range)"


def _user_configured(p: LayerPlan, config, spec: SchemeSpec) -> None:
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


# ------------------------------------------------------------------ 3-5: batch normalization
def fold_batch_norms(plan: ModelPlan) -> None:
    if not plan.scheme.folds_bn:
        return
    for p in plan.layers:
        if p.kind != "bn":
            continue
        bn = p.layer
        if len(p.node.in_refs) != 1 or plan.calls[id(bn)] > 1:
            continue
        src = p.node.in_refs[0]
        prod = plan.producers.get(src)
        if (prod is None or prod.kind != "compute" or prod.spec.fold is None
                or plan.calls[id(prod.layer)] > 1 or len(plan.consumers.get(src, [])) != 1 or src in plan.outputs
                or _activation(prod.layer) != "linear" or prod.folded_bn is not None):
            continue
        if not _over_last_axis(bn, ranks=None):
            continue
        if getattr(prod.layer, "data_format", "channels_last") == "channels_first":
            continue
        prod.folded_bn = bn
        p.removed = True
        p.kind = "folded"
        p.float_reason = f"folded into {prod.layer.name}"


def _over_last_axis(bn, ranks) -> bool:
    """A BN normalising the last axis of its input (of a rank in ``ranks``, with a known channel count)."""
    axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    shape = bn.input_shape
    if not isinstance(shape, tuple) or (ranks is not None and (len(shape) not in ranks or shape[-1] is None)):
        return False
    return len(axis) == 1 and axis[0] % len(shape) == len(shape) - 1


def affine_batch_norms(plan: ModelPlan) -> None:
    """A BN that cannot be folded (after a non-linearity, a pooling, at the input, ...) would deploy as float
    MUL/ADD: when every op is integer (quantize_ops: all) it becomes a per-channel affine with quantized
    weights, which TFLite runs as an int8 1x1 DEPTHWISE_CONV_2D."""
    s = plan.scheme
    if not s.folds_bn or s.quantize_ops != "all" or s.weights is None:
        return
    for p in plan.layers:
        if p.kind == "bn" and not p.removed and plan.calls[id(p.layer)] == 1 and _over_last_axis(p.layer, (2, 3, 4, 5)):
            p.affine = True
            p.kind = "compute"
            p.spec = AFFINE_SPEC


def rewire_folded(plan: ModelPlan) -> None:
    alias = {p.node.out_refs[0]: p.node.in_refs[0] for p in plan.layers if p.removed}
    if not alias:
        return
    for p in plan.layers:
        p.node.in_slots = [(alias.get(r, r), i) for r, i in p.node.in_slots]
    plan.graph.output_refs = [alias.get(r, r) for r in plan.graph.output_refs]
    plan.index()


# ------------------------------------------------------------------ 6-10: quantizers
def resolve_quantizers(plan: ModelPlan) -> None:
    """Scheme → first/last bits → overrides, per layer. The first/last compute layers are those of the
    model: a skipped one stays float and the width does not move inward."""
    spec = plan.scheme
    compute = [p for p in plan.layers if (p.kind == "compute" and not p.affine) or p.skipped_kind == "compute"]
    first_last = {id(compute[0]), id(compute[-1])} if compute and spec.first_last_bits else set()
    for p in plan.layers:
        if p.spec is None or p.removed:
            continue
        w, a = spec.weights, spec.activations
        if id(p) in first_last:
            w = None if w is None else dict(w, bits=spec.first_last_bits)
            a = None if a is None else dict(a, bits=spec.first_last_bits)
            p.overrides.append("first_last_bits")
        for o in spec.overrides:
            if p.matches([o.match]):
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


def fold_with_batch_stats(plan: ModelPlan) -> None:
    """``bn_folding: fold_batch_stats``: a folded layer whose folded weight is quantized trains with batch
    statistics (``BatchStatsFold``); one with a float weight keeps the static fold (nothing to correct for)."""
    if plan.scheme.bn_folding != "fold_batch_stats":
        return
    for p in plan.layers:
        if p.folded_bn is not None and p.weights_spec is not None and p.spec.fold[0] in p.spec.weights:
            p.batch_stats_fold = True


def _fused_into_next(plan: ModelPlan, q: LayerPlan) -> bool:
    """TFLite fuses a ReLU (and a BN after a linear conv) into the op before it: one quantizer after."""
    nxt = plan.sole_consumer(q)
    if nxt is None or not nxt.has_acts or plan.calls[id(q.layer)] > 1:
        return False
    if nxt.kind == "activation" and (q.kind in ("compute", "merge", "bn") or _constant_ops(q)):
        return _fuses_relu(plan, q)
    return nxt.kind == "bn" and q.kind == "compute" and _activation(q.layer) == "linear"


def _fuses_relu(plan: ModelPlan, q: LayerPlan) -> bool:
    """Whether the op that ``q`` becomes fuses a ReLU after it (a BN, folded into its producer: that op's)."""
    if q.kind == "bn" and len(q.node.in_refs) == 1:
        q = plan.producers.get(q.node.in_refs[0], q)
    return q.spec is None or q.spec.fuses_relu


def _constant_ops(p: LayerPlan) -> bool:
    """A layer the converter runs as ADD/SUB/MUL with constant operands (``x + 3.0``, a Rescaling): those kernels
    fuse a following ReLU too (measured, TF 2.21: ``ReLU(6)(x + 3)`` is one ADD onto the ReLU's range)."""
    return p.spec is not None and p.spec.integer_op_of(p.layer) == L.CONSTANT_OPS


def place_output_quantizers(plan: ModelPlan) -> None:
    spec = plan.scheme
    fused_tail = set()  # an activation/BN that ends a fused chain after a compute layer quantizes its output
    for p in plan.layers:
        if p.has_acts and _fused_into_next(plan, p) and p.kind == "compute":
            nxt = plan.sole_consumer(p)
            fused_tail.add(id(nxt))
            if nxt.kind == "bn" and _fused_into_next(plan, nxt):
                fused_tail.add(id(plan.sole_consumer(nxt)))
    for p in plan.layers:
        if not p.has_acts:
            continue
        if spec.quantize_ops == "inputs":
            want = False  # every quantized tensor is a compute layer's input (place_input_quantizers)
        elif p.kind == "compute":
            want = p.spec.quantize_output
        elif p.kind in ("activation", "bn"):
            want = spec.quantize_ops == "all" or id(p) in fused_tail
        elif p.kind in ("merge", "output", "fixed", "concat"):
            want = spec.quantize_ops == "all" and p.spec.quantize_output
        else:
            want = False
        if want and _fused_into_next(plan, p):
            want = False
            p.fused_with = plan.sole_consumer(p).layer.name
        p.output = want
        if p.kind == "fixed":
            p.fixed_name = _fixed_name(p.layer)
        elif p.kind == "compute" and _activation(p.layer) in spec.fixed_output_ranges:
            p.fixed_name = _activation(p.layer)


def _fixed_name(layer):
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, keras.layers.UnitNormalization):
        return "l2_normalization"
    if L.op_name(layer) is not None:
        return L.op_name(layer)
    return _activation(layer)


def infer_signs(plan: ModelPlan) -> None:
    """Sign of every tensor: unsigned grids (LSQ/PACT activations) only where values are >= 0. A model input
    is >= 0 where ``plan.input_nonneg`` says so (``input_sign``, read from calibration data by ``api.quantize``)."""
    nonneg: Dict[str, bool] = {r: bool(plan.input_nonneg.get(r, False)) for r in plan.graph.input_refs}
    for p in plan.layers:
        if p.removed:
            continue
        ins = [nonneg.get(r, False) for r in p.node.in_refs]
        act = _activation(p.layer)
        if p.spec is None:
            value = False
        elif p.kind == "activation":
            value = act in ("relu", "relu6") or isinstance(p.layer, keras.layers.ReLU) or \
                L.op_name(p.layer) in ("relu", "relu6") or (act == "linear" and all(ins))
        elif p.kind == "compute":
            value = act in L.NON_NEGATIVE_ACTIVATIONS
        elif p.kind == "fixed":
            value = p.fixed_name in L.NON_NEGATIVE_ACTIVATIONS
        elif p.kind in ("passthrough", "concat") or p.spec.keeps_sign:
            value = bool(ins) and all(ins)
        else:
            value = False
        for r in p.node.out_refs:
            nonneg[r] = bool(value)
        p.nonneg_out = bool(value)
        p.nonneg_in = {r: nonneg.get(r, False) for r in p.node.in_refs}


def share_concat_ranges(plan: ModelPlan) -> None:
    """One shared range after a concat, none on its producers (TFLite's CONCATENATION keeps one grid)."""
    for p in plan.layers:
        if p.kind != "concat" or not p.output:
            continue
        for r in p.node.in_refs:
            prod = plan.producers.get(r)
            if prod is None or not prod.output or prod.fixed_name:
                continue  # a fixed-range producer (sigmoid, ...) keeps its range: TFLite fixes it
            if all(c.kind == "concat" and c.output for c in plan.consumers.get(r, [])) and r not in plan.outputs \
                    and len(prod.node.out_refs) == 1 and plan.calls[id(prod.layer)] == 1:
                prod.output = False
                prod.float_reason = None
                prod.concat_shared = p.layer.name


def place_input_quantizers(plan: ModelPlan) -> None:
    """Which layers quantize their float inputs, with which spec: compute layers read integer tensors, and
    with ``quantize_ops: all`` so do merges, outputs, fixed-range ops and BNs. A user-configured layer keeps
    the spec ``classify`` gave it."""
    for p in plan.layers:
        if p.removed or p.user_config is not None:
            continue
        needs = p.quantized and p.acts_spec is not None and (
            (p.kind == "compute" and p.spec.quantized_input)
            or (plan.scheme.quantize_ops == "all" and p.kind in ("merge", "output", "fixed", "bn")
                and not _reads_fused_compute(plan, p)))
        p.input_spec = p.acts_spec if needs else None


def _reads_fused_compute(plan: ModelPlan, p) -> bool:
    """A BN right after the linear conv/dense it fuses with (kept by ``no_fold``): it normalises the conv's
    accumulator, which neither TFLite (it folds the pair) nor the papers' float BN quantizes in between."""
    prods = [plan.producers.get(r) for r in p.node.in_refs]
    return p.kind == "bn" and bool(prods) and all(
        q is not None and q.kind == "compute" and _fused_into_next(plan, q) for q in prods)


Pass = Callable[[ModelPlan], None]
PASSES: Sequence[Pass] = (keras_layers_for_tf_ops, merge_duplicate_relus, fuse_hard_swish, split_separable,
                          split_nary_merges, split_normalized_dots, classify,
                          fold_batch_norms, affine_batch_norms, rewire_folded, resolve_quantizers,
                          fold_with_batch_stats, place_output_quantizers, infer_signs, share_concat_ranges,
                          place_input_quantizers)


def make_plan(graph: Graph, scheme: SchemeSpec, annotations=None, passes: Sequence[Pass] = PASSES,
              input_nonneg: Optional[Dict[str, bool]] = None) -> ModelPlan:
    """Run ``passes`` in order over a new plan of ``graph`` (from ``read_model``). ``input_nonneg``: model
    input ref -> its values are >= 0 (``schemes.input_sign.input_nonneg``); absent inputs are signed."""
    plan = ModelPlan(graph, scheme, annotations, input_nonneg)
    for run in passes:
        run(plan)
    return plan
