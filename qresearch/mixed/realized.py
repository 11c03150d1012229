"""The widths a QAT model really has: read from its quantizers, not from the scheme that asked.

For every quantized compute layer: the weight width (its kernel quantizer), the input width (the
nearest quantizer upstream: a ``QuantizeInput``, a ``QuantizeLike``'s source or a wrapper's output quantizer,
through layers that have none) and the output width (its own output quantizer or, if fused away, the first one
downstream along a single path). Float tensors count 32 bits. ``qat_cost`` then prices the float
model at exactly those widths: the numbers ``describe``/``result.json`` should show for a run.
"""
from __future__ import annotations

from typing import Dict, Optional

from qresearch.mixed.cost import FLOAT_BITS, Widths, cost
from qresearch.mixed.graph import compute_layers


def _bits(q) -> Optional[int]:
    if q is None:
        return None
    return getattr(q, "bits", None) or getattr(q, "num_bits", None)


def _output_quantizer(layer):
    from qresearch.schemes import QuantizeInput, QuantizeLike, QuantizeWrapper

    if isinstance(layer, QuantizeInput):
        return layer.quantizer
    if isinstance(layer, QuantizeWrapper):
        return layer.quantize_config.output
    if isinstance(layer, QuantizeLike):   # another quantizer's grid (an Embedding's table)
        return layer.source_quantizer
    return None


def _inbound(layer):
    if not layer.inbound_nodes:
        return []
    inbound = layer.inbound_nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _in_bits(layer) -> int:
    prev = list({id(x): x for x in _inbound(layer)}.values())   # self-attention reads one tensor twice
    while len(prev) == 1:
        bits = _bits(_output_quantizer(prev[0]))
        if bits is not None:
            return int(bits)
        prev = _inbound(prev[0])
    return FLOAT_BITS


def _out_bits(layer) -> int:
    while True:
        bits = _bits(_output_quantizer(layer))
        if bits is not None:
            return int(bits)
        consumers = [n.outbound_layer for n in layer.outbound_nodes]
        if len(consumers) != 1:
            return FLOAT_BITS
        layer = consumers[0]


def qat_widths(qat_model) -> Dict[str, Widths]:
    """``{compute layer name: Widths(w, a_in, a_out)}`` of a model built by ``qresearch.quantize``."""
    from qresearch.schemes import QuantizeWrapper

    out = {}
    for layer in qat_model.layers:
        if not isinstance(layer, QuantizeWrapper):
            continue
        ws = [_bits(q) for q in layer.quantize_config.weights.values() if q is not None]
        w = int(max(ws)) if ws else FLOAT_BITS
        out[layer.layer.name] = Widths(w, _in_bits(layer), _out_bits(layer))
    return out


def qat_cost(float_model, qat_model, table=None):
    """The cost model of ``float_model`` at the widths ``qat_model`` realises (float layers at 32 bits).
    A SeparableConv split in two by the rewrite is priced at its pointwise part's widths."""
    widths = qat_widths(qat_model)
    for c in compute_layers(float_model):
        if c.name not in widths and f"{c.name}_pointwise" in widths:
            dw, pw = widths[f"{c.name}_depthwise"], widths[f"{c.name}_pointwise"]
            widths[c.name] = Widths(max(dw.w, pw.w), dw.a_in, pw.a_out)
    names = {c.name for c in compute_layers(float_model)}
    choice = {n: widths.get(n, Widths(FLOAT_BITS, FLOAT_BITS, FLOAT_BITS)) for n in names}
    return cost(float_model, choice, table=table)
