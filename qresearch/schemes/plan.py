"""The plan the rewrite builds from: per-layer decisions (``LayerPlan``) over the flattened graph
(``ModelPlan``). The passes in ``passes.py`` fill it in, one decision each; ``build.py`` reads it."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from qresearch.schemes import layers as L
from qresearch.schemes.annotate import Annotations
from qresearch.schemes.graph import GNode, Graph
from qresearch.schemes.spec import SchemeSpec, layer_matches


class LayerPlan:
    """Decisions for one node of the graph."""

    def __init__(self, node: GNode):
        self.node = node
        self.spec: Optional[L.LayerSpec] = None
        self.kind = "float"
        self.float_reason: Optional[str] = None
        self.folded_bn = None                         # the BatchNormalization folded into this layer
        self.batch_stats_fold = False                 # ... trained with batch statistics (BatchStatsFold)
        self.affine = False                           # an unfoldable BN deployed as a ChannelAffine
        self.removed = False                          # a BN folded away
        self.weights_spec = None
        self.acts_spec = None
        self.output = False                           # an output quantizer after the layer
        self.fixed_name: Optional[str] = None         # fixed output range (softmax, sigmoid, tanh, ...)
        self.overrides: List[str] = []
        self.skipped_kind: Optional[str] = None       # kind of a skipped layer (first/last detection)
        self.nonneg_out = False                       # output known >= 0 (unsigned activation grid)
        self.nonneg_in: Dict[str, bool] = {}
        self.concat_shared: Optional[str] = None      # output range given to this concat
        self.fused_with: Optional[str] = None         # the activation this layer's output fuses into
        self.user_config = None                       # a tfmot QuantizeConfig given with quantize_annotate_layer
        self.input_spec = None                        # the quantizer spec for this layer's float inputs, or None

    @property
    def layer(self):
        return self.node.layer

    @property
    def quantized(self) -> bool:
        return self.spec is not None and (self.weights_spec is not None or self.acts_spec is not None)

    @property
    def has_acts(self) -> bool:
        return self.spec is not None and not self.removed and self.acts_spec is not None

    def matches(self, patterns) -> bool:
        """A pattern matches the layer, or the user's layer it was split from (SeparableConv)."""
        layers = [self.layer] + ([self.node.origin] if self.node.origin is not None else [])
        return any(layer_matches(s, layer) for s in patterns for layer in layers)


class ModelPlan:
    """The graph, the scheme and every layer's plan, with the graph's indices the passes share."""

    def __init__(self, graph: Graph, scheme: SchemeSpec, annotations: Optional[Annotations] = None,
                 input_nonneg: Optional[Dict[str, bool]] = None):
        self.graph = graph
        self.scheme = scheme
        self.annotations = annotations or Annotations()
        # model input ref -> known >= 0 (``input_sign``: from calibration data, or forced); absent: signed
        self.input_nonneg: Dict[str, bool] = dict(input_nonneg or {})
        self.layers: List[LayerPlan] = []
        self.calls: Dict[int, int] = {}               # id(layer) -> how many nodes call it (shared layers)
        self.producers: Dict[str, LayerPlan] = {}
        self.consumers: Dict[str, List[LayerPlan]] = {}
        self.outputs: set = set()

    def index(self) -> None:
        """(Re)build the indices after the node list or the wiring changed."""
        self.calls = {}
        for p in self.layers:
            self.calls[id(p.layer)] = self.calls.get(id(p.layer), 0) + 1
        live = [p for p in self.layers if not p.removed]
        self.producers = {r: p for p in self.layers for r in p.node.out_refs}
        self.consumers = {}
        for p in live:
            for r in dict.fromkeys(p.node.in_refs):
                self.consumers.setdefault(r, []).append(p)
        self.outputs = set(self.graph.output_refs)

    def sole_consumer(self, p: LayerPlan) -> Optional[LayerPlan]:
        """The one layer reading ``p``'s one output, unless that output is also a model output."""
        outs = p.node.out_refs
        if len(outs) != 1 or outs[0] in self.outputs:
            return None
        cs = self.consumers.get(outs[0], [])
        return cs[0] if len(cs) == 1 else None

    def float_layers(self) -> Dict[str, Any]:
        return {p.layer.name: p.float_reason for p in self.layers if p.float_reason}
