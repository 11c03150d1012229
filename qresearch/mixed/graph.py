"""Which layers of a float tf_keras model compute, and whose output feeds each one.

A mixed-precision choice gives each *compute* layer (one with a MAC rule in
``qresearch.mixed.cost.MAC_RULES``) one width ``b``: its weights and its output
activations at ``b`` bits — exactly what one scheme override
``{match: <layer>, weights: {bits: b}, activations: {bits: b}}`` does. A compute layer's
*input* width is then the width of its **source**: walk back from its input through
single-input, non-compute layers (ReLU, BatchNormalization, pooling, Flatten, Dropout, ...)

- to a compute layer ``P``: the input width is ``b_P``; the layers walked through form ``P``'s
  *chain* and take ``P``'s activation width too (a ReLU after a folded BN carries the quantizer);
- to the model input: the input quantizer takes the activation spec of its first consumer, i.e.
  of the layer itself, so the source is the layer itself (input width = its own ``b``);
- to anything else (an ``Add``, a ``Concatenate``: several inputs): the scheme's base activation
  width, a constant (``source = None``). A compute layer reading several tensors (cross-attention) reads them at
  that base width too; one reading the same tensor twice (self-attention) reads it as one.

With ``quantize_ops: inputs`` (``own_inputs=True``) no layer quantizes its output: every compute layer
quantizes the tensor it reads with its own activation spec, so every source is the layer itself, and a
layer's output is stored at the width its compute readers quantize it to (``read_by``: the layers reading
it through single-consumer non-compute layers, where only compute layers read it, and all at one width: they
share one input quantizer), else in float (read at several widths, by an ``Add`` too, or by nothing).

Only flat Sequential/functional models whose layers are each called once are traced; nested
models and shared layers are refused with a message.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

from qresearch.errors import ConfigError

SELF = "<self>"


@dataclasses.dataclass
class ComputeLayer:
    name: str
    layer: object
    input_shape: Tuple
    output_shape: Tuple
    source: Optional[str]          # a compute layer's name, SELF, or None (base activation width)
    chain: List[str]               # non-compute layers whose output width follows this layer's
    read_by: List[str] = dataclasses.field(default_factory=list)  # own inputs: the compute layers reading the output


def _inbound(layer) -> List[object]:
    nodes = layer.inbound_nodes
    if len(nodes) > 1:
        raise ConfigError(f"layer {layer.name!r} is called {len(nodes)} times: mixed precision traces "
                          "models whose layers are each called once")
    if not nodes:
        return []
    inbound = nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _shape(s, first: bool = False):
    """One tensor's shape; ``first``: the first of several (an attention's query: its rule reads the others)."""
    if isinstance(s, list):
        if len(s) != 1 and not first:
            raise ConfigError(f"a compute layer with {len(s)} inputs/outputs is not supported")
        s = s[0]
    return tuple(s)


def _read_by(layer, order: Dict[int, int], is_compute) -> List[str]:
    """The compute layers whose input quantizers hold ``layer``'s output; [] where a non-compute layer reads it.
    ``order``: id(layer) -> its index among the model's layers (consumers in other models are not followed)."""
    t = layer
    while True:
        outs = sorted({id(n.outbound_layer): n.outbound_layer for n in t.outbound_nodes
                       if id(n.outbound_layer) in order}.values(), key=lambda x: order[id(x)])
        if outs and all(is_compute.get(o.name) for o in outs):
            return [o.name for o in outs]
        if len(outs) != 1:
            return []
        t = outs[0]


def compute_layers(model, own_inputs: bool = False) -> List[ComputeLayer]:
    """The compute layers of ``model`` in graph order, each with its shapes, source and chain
    (``own_inputs``: each reads its input at its own width, ``quantize_ops: inputs``)."""
    from qresearch._compat import keras
    from qresearch.mixed.cost import mac_rule

    if not model.built:
        raise ConfigError(f"model {model.name!r} is not built: build it before measuring its cost")
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ConfigError(f"layer {layer.name!r} is a nested model: mixed precision needs a flat model "
                              "(inline it, e.g. build the functional graph without sub-models)")
    is_compute = {layer.name: mac_rule(layer) is not None for layer in model.layers}
    order = {id(x): i for i, x in enumerate(model.layers)}
    roots: Dict[str, Optional[str]] = {}

    def root_of(layer) -> Optional[str]:
        """The compute layer (or SELF/None) whose output reaches ``layer``'s input."""
        inbound = _inbound(layer)
        if is_compute.get(layer.name):   # self-attention reads one tensor as query and value
            inbound = list({id(x): x for x in inbound}.values())
        if len(inbound) != 1:
            return None
        prev = inbound[0]
        if type(prev).__name__ == "InputLayer":
            return SELF
        if is_compute.get(prev.name):
            return prev.name
        if len(_inbound(prev)) != 1:
            return None
        if prev.name not in roots:
            roots[prev.name] = root_of(prev)
        return roots[prev.name]

    out = []
    chains: Dict[str, List[str]] = {}
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        if not is_compute[layer.name]:
            if len(_inbound(layer)) == 1:
                root = roots.setdefault(layer.name, root_of(layer))
                if root not in (None, SELF):
                    chains.setdefault(root, []).append(layer.name)
            continue
        src = SELF if own_inputs else root_of(layer)
        out.append(ComputeLayer(layer.name, layer, _shape(layer.input_shape, first=True), _shape(layer.output_shape),
                                source=layer.name if src == SELF else src, chain=[],
                                read_by=_read_by(layer, order, is_compute) if own_inputs else []))
    for c in out:
        c.chain = chains.get(c.name, [])
    return out
