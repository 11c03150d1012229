"""A flat view of a tf_keras Sequential/functional model's layer graph.

Nested models (a functional or Sequential model used as a layer) are inlined,
so the rewrite sees every real layer. Tensors are named by opaque string refs.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from qresearch._compat import keras, tf
from qresearch.errors import UnsupportedLayerError


@dataclasses.dataclass(eq=False)
class GNode:
    layer: keras.layers.Layer
    call_args: tuple
    call_kwargs: dict
    flat_args: list
    in_slots: List[Tuple[str, int]]   # (tensor ref, index into flat_args)
    out_refs: List[str]
    prefix: str = ""                  # name prefix of the nested model it came from
    origin: Optional[keras.layers.Layer] = None  # the user's layer this node was split from

    @property
    def in_refs(self) -> List[str]:
        return [r for r, _ in self.in_slots]

    def pack(self, tensors: Dict[str, object]):
        flat = copy.copy(self.flat_args)
        for ref, idx in self.in_slots:
            flat[idx] = tensors[ref]
        args, kwargs = tf.nest.pack_sequence_as((self.call_args, self.call_kwargs.values()), flat)
        return args, dict(zip(self.call_kwargs.keys(), kwargs))


@dataclasses.dataclass
class Graph:
    inputs: List[keras.layers.Layer]   # original input KerasTensors
    input_refs: List[str]
    output_refs: List[str]
    nested_outputs: object
    nodes: List[GNode]
    name: str

    def producers(self) -> Dict[str, GNode]:
        return {r: n for n in self.nodes for r in n.out_refs}

    def consumers(self) -> Dict[str, List[GNode]]:
        out: Dict[str, List[GNode]] = {}
        for n in self.nodes:
            for r in dict.fromkeys(n.in_refs):
                out.setdefault(r, []).append(n)
        return out


def _kid(t) -> str:
    return str(id(t))


def is_graph_model(layer) -> bool:
    return isinstance(layer, keras.Model) and (isinstance(layer, keras.Sequential) or layer._is_graph_network) \
        and getattr(layer, "_nodes_by_depth", None) is not None and layer.inputs is not None


def flatten(model) -> Graph:
    """The model's layer calls in execution order, with nested models inlined."""
    if not is_graph_model(model):
        if isinstance(model, keras.Sequential):
            raise UnsupportedLayerError(
                f"Sequential model {model.name!r} is not built: give its first layer an input_shape, "
                "or call model.build((None, ...)) before quantizing")
        raise UnsupportedLayerError(
            f"model {model.name!r} ({type(model).__name__}) is a subclassed model: qresearch rewrites the layer "
            "graph, which only Sequential and functional models expose. Build it with the functional API "
            "(keras.Model(inputs, outputs)); subclassed models used as layers inside a functional model can be "
            "kept in float with the scheme's skip list")
    nodes: List[GNode] = []
    alias: Dict[str, str] = {}

    def resolve(ref: str) -> str:
        while ref in alias:
            ref = alias[ref]
        return ref

    def walk(m, prefix: str):
        for depth in sorted(m._nodes_by_depth, reverse=True):
            for node in m._nodes_by_depth[depth]:
                layer = node.layer
                if isinstance(layer, keras.layers.InputLayer):
                    continue
                if is_graph_model(layer):
                    inner_in = tf.nest.flatten(layer._nested_inputs) if hasattr(layer, "_nested_inputs") \
                        else list(layer.inputs)
                    outer_in = [t for t in tf.nest.flatten(node.call_args[0]) if hasattr(t, "_keras_history")]
                    if len(inner_in) != len(outer_in):
                        raise UnsupportedLayerError(
                            f"nested model {layer.name!r} is called with {len(outer_in)} tensors but has "
                            f"{len(inner_in)} inputs; call it with its inputs as one list")
                    for ti, to in zip(inner_in, outer_in):
                        alias[_kid(ti)] = resolve(_kid(to))
                    walk(layer, prefix + layer.name + "_")
                    for to, ti in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(layer.outputs)):
                        alias[_kid(to)] = resolve(_kid(ti))
                    continue
                flat_args = list(node._flat_arguments)
                slots = [(resolve(kt_id), idx) for kt_id, idx in node._keras_inputs_ids_and_indices]
                outs = [_kid(t) for t in tf.nest.flatten(node.outputs)]
                nodes.append(GNode(layer, node.call_args, dict(node.call_kwargs), flat_args, slots, outs, prefix))

    walk(model, "")
    inputs = list(model.inputs)
    outputs = [resolve(_kid(t)) for t in model.outputs]
    nested = getattr(model, "_nested_outputs", model.outputs)
    return Graph(inputs, [_kid(t) for t in inputs], outputs, nested, nodes, model.name)


def _call_counts(graph: Graph) -> Dict[int, int]:
    """id(layer) -> how many nodes call it: a shared layer is split in no node (its weights are shared)."""
    counts: Dict[int, int] = {}
    for n in graph.nodes:
        counts[id(n.layer)] = counts.get(id(n.layer), 0) + 1
    return counts


def split_separable(graph: Graph, keep=lambda layer: False) -> None:
    """Replace each SeparableConv1D/2D by a DepthwiseConv + 1x1 Conv pair, as TFLite runs it, so the
    tensor between them gets its own quantizer (tfmot does the same in its layout transform).
    ``keep(layer)`` true leaves a layer as is (e.g. skipped layers)."""
    K = keras.layers
    counts = _call_counts(graph)
    out: List[GNode] = []
    for n in graph.nodes:
        layer = n.layer
        if type(layer) not in (K.SeparableConv1D, K.SeparableConv2D) or counts[id(layer)] > 1 or keep(layer) \
                or getattr(layer, "data_format", "channels_last") != "channels_last" or len(n.in_refs) != 1:
            out.append(n)
            continue
        two_d = isinstance(layer, K.SeparableConv2D)
        dw_cls, pw_cls = (K.DepthwiseConv2D, K.Conv2D) if two_d else (K.DepthwiseConv1D, K.Conv1D)
        dw = dw_cls(layer.kernel_size, strides=layer.strides, padding=layer.padding,
                    depth_multiplier=layer.depth_multiplier, dilation_rate=layer.dilation_rate, use_bias=False,
                    name=f"{layer.name}_depthwise")
        pw = pw_cls(layer.filters, 1, use_bias=layer.use_bias, activation=layer.activation,
                    name=f"{layer.name}_pointwise")
        in_shape = layer.input_shape
        dw.build(in_shape)
        dw.depthwise_kernel.assign(layer.depthwise_kernel)
        mid_shape = dw.compute_output_shape(in_shape)
        pw.build(mid_shape)
        pw.kernel.assign(tf.reshape(layer.pointwise_kernel, pw.kernel.shape))
        if layer.use_bias:
            pw.bias.assign(layer.bias)
        mid = f"{n.out_refs[0]}#depthwise"
        out.append(GNode(dw, n.call_args, n.call_kwargs, n.flat_args, n.in_slots, [mid], n.prefix, layer))
        out.append(GNode(pw, (None,), {}, [None], [(mid, 0)], list(n.out_refs), n.prefix, layer))
    graph.nodes = out


def split_nary_merges(graph: Graph, keep=lambda layer: False) -> None:
    """Replace each Add / Multiply / Maximum / Minimum of three or more inputs by a chain of two-input ones,
    ``((a + b) + c) + ...``: Keras computes in that order, and the TFLite converter makes the same chain of ADD
    (MUL, MAXIMUM, MINIMUM) ops, whose partial results need int8 ranges of their own (with one quantizer after the
    layer they had none: the sums ran in float between a DEQUANTIZE and a QUANTIZE; a Minimum of three was 89 LSB
    off, its emulation being binary). The last link keeps the layer's name. An Average of n inputs is that
    chain of Adds, then ``Rescaling(1/n)`` under the layer's name: the converter makes its division a MUL by
    ``1/n``, which ran in float for the same reason (measured). ``keep(layer)``: leave as is."""
    K = keras.layers
    counts = _call_counts(graph)
    out: List[GNode] = []
    for n in graph.nodes:
        layer = n.layer
        average = type(layer) is K.Average
        if type(layer) not in (K.Add, K.Multiply, K.Maximum, K.Minimum, K.Average) or counts[id(layer)] > 1 \
                or keep(layer) \
                or len(n.in_slots) < (2 if average else 3) or n.call_kwargs or len(n.call_args) != 1 \
                or len(n.flat_args) != len(n.in_slots):
            out.append(n)
            continue
        refs = [r for r, _ in sorted(n.in_slots, key=lambda slot: slot[1])]
        last = len(refs) - 1
        partial = refs[0]
        for i, ref in enumerate(refs[1:], start=1):
            final = i == last and not average
            link = (K.Add if average else type(layer))(
                name=layer.name if final else f"{layer.name}_{'sum' if i == last else f'partial_{i}'}",
                dtype=layer.dtype_policy)
            result = list(n.out_refs) if final else [f"{n.out_refs[0]}#partial{i}"]
            out.append(GNode(link, ([None, None],), {}, [None, None], [(partial, 0), (ref, 1)], result, n.prefix,
                             layer))
            partial = result[0]
        if average:
            scale = K.Rescaling(1.0 / len(refs), name=layer.name, dtype=layer.dtype_policy)
            out.append(GNode(scale, (None,), {}, [None], [(partial, 0)], list(n.out_refs), n.prefix, layer))
    graph.nodes = out


#: TF ops on Keras tensors (TFOpLambda layers, by ``symbol``) that are Keras layers' own computations, and the layer
#: each becomes (``keras_layers_for_tf_ops``): two tensors (or a list, for concat) in, nothing else but a name.
_BINARY_OPS = {"__operators__.add": "Add", "math.add": "Add", "math.multiply": "Multiply",
               "math.subtract": "Subtract", "math.maximum": "Maximum", "math.minimum": "Minimum"}
_RELU_OPS = {"nn.relu": None, "nn.relu6": 6.0}
#: TF activation functions of one tensor and the Keras activation each is (an ``Activation`` layer then quantizes,
#: lowers and emulates it as that activation: swish as LOGISTIC and MUL; and names a float-kept one, FLOAT_KEPT)
_ACTIVATION_FN_OPS = {"nn.silu": "swish", "nn.elu": "elu", "nn.selu": "selu", "math.softplus": "softplus",
                      "nn.softsign": "softsign"}


def keras_layers_for_tf_ops(graph: Graph, keep=lambda layer: False) -> None:
    """Replace TF ops applied to Keras tensors that a Keras layer computes the same way (``x + y``,
    ``tf.multiply(x, s)``, ``tf.maximum``, ``tf.concat``, ``tf.nn.relu6``, ``tf.nn.leaky_relu``, ``tf.nn.silu``,
    ``tf.reduce_mean(x, [1, 2])``, ``x / 255.0``: a ``Rescaling``) by that layer, so they are planned, quantized and
    emulated as the layer is: a TF op layer is simulated in float and quantized after it, 1-2 LSB from TFLite's
    integer kernel (measured on digits CNNs).
    Others, and those ``keep(layer)`` names (skipped ones), stay as they are."""
    out: List[GNode] = []
    for n in graph.nodes:
        made = None if keep(n.layer) else _keras_layer_for(n)
        if made is None:
            out.append(n)
            continue
        layer, refs = made
        args = ([None] * len(refs),) if len(refs) > 1 else (None,)
        out.append(GNode(layer, args, {}, [None] * len(refs), [(r, i) for i, r in enumerate(refs)], list(n.out_refs),
                         n.prefix, n.layer))
    graph.nodes = out


def _matmul_as_dot(n: GNode, refs, kwargs, common):
    """``tf.matmul(a, b)`` of two rank-3 tensors (attention's ``q @ kᵀ``, ``a @ v``), transposes allowed: the ``Dot``
    computing it (BATCH_MATMUL, emulated), else None. Only the transpose / adjoint flags (the same on real values)
    may be given, by keyword."""
    flags = ("transpose_a", "transpose_b", "adjoint_a", "adjoint_b")
    ranks = [getattr(getattr(n.flat_args[i], "shape", None), "rank", None) for _, i in sorted(n.in_slots,
                                                                                             key=lambda s: s[1])]
    if len(refs) != 2 or ranks != [3, 3] or len(n.call_args) != 2 \
            or any(k not in flags or not isinstance(v, bool) for k, v in kwargs.items()):
        return None
    first = kwargs.get("transpose_a", False) or kwargs.get("adjoint_a", False)
    second = kwargs.get("transpose_b", False) or kwargs.get("adjoint_b", False)
    return keras.layers.Dot(axes=(1 if first else 2, 2 if second else 1), **common)


#: TF op symbols that take a tensor and a number as an ADD/SUB/MUL/DIV with a constant operand (``_scalar_operand``)
SCALAR_OPERAND_SYMBOLS = ("math.multiply", "__operators__.add", "math.add", "math.subtract", "math.truediv")


def _scalar_operand(n: GNode, others, common):
    """``x * c``, ``c * x``, ``x + c``, ``c + x``, ``x - c`` or ``x / c`` for a float tensor ``x`` and a number ``c``
    (a preprocessing step written as TF ops: ``inputs / 255.0``): the ``Rescaling`` computing it (a TF op layer
    is simulated in float, and its constant deploys quantized: ``kernels.constant_operand``), else None.
    ``common``: the new layer's name and dtype."""
    symbol, values = n.layer.symbol, [v for v in others if v is not None and not isinstance(v, str)]   # str: a name
    if symbol not in SCALAR_OPERAND_SYMBOLS or len(n.in_slots) != 1 or len(values) != 1 or np.ndim(values[0]) != 0:
        return None
    tensor = n.flat_args[n.in_slots[0][1]]
    if not getattr(getattr(tensor, "dtype", None), "is_floating", False):
        return None
    c, first = float(np.asarray(values[0])), n.in_slots[0][1] == 0
    scale_offset = {"math.multiply": (c, 0.0), "__operators__.add": (1.0, c), "math.add": (1.0, c)}.get(symbol)
    if first and symbol == "math.subtract":
        scale_offset = (1.0, -c)
    if first and symbol == "math.truediv" and c != 0:
        scale_offset = (1.0 / c, 0.0)
    return None if scale_offset is None else keras.layers.Rescaling(*scale_offset, **common)


def _keras_layer_for(n: GNode):
    """(Keras layer, input refs in order) for a TF op node that one computes, else None."""
    symbol = getattr(n.layer, "symbol", None)
    if type(n.layer).__name__ != "TFOpLambda" or not isinstance(symbol, str):
        return None
    K = keras.layers
    refs = [r for r, _ in sorted(n.in_slots, key=lambda slot: slot[1])]
    tensor_slots = {i for _, i in n.in_slots}
    others = [v for i, v in enumerate(n.flat_args) if i not in tensor_slots]
    kwargs = dict(n.call_kwargs)
    kwargs.pop("name", None)
    name = re.sub(r"[^A-Za-z0-9_]", "_", n.layer.name)
    common = dict(name=name, dtype=n.layer.dtype_policy)
    scalar = _scalar_operand(n, others, common)
    if scalar is not None:
        return scalar, refs
    if symbol in _BINARY_OPS:
        ranks = {getattr(getattr(n.flat_args[i], "shape", None), "rank", None) for _, i in n.in_slots}
        if len(refs) != 2 or any(v is not None for v in others) or len(ranks) != 1 or None in ranks:
            return None   # Keras' merge layers align unequal ranks otherwise than TF's broadcasting
        return getattr(K, _BINARY_OPS[symbol])(**common), refs
    if symbol in _RELU_OPS:
        if len(refs) != 1 or any(v is not None for v in others):
            return None
        return K.ReLU(max_value=_RELU_OPS[symbol], **common), refs
    if symbol in _ACTIVATION_FN_OPS:
        if len(refs) != 1 or any(v is not None for v in others) or kwargs.get("beta", 1.0) != 1.0:
            return None   # silu's beta other than 1 is not swish
        return K.Activation(_ACTIVATION_FN_OPS[symbol], **common), refs
    if symbol == "nn.leaky_relu":
        alpha = kwargs.get("alpha", others[0] if others else 0.2)   # tf.nn.leaky_relu's default
        if len(refs) != 1 or len(others) > 1 or not isinstance(alpha, (int, float)):
            return None
        return K.LeakyReLU(alpha=float(alpha), **common), refs
    if symbol == "concat":
        values = n.call_args[0] if n.call_args else kwargs.get("values")
        axis = kwargs.get("axis", n.call_args[1] if len(n.call_args) > 1 else None)
        if not isinstance(values, (list, tuple)) or len(values) != len(refs) or len(refs) < 2 \
                or not isinstance(axis, int):
            return None
        return K.Concatenate(axis=axis, **common), refs
    if symbol == "linalg.matmul":
        dot = _matmul_as_dot(n, refs, kwargs, common)
        return (dot, refs) if dot is not None else None
    if symbol == "math.reduce_mean":
        axis = kwargs.get("axis", n.call_args[1] if len(n.call_args) > 1 else None)
        keepdims = kwargs.get("keepdims", n.call_args[2] if len(n.call_args) > 2 else False)
        rank = getattr(n.call_args[0], "shape", None) if n.call_args else None
        if len(refs) != 1 or rank is None or rank.rank != 4 or not isinstance(keepdims, bool) \
                or list(axis if isinstance(axis, (list, tuple)) else [axis]) not in ([1, 2], [-3, -2]):
            return None
        return K.GlobalAveragePooling2D(keepdims=keepdims, **common), refs
    return None


def _rescaling_is(layer, scale: float, offset: float) -> bool:
    """``layer`` is a ``Rescaling`` by ``scale`` and ``offset`` (compared in float32, as the graph computes them)."""
    if type(layer) is not keras.layers.Rescaling:
        return False
    try:
        got = np.float32(layer.scale), np.float32(layer.offset)
    except (TypeError, ValueError):   # a per-channel scale or offset
        return False
    return got == (np.float32(scale), np.float32(offset))


def fuse_hard_swish(graph: Graph, keep=lambda layer: False) -> None:
    """Replace hard swish written as four layers, ``Multiply([x, ReLU6(x + 3)])`` then ``· (1/6)`` or ``/ 6`` (Keras
    layers or TF ops, after ``keras_layers_for_tf_ops``), by one ``Activation(hard_swish)`` under the last layer's
    name. The converter fuses that chain into one HARD_SWISH op, a fixed-point kernel with one rounding: the four
    layers' quantizers rounded the ReLU6 and the product too, and ran them as float simulations (1 LSB off,
    measured). Only the chain the converter fuses: ``x`` first in the Multiply (``relu6(x + 3) · x`` stays ADD, MUL,
    MUL), every inner tensor read once and no model output. MobileNetV3's own order, ``x · (ReLU6(x + 3) · (1/6))``,
    deploys as ADD, MUL, MUL from a quantized model (measured) and stays. ``keep(layer)``: leave the chain."""
    from qresearch.schemes.activations import HARD_SWISH_DIVISOR, HARD_SWISH_SHIFT, hard_swish
    from qresearch.schemes.layers import fused_relu

    producers, consumers, counts = graph.producers(), graph.consumers(), _call_counts(graph)
    outputs = set(graph.output_refs)

    def sole_reader(ref):
        readers = consumers.get(ref, [])
        return readers[0] if len(readers) == 1 and ref not in outputs else None

    fused: Dict[int, GNode] = {}   # id(last node) -> the fused node
    dropped: set = set()
    for mul in graph.nodes:
        if type(mul.layer) is not keras.layers.Multiply or len(mul.in_slots) != 2 \
                or len(mul.flat_args) != 2 or mul.call_kwargs:
            continue
        x_ref, r_ref = [r for r, _ in sorted(mul.in_slots, key=lambda slot: slot[1])]
        relu, scale = producers.get(r_ref), sole_reader(mul.out_refs[0])
        add = producers.get(relu.in_refs[0]) if relu is not None and len(relu.in_refs) == 1 else None
        chain = [add, relu, mul, scale]
        if add is None or scale is None or add.in_refs != [x_ref] or fused_relu(relu.layer) != "relu6" \
                or not _rescaling_is(add.layer, 1.0, HARD_SWISH_SHIFT) \
                or not _rescaling_is(scale.layer, 1.0 / HARD_SWISH_DIVISOR, 0.0) \
                or sole_reader(add.out_refs[0]) is not relu or sole_reader(r_ref) is not mul \
                or any(counts[id(n.layer)] > 1 or keep(n.layer) or id(n) in dropped for n in chain):
            continue
        layer = keras.layers.Activation(hard_swish, name=scale.layer.name, dtype=scale.layer.dtype_policy)
        fused[id(scale)] = GNode(layer, (None,), {}, [None], [(x_ref, 0)], list(scale.out_refs), scale.prefix,
                                 mul.layer)
        dropped.update(id(n) for n in chain)
    graph.nodes = [fused.get(id(n), n) for n in graph.nodes if id(n) not in dropped or id(n) in fused]


def split_normalized_dots(graph: Graph, keep=lambda layer: False) -> None:
    """Replace each ``Dot(normalize=True)`` (cosine similarities: two embeddings, or rows against rows, ``q·kᵀ``) by
    a ``UnitNormalization`` of each input over its contracted axis, then the Dot without normalisation under the
    layer's name. The converter makes the same ops: an L2_NORMALIZATION (output grid fixed at 1/128) of an input
    contracted over its last axis, float ops with a QUANTIZE after them of one contracted over another axis (a
    float-kept UnitNormalization: warned), then a BATCH_MATMUL. As one layer the normalised tensors had no quantizer,
    and the Dot ran as a float simulation (1-6 LSB, measured). ``keep(layer)``: leave as is."""
    K = keras.layers
    counts = _call_counts(graph)
    out: List[GNode] = []
    for n in graph.nodes:
        layer = n.layer
        if type(layer) is not K.Dot or not layer.normalize or counts[id(layer)] > 1 or keep(layer) \
                or len(n.in_slots) != 2 or len(n.flat_args) != 2 or n.call_kwargs:
            out.append(n)
            continue
        slots = sorted(n.in_slots, key=lambda slot: slot[1])
        ranks = [getattr(getattr(n.flat_args[i], "shape", None), "rank", None) for _, i in slots]
        axes = layer.axes if isinstance(layer.axes, (list, tuple)) else (layer.axes, layer.axes)
        if None in ranks:
            out.append(n)
            continue
        refs = []
        for i, (ref, _) in enumerate(slots):
            axis = -1 if axes[i] % ranks[i] == ranks[i] - 1 else axes[i] % ranks[i]
            unit = K.UnitNormalization(axis=axis, name=f"{layer.name}_l2_normalize_{i}", dtype=layer.dtype_policy)
            refs.append(f"{n.out_refs[0]}#normalized{i}")
            out.append(GNode(unit, (None,), {}, [None], [(ref, 0)], [refs[-1]], n.prefix, layer))
        dot = K.Dot(axes=layer.axes, normalize=False, name=layer.name, dtype=layer.dtype_policy)
        out.append(GNode(dot, ([None, None],), {}, [None, None], [(refs[0], 0), (refs[1], 1)], list(n.out_refs),
                         n.prefix, layer))
    graph.nodes = out


def merge_duplicate_relus(graph: Graph, keep=lambda layer: False) -> None:
    """Drop each ReLU / ReLU6 (layer or ``Activation``) that repeats another of the same kind on the same tensor
    (NASNet's cells apply ``Activation("relu")`` to one tensor in two branches); its readers read the first one's
    output. The converter merges such identical ops into one and fuses it into the op before it, whose output is
    then requantized straight onto the ReLU's grid; two layers kept a quantizer between (2-4 LSB, measured).
    ``keep(layer)``: leave it."""
    from qresearch.schemes.layers import fused_relu

    first: Dict[Tuple[str, str], str] = {}   # (input ref, "relu" | "relu6") -> the first such layer's output ref
    alias: Dict[str, str] = {}
    out: List[GNode] = []
    for n in graph.nodes:
        if any(r in alias for r, _ in n.in_slots):
            n = dataclasses.replace(n, in_slots=[(alias.get(r, r), i) for r, i in n.in_slots])
        kind = fused_relu(n.layer)
        if kind is not None and len(n.in_slots) == 1 and len(n.out_refs) == 1 and not n.call_kwargs \
                and not keep(n.layer):
            key = (n.in_slots[0][0], kind)
            if key in first:
                alias[n.out_refs[0]] = first[key]
                continue
            first[key] = n.out_refs[0]
        out.append(n)
    graph.output_refs = [alias.get(r, r) for r in graph.output_refs]
    graph.nodes = out
