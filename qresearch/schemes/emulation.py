"""How a quantized layer runs through a kernel set in inference (``qresearch.kernels``).

``IntegerEmulation`` is mixed into ``QuantizeWrapper``: once the graph around a wrapper is known it
plans the one int8 kernel the layer is (``_integer_plan``), and in inference hands the op to the active
kernel set's handler (``_integer_call``); a layer without a plan, or whose op the kernel set has no
handler for, keeps the float fake-quant simulation. Which op a layer is comes from the layer registry
(``LayerSpec.integer_op``); how to read its operands and attributes from the wrapper is a matcher
registered here per op (``register_matcher``). The plans:

- a conv / depthwise / dense (or unfoldable-BN affine) wrapper with one symmetric weight quantizer and a
  known input grid, with a fusable activation (linear/relu/relu6) before its output quantizer, or a
  quantized pre-activation (a LUT activation such as sigmoid follows): its int32 accumulator is
  requantized (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV);
- MEAN (GlobalAveragePooling1D/2D; keepdims=True: 2-D only, MEAN_KEEPDIMS), ADD/SUB/MUL of two same-shape
  quantized tensors (MUL also by one that broadcasts: a squeeze-excite scale), SOFTMAX over the last axis, the
  table activations LOGISTIC, TANH and GELU (also as a conv's activation, and swish's LOGISTIC), LEAKY_RELU (also
  ``Activation("leaky_relu")`` and a conv's ``activation="leaky_relu"``), HARD_SWISH (``qresearch.hard_swish`` as a
  layer or a conv's activation), L2_NORMALIZATION, BATCH_MATMUL, PRELU, CONCATENATION (an input on another grid
  requantized as the QUANTIZE the converter puts before it);
- a conv feeding a Concatenate that quantizes for all its inputs requantizes onto that grid;
- a conv or elementwise layer without an output quantizer followed by a ReLU/ReLU6 layer (the converter
  fuses the two) or an ``Activation("linear")`` layer (the converter drops it) computes the fused result itself,
  with that layer's output grid; the layer then leaves those values as they are.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

from qresearch import kernels as K
from qresearch._compat import keras, tf
from qresearch.quantizers.base import Quantizer
from qresearch.schemes.attrs import set_attr
from qresearch.schemes.builtin_layers import batch_matmul_adjoints
from qresearch.schemes.layer_calls import rescaling_op
from qresearch.schemes.layers import (ACTIVATION_OPS, CONSTANT_OPS, RELU_OPS, activation_attrs, activation_name,
                                      fused_activation, layer_spec, own_spec)
from qresearch.schemes.lowered_activations import Lowering, lowering

Source = Tuple[Any, Any, str]  # (quantizer, its variables, layer name) that produced a tensor


@dataclasses.dataclass
class Plan:
    """One layer as one integer kernel: the op (a handler name), where its inputs' grids come from, the
    output quantizer whose grid it produces, the fused activation, and op attributes."""

    op: str
    sources: List[Source]
    attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # "inputs" | "layer_output" (the float op result, e.g. MEAN) | "accumulator" | "lowered" (input and inner tensor)
    operand: str = "inputs"
    weight: Optional[Tuple] = None  # (variable, quantizer, its variables) of a conv's weight
    out: Optional[Tuple] = None
    fused: str = "linear"
    consumer_fused: bool = False  # ``out`` and ``fused`` are the following ReLU layer's (K.mark_fused)
    # a conv's activation that runs as an op of its own (``out``: its input's quantizer): the grid that op
    # requantizes onto (the layer's output quantizer, or a concatenation's it shares), or None
    after: Optional[Tuple] = None


Matcher = Callable[[Any, str], Optional[Plan]]  # (wrapper, op) -> Plan without out/fused, or None
_MATCHERS: Dict[str, Tuple[Matcher, bool]] = {}


def register_matcher(op: str, matcher: Matcher, fuses_following_relu: bool = False) -> None:
    """Teach the emulation to run layers whose ``integer_op`` is ``op`` (see ``layers.register_layer``);
    ``fuses_following_relu``: a following ReLU layer fuses into the op (ADD/SUB/MUL)."""
    _MATCHERS[op] = (matcher, fuses_following_relu)


def fuses_following_relu(op: Optional[str]) -> bool:
    """Whether the kernel of ``op`` computes a following ReLU layer's output (ADD/SUB/MUL): such a layer is
    wrapped even where it quantizes nothing itself (the ReLU holds the range), so the emulation can plan it."""
    return bool(op) and _MATCHERS.get(op, (None, False))[1]


def grid(source) -> Optional[K.Grid]:
    """The integer grid of a (quantizer, variables, ...) source."""
    return K.grid_of_quantizer(source[0], source[1])


def sole_consumer(layer):
    """The one layer reading ``layer``'s output, or None. A wrapper that built its inner layer on a first call
    (``QuantizeWrapper.__call__``) left a node to that inner layer too: it is the wrapper's, not a second reader."""
    readers = [n.outbound_layer for n in getattr(layer, "_outbound_nodes", [])]
    inner = {id(getattr(r, "layer", None)) for r in readers}
    readers = [r for r in readers if id(r) not in inner]
    return readers[0] if len(readers) == 1 else None


class IntegerEmulation:
    """Mixin of ``QuantizeWrapper`` (uses its quantizer state: ``_live_weights()``, ``_activation_vars``,
    ``_output_quantizers``, ``_input_source(s)``, and its ``_q``/``_float_call``/``_call_layer``)."""

    def _output_source(self):
        return (self._output_quantizers[0], self._output_quantizer_vars) if self._output_quantizers else None

    @tf.autograph.experimental.do_not_convert  # static Python over the model's structure
    def _integer_plan(self) -> Optional[Plan]:
        """This layer's ``Plan``, or None where it keeps the float simulation (decided once, when the
        graph around it is complete)."""
        cached = getattr(self, "_integer_plan_cache", None)
        if cached is not None:
            return cached or None
        plan = _plan(self)
        if getattr(self, "_outbound_nodes", None):
            object.__setattr__(self, "_integer_plan_cache", plan or False)
        return plan

    # Integer kernels are plain Python over static facts (no control flow on tensors): AutoGraph's
    # source-to-source conversion of every function they reach took seconds per traced model.
    @tf.autograph.experimental.do_not_convert
    def _integer_call(self, inputs, kwargs, kernels, plan: Plan):
        handler = kernels.handler(plan.op)
        out_grid = grid(plan.out)
        in_grids = [grid(src) for src in plan.sources]
        if handler is None or out_grid is None or None in in_grids:
            return self._float_call(inputs, False, kwargs)
        out_q, out_v = plan.out
        if plan.operand == "accumulator":
            return self._integer_conv(inputs, kwargs, kernels, handler, plan, in_grids[0], out_grid)
        if plan.operand == "constants":
            return self._constant_ops_call(kernels, inputs, kwargs, plan)
        if plan.operand == "lowered":
            return self._lowered_call(kernels, inputs, plan.sources[0], plan.sources[1], plan.attrs["lowering"],
                                      plan.out)
        operands = [self.layer.call(inputs)] if plan.operand == "layer_output" else \
            (list(inputs) if isinstance(inputs, (list, tuple)) else [inputs])
        offsets = [K.offsets_of(x, src[:2]) for x, src in zip(operands, plan.sources)] \
            if plan.operand == "inputs" else None
        y = handler(kernels, K.OpCall(operands, in_grids, out_grid, plan.fused, plan.attrs, offsets))
        if y is None:  # a call the handler does not model (an int16 table activation)
            return self._float_call(inputs, False, kwargs)
        # The quantizer's own inference pass: identity on its grid, plus any clip it applies before
        # FakeQuant (signed PACT's max(x, -α), a MAXIMUM op in TFLite).
        return _passed_on(y, out_q(y, False, weights=out_v), plan)

    def _constant_ops_call(self, kernels, x, kwargs, plan: Plan):
        """Elementwise ops with constant operands in a row (``plan.attrs["ops"]``: Rescaling, Normalization),
        each onto the next quantizer's grid (the split's inner one, then the output's); each constant read from the
        layer in this call (``plan.attrs["steps_of"]``) and stored as the converter stores it
        (``K.constant_operand``)."""
        steps, sources = plan.attrs["steps_of"](self.layer), plan.sources + plan.attrs["onto"] + [plan.out]
        handlers = [kernels.handler(op) for op in plan.attrs["ops"]]
        grids = [grid(s) for s in sources]
        if None in handlers or None in grids or x.shape.rank is None:   # every step integer, or none
            return self._float_call(x, False, kwargs)
        for i, ((_, value), handler) in enumerate(zip(steps, handlers)):
            c, c_grid = K.constant_operand(value, x.shape.rank)
            target, last = sources[i + 1], i == len(steps) - 1
            raw = handler(kernels, K.OpCall([x, c], [grids[i], c_grid], grids[i + 1], plan.fused if last else "linear",
                                            offsets=[K.offsets_of(x, sources[i][:2]), None]))
            y = target[0](raw, False, weights=target[1])
            x = _passed_on(raw, y, plan) if last else K.hand_on(raw, y, target[0], target[1])
        return x

    def _integer_conv(self, inputs, kwargs, kernels, handler, plan: Plan, in_grid, out_grid):
        weight, wq, wv = self._live_weights()[0]  # BatchStatsFold: the folded kernel, not the variable
        w_range = K.fake_quant_range(wq, wv, weight)
        if w_range is None:
            return self._float_call(inputs, False, kwargs)
        w_grid = K.grid_of(*w_range)
        acc, bias = self._integer_accumulator(inputs, kwargs, kernels, plan, in_grid, w_grid)
        out_q, out_v = plan.out
        attrs = dict(plan.attrs, weight_scale=tf.reshape(w_grid.scale, [-1]), layer=self.name, bias=bias)
        raw = handler(kernels, K.OpCall([acc], [in_grid], out_grid, plan.fused, attrs))
        y = _passed_on(raw, out_q(raw, False, weights=out_v), plan)
        fn = getattr(self.layer, "activation", None)
        name = activation_name(fn)
        acts = self._activation_vars.get("activation", {})
        if name == "linear" or (name in K.FUSED_ACTIVATIONS and "pre" not in acts):   # "pre": a ReLU not fused
            return y
        final = plan.after   # the plan's "pre" case: the output's grid, own or shared (None: neither)
        if final is None:
            return fn(y)
        if acts.get("inner") is not None:  # swish: LOGISTIC, MUL
            return self._lowered_call(kernels, y, plan.out, acts["inner"], lowering(fn), final)
        if name == "softmax" and not _softmax_ok(y):
            return self._q(final[0], fn(y), False, final[1])
        return self._activation_op(kernels, ACTIVATION_OPS.get(name) or RELU_OPS.get(name), fn, y, plan.out, final)

    def _activation_op(self, kernels, op, fn, x, x_source, final):
        """The activation op ``op`` (SOFTMAX or a table activation; float form ``fn``) on ``x`` (on ``x_source``'s
        grid) through the kernel set, onto the ``final`` quantizer's grid; the float simulation where the kernel set
        has no handler or declines the call."""
        handler = kernels.handler(op)
        in_grid, out_grid = grid(x_source), grid(final)
        attrs = activation_attrs(fn)  # LEAKY_RELU's alpha
        raw = None
        if handler is not None and in_grid is not None and out_grid is not None and attrs is not None:
            raw = handler(kernels, K.OpCall([x], [in_grid], out_grid, attrs=attrs,
                                            offsets=[K.offsets_of(x, x_source[:2])]))
        if raw is None:
            return self._q(final[0], fn(x), False, final[1])
        return K.hand_on(raw, final[0](raw, False, weights=final[1]), final[0], final[1])

    def _lowered_call(self, kernels, x, x_source, inner, rule: Lowering, final):
        """An activation the runtime runs as two ops (``lowered_activations.py``) on ``x`` (on ``x_source``'s
        grid): the inner op onto its fixed grid (``_activation_op``: swish's LOGISTIC table), then the combining
        op through the kernel set, onto the ``final`` quantizer's grid."""
        t = self._activation_op(kernels, ACTIVATION_OPS.get(rule.inner), rule.inner_fn, x, x_source, inner)
        handler = kernels.handler(rule.combine)
        grids = [grid(x_source), grid(inner)]
        out_grid = grid(final)
        if handler is None or out_grid is None or None in grids:
            return self._q(final[0], rule.combine_fn(x, t), False, final[1])
        offsets = [K.offsets_of(x, x_source[:2]), K.offsets_of(t, inner[:2])]
        raw = handler(kernels, K.OpCall([x, t], grids, out_grid, "linear", {}, offsets))
        return K.hand_on(raw, final[0](raw, False, weights=final[1]), final[0], final[1])

    def _integer_accumulator(self, inputs, kwargs, kernels, plan: Plan, in_grid, w_grid):
        """``(dot, bias)`` of this conv / dense layer: the layer run on the integer input offsets ``q - Z``
        and integer weights (float32 holds these sums exactly below 2^24), and the integer bias (None without
        one) quantized by the kernel set (``quantize_bias``: rounded onto ``S_in·S_w``, each factor the double
        ``Grid.bias_scale``, as the converter stores it); the kernel set's ``accumulate`` adds them as its hardware
        does."""
        weight, wq, wv = self._live_weights()[0]
        attr = next(iter(self.quantize_config.weights))
        w_scale = tf.cast(w_grid.scale, tf.float32)
        try:
            w_scale = Quantizer.broadcast(w_scale, weight, wv.get("channel_axes"))
        except (ValueError, IndexError):
            w_scale = tf.reshape(w_scale, [-1]) if w_scale.shape.rank else w_scale
        w_int = tf.round(self._q(wq, weight, False, wv) / w_scale)
        x_int = K.offsets_of(inputs, plan.sources[0][:2])  # the integers the kernel before computed
        if x_int is None:
            x_int = K.integer_values(inputs, in_grid.scale)
        x_int = tf.cast(x_int, inputs.dtype)
        bias = getattr(self.layer, "bias", None) if getattr(self.layer, "use_bias", False) else None
        fn = getattr(self.layer, "activation", None)
        set_attr(self.layer, attr, w_int)
        if bias is not None:
            self.layer.bias = tf.zeros_like(bias)
        if fn is not None:
            self.layer.activation = keras.activations.linear
        try:
            y = self._call_layer(x_int, False, kwargs)
        finally:
            set_attr(self.layer, attr, self._weight_vars[0][0])  # the variable: the layer stays as it was
            if bias is not None:
                self.layer.bias = bias
            if fn is not None:
                self.layer.activation = fn
        if bias is None:
            return y, None
        s_bias = in_grid.bias_scale * tf.reshape(w_grid.bias_scale, [-1])
        return y, kernels.quantize_bias(tf.cast(tf.convert_to_tensor(bias), tf.float64) / s_bias)


def _passed_on(raw, y, plan: Plan):
    """``y``, the output quantizer's pass over a kernel's output ``raw``, as the next layers see it (for this
    model call, ``kernels.calls``): a following ReLU the kernel fused is marked done, and the integer offsets
    the kernel computed go with ``y``, so the next kernel reads them, as TFLite hands the int8 tensor on,
    rather than rounding ``y / S`` again. Only where the quantizer's pass is one FakeQuant
    (``K.pure_fake_quant``), which keeps on-grid values on their grid points (a clip before it can move them)."""
    out_q, out_v = plan.out[:2]
    if plan.consumer_fused:
        K.mark_fused(out_q, out_v)
    return K.hand_on(raw, y, out_q, out_v)


# ----------------------------------------------------------------------------- planning
def _plan(w) -> Optional[Plan]:
    out = w._output_source()
    fused_consumer = None
    if not out and not w._activation_vars:
        consumer, concat = sole_consumer(w), _concat_through_relu(w)
        onto = concat_grid_source(concat) if concat is not None else None
        if isinstance(consumer, IntegerEmulation) and consumer._output_quantizers \
                and not consumer._activation_vars and fused_activation(consumer.layer) is not None:
            fused_consumer = (consumer._output_source(), fused_activation(consumer.layer), True)
        elif onto is not None:
            # a plain ReLU layer (its range is the concatenation's) between this layer and a Concatenate: the
            # converter fuses it here and computes onto the concatenation's grid; the ReLU then leaves those values
            fused_consumer = (onto, fused_activation(consumer), False)
    if not out and w.quantize_config.info.get("output_shared_with"):
        # an input of a Concatenate that quantizes for all its inputs: TFLite's CONCATENATION keeps
        # that one grid, so this layer's kernel requantizes straight onto it
        consumer = _through_inner_concats(sole_consumer(w))
        if isinstance(consumer, IntegerEmulation) and consumer._output_quantizers:
            out = concat_grid_source(consumer)
        elif _shared_merge(consumer, sole_consumer(consumer)):
            out = _merge_grid_source(consumer)
    if w._weight_vars:
        base = _conv_plan(w)
        if base is None or not set(w.quantize_config.activations) <= {"activation"}:
            return None
        acts = w._activation_vars.get("activation", {})
        fused = activation_name(getattr(w.layer, "activation", None))
        if not acts and out and fused in K.FUSED_ACTIVATIONS:
            return dataclasses.replace(base, out=out, fused=fused)
        if set(acts) in ({"pre"}, {"pre", "inner"}):
            return dataclasses.replace(base, out=acts["pre"], fused="linear", after=out)
        if fused_consumer is not None and fused in ("linear", fused_consumer[1]):
            # a following ReLU layer the converter fuses here; one that repeats the kernel's own ReLU it drops
            # (measured: ReLU then ReLU6 stays two ops, with the kernel in float, which ``verify`` lists)
            return dataclasses.replace(base, out=fused_consumer[0], fused=fused_consumer[1],
                                       consumer_fused=fused_consumer[2])
        return None
    if w._activation_vars:
        return _lowered_plan(w, out)
    spec = layer_spec(w.layer)
    op = spec.integer_op_of(w.layer) if spec is not None else None
    matcher, fuses = _MATCHERS.get(op, (None, False))
    base = matcher(w, op) if matcher is not None else None
    if base is None:
        return None
    if out:
        return dataclasses.replace(base, out=out)
    if fused_consumer is not None and fuses:
        return dataclasses.replace(base, out=fused_consumer[0], fused=fused_consumer[1],
                                   consumer_fused=fused_consumer[2])
    return None


def _lowered_plan(w, out) -> Optional[Plan]:
    """An Activation layer whose function the runtime runs as two ops (swish: LOGISTIC, then MUL)."""
    built = w._activation_vars.get("activation", {})
    source = getattr(w, "_input_source", None)
    rule = lowering(getattr(w.layer, "activation", None))
    if set(w._activation_vars) != {"activation"} or set(built) != {"inner"} or not out or not source or rule is None:
        return None
    inner_q, inner_v = built["inner"]
    return Plan(rule.combine, [source, (inner_q, inner_v, w.name)], {"lowering": rule}, operand="lowered", out=out)


def _through_inner_concats(layer):
    """``layer``, or where it is a Concatenate without a range of its own (an inner one: InceptionV3's ``mixed9_0``
    inside ``mixed9``; ``share_concat_ranges`` gave its range to the outer one), the concatenation it feeds, as far
    as each is the sole reader: the one whose grid they all share."""
    while isinstance(layer, keras.layers.Concatenate) and not isinstance(layer, IntegerEmulation):
        layer = sole_consumer(layer)
    return layer


def _concat_through_relu(w):
    """The Concatenate wrapper (with a range) that wrapper ``w``'s output reaches through a plain ReLU layer (and
    inner concatenations), the sole reader of each, where ``w`` has no range of its own: its kernel computes onto
    that grid; else None."""
    relu = sole_consumer(w) if _shares_output(w, sole_consumer(w)) else None
    concat = sole_consumer(relu) if relu is not None and fused_activation(relu) is not None else None
    concat = _through_inner_concats(concat)
    if isinstance(concat, IntegerEmulation) and concat._output_quantizers \
            and concat.quantize_config.info.get("kind") == "concat":
        return concat
    return None


def _conv_plan(w) -> Optional[Plan]:
    if w.quantize_config.info.get("kind") != "compute" or len(w._weight_vars) != 1:
        return None
    spec = layer_spec(w.layer)
    op = spec.integer_op_of(w.layer) if spec is not None else None
    weight, quantizer, qvars = w._weight_vars[0]
    source = getattr(w, "_input_source", None)
    if op not in K.CONV_OPS or not source or not getattr(quantizer, "symmetric", False):
        return None
    return Plan(op, [source], {"op": op}, operand="accumulator", weight=(weight, quantizer, qvars))


# ----------------------------------------------------------------------------- matchers per op
def _mean(w, op) -> Optional[Plan]:
    layer = w.layer
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    keepdims = bool(getattr(layer, "keepdims", False))
    if keepdims and not isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return None  # 3-D keepdims MEAN: not measured
    source = getattr(w, "_input_source", None)
    shape = getattr(w, "_input_shape", None)
    shape = shape[1:-1] if shape else None  # the averaged axes
    if not source or shape is None or None in shape:
        return None
    count = 1
    for d in shape:
        count *= int(d)
    return Plan("MEAN_KEEPDIMS" if keepdims else "MEAN", [source], {"count": count}, operand="layer_output")


def _softmax_ok(x) -> bool:
    return x.shape.rank is not None and x.shape[-1] is not None and x.shape[-1] <= K.MAX_SOFTMAX_CLASSES


def _softmax(w, op) -> Optional[Plan]:
    """Softmax over the last axis of a quantized input."""
    layer = w.layer
    if isinstance(layer, keras.layers.Softmax):
        axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
        if axis not in (-1, len(getattr(w, "_input_shape", ())) - 1):
            return None
    source = getattr(w, "_input_source", None)
    shape = getattr(w, "_input_shape", None)
    classes = shape[-1] if shape else None
    if not source or classes is None or classes > K.MAX_SOFTMAX_CLASSES:
        return None
    return Plan(op, [source])


def _one_input(w, op) -> Optional[Plan]:
    """An op of one quantized input: a table activation (LOGISTIC, TANH, GELU), L2_NORMALIZATION, HARD_SWISH, a
    RELU / RELU6 its producer does not fuse (a fused one's input has no grid of its own: no plan)."""
    source = getattr(w, "_input_source", None)
    return Plan(op, [source]) if source else None


def _constant_ops(w, op) -> Optional[Plan]:
    """A layer the converter runs as ADD / SUB / MUL with constant operands: its split's two steps through the
    inner quantizer (Rescaling with an offset, Normalization), or a Rescaling that is one op."""
    source, spec = getattr(w, "_input_source", None), own_spec(type(w.layer))
    if not source or spec is None or spec.split is None:
        return None
    inner = w.quantize_config.inner
    if inner is not None:
        steps_of, onto = spec.split.steps, [(inner, w._inner_quantizer_vars, w.name)]
    else:
        if not isinstance(w.layer, keras.layers.Rescaling) or rescaling_op(w.layer) is None:
            return None
        steps_of, onto = (lambda layer: [rescaling_op(layer)]), []
    # The plan keeps the ops and how to read their constants, not the constants: a Normalization's 1/std is a
    # tensor of the graph it is made in, and the plan outlives that trace (another kernel set, another batch size)
    ops = [op for op, _ in steps_of(w.layer)]
    return Plan(ops[0], [source], {"ops": ops, "steps_of": steps_of, "onto": onto}, operand="constants")


def _leaky_relu(w, op) -> Optional[Plan]:
    """A LeakyReLU layer (its alpha) or an ``Activation("leaky_relu")`` (its function's alpha)."""
    source = getattr(w, "_input_source", None)
    if own_spec(type(w.layer)) is None or not source:  # a subclass may compute something else
        return None
    if isinstance(w.layer, keras.layers.Activation):
        attrs = activation_attrs(w.layer.activation)
        return Plan(op, [source], attrs) if attrs is not None else None
    return Plan(op, [source], {"alpha": float(w.layer.alpha)})


def _prelu(w, op) -> Optional[Plan]:
    source = getattr(w, "_input_source", None)
    if own_spec(type(w.layer)) is None or not source:
        return None
    return Plan(op, [source], {"alpha": w.layer.alpha})


def _elementwise(w, op) -> Optional[Plan]:
    """Two quantized tensors of the same shape, or of known shapes one of which broadcasts to the other (a
    squeeze-excite scale, a one-channel map: the kernels' broadcast paths are modelled, ``tflite_ops.add_paths``)."""
    sources = getattr(w, "_input_sources", None)
    shapes = getattr(w, "_input_shapes", None)
    if own_spec(type(w.layer)) is None or not sources or len(sources) != 2 or not all(sources) or shapes is None:
        return None
    if shapes[0] != shapes[1] and (None in tuple(shapes[0]) + tuple(shapes[1])
                                   or not (_broadcast_to(shapes[1], shapes[0]) or _broadcast_to(shapes[0], shapes[1]))):
        return None
    return Plan(op, list(sources))


def _batch_matmul(w, op) -> Optional[Plan]:
    """A Dot of two quantized rank-3 tensors, or of two vectors (``builtin_layers.batch_matmul_adjoints``)."""
    sources, shapes = getattr(w, "_input_sources", None), getattr(w, "_input_shapes", None)
    if own_spec(type(w.layer)) is None or not sources or len(sources) != 2 or not all(sources) or shapes is None:
        return None
    adjoints = batch_matmul_adjoints(w.layer, [len(s) + 1 for s in shapes])   # shapes without the batch axis
    if adjoints is None:
        return None
    return Plan(op, list(sources), {"adj_x": adjoints[0], "adj_y": adjoints[1]})


def _broadcast_to(small, big) -> bool:
    """Whether a tensor of shape ``small`` (batch axis left out) broadcasts to ``big`` (same rank, 1 or equal)."""
    return len(small) == len(big) and all(s in (1, b) for s, b in zip(small, big))


def _concatenation(w, op) -> Optional[Plan]:
    """Quantized inputs, each on a known grid: its producer's, or the grid the producer computes straight onto (a
    conv whose output range the concatenation took over, ``output_shared_with``, or a conv whose plain ReLU layer
    feeds it): the concatenation's own (``concat_grid_source``)."""
    sources, nodes, out = getattr(w, "_input_sources", None), getattr(w, "_inbound_nodes", None), w._output_source()
    if own_spec(type(w.layer)) is None or not sources or not nodes or not out:
        return None
    onto = concat_grid_source(w)
    if onto is None:
        return None
    resolved = []
    for source, tensor in zip(sources, nodes[0].keras_inputs):
        producer = tensor._keras_history.layer
        if not source and (_shares_output(producer, w) or _concat_through_relu(_producer_of(producer)) is w):
            source = onto
        elif not source and _shared_merge(producer, w):
            source = _merge_grid_source(producer)
        if not source:
            return None
        resolved.append(source)
    if op != "CONCATENATION":   # MAXIMUM / MINIMUM: binary
        return Plan(op, resolved) if len(resolved) == 2 else None
    return Plan(op, resolved, {"axis": w.layer.axis})


def concat_grid_source(concat):
    """The grid the producers that share a Concatenate's range compute onto: its own; but where it is read through
    a reshape (Flatten, Reshape, a Dense over a feature map), the one input grid of its own among its inputs.
    There TF 2.21's converter moves the concatenation's FakeQuant past the reshape, runs the concatenation on an
    input's grid (the largest scale among those with a FakeQuant; measured) with the sharing producers computing
    onto it, and requantizes its output with a QUANTIZE, the rounding the CONCATENATION kernel gives an input on
    another grid. Where every input shares the range, that grid is the concatenation's own (no QUANTIZE). With two
    inputs of their own the choice depends on the scales: left to the float simulation (None)."""
    own = _own_grids(getattr(concat, "_input_sources", None) or [])
    if not own or not _read_through_reshape(concat):
        return concat._output_source()
    return next(iter(own.values())) if len(own) == 1 else None


def _own_grids(sources):
    """The distinct (quantizer, variables) among a merge's input sources (None: an input without a range)."""
    return {id(s[0]): tuple(s[:2]) for s in sources if s}


def _read_through_reshape(layer) -> bool:
    consumer = sole_consumer(layer)
    if isinstance(consumer, (keras.layers.Flatten, keras.layers.Reshape)):
        return True
    inner = getattr(consumer, "layer", None)
    shape = getattr(consumer, "_input_shape", None)
    return isinstance(inner, keras.layers.Dense) and shape is not None and len(shape) > 2


def _shared_merge(layer, consumer) -> bool:
    """An unwrapped merge on one grid (a Maximum inside a concatenation) whose range its sole reader ``consumer``
    holds: it has no quantizer, and the converter runs it on the grid ``consumer`` runs on."""
    spec = layer_spec(layer) if layer is not None and not isinstance(layer, IntegerEmulation) else None
    return spec is not None and spec.kind_of(layer) == "concat" and sole_consumer(layer) is consumer


def _merge_grid_source(merge):
    """The grid an unwrapped merge sharing its reader's range runs on (a Maximum inside a concatenation): as the
    converter runs it (measured), the grid of its one input with a range of its own, the producers sharing the range
    computing onto it and the reader requantizing the result; with no such input, its reader's; with two, None."""
    from qresearch.schemes.wrappers import _range_source

    nodes = getattr(merge, "_inbound_nodes", None)
    own = _own_grids([_range_source(t) for t in (nodes[0].keras_inputs if nodes else [])])
    if len(own) > 1:
        return None
    if own:
        return next(iter(own.values()))
    reader = sole_consumer(merge)
    if isinstance(reader, IntegerEmulation) and reader._output_quantizers:
        return concat_grid_source(reader)
    return None


def _shares_output(producer, consumer) -> bool:
    return isinstance(producer, IntegerEmulation) and not producer._output_quantizers \
        and sole_consumer(producer) is consumer


def _producer_of(layer):
    """The layer whose output ``layer`` reads, where it reads one tensor."""
    nodes = getattr(layer, "_inbound_nodes", None)
    inputs = nodes[0].keras_inputs if nodes else []
    return inputs[0]._keras_history.layer if len(inputs) == 1 else None


register_matcher("MEAN", _mean)
for _op in ("CONCATENATION", "MAXIMUM", "MINIMUM"):
    register_matcher(_op, _concatenation)
register_matcher("SOFTMAX", _softmax)
for _op in ("LOGISTIC", "TANH", "GELU", "L2_NORMALIZATION", "HARD_SWISH", "RELU", "RELU6"):
    register_matcher(_op, _one_input)
register_matcher("LEAKY_RELU", _leaky_relu)
register_matcher(CONSTANT_OPS, _constant_ops, fuses_following_relu=True)
register_matcher("PRELU", _prelu)
register_matcher("BATCH_MATMUL", _batch_matmul)
for _op in ("ADD", "SUB", "MUL"):
    register_matcher(_op, _elementwise, fuses_following_relu=True)
