"""Cost model: per layer MACs, weight memory, activation memory and BOPs of a float tf_keras model
under a bit assignment.

Definitions (per inference of one sample, batch 1):

- MACs: multiply-accumulates of the layer, from its config and its input/output shapes, by a rule
  registered per layer class in ``MAC_RULES`` (below, each rule states its formula). An ``Embedding`` is a
  layer with a rule and no MACs: a lookup, whose table is weight memory at the layer's width. A recurrent layer
  (LSTM, GRU, SimpleRNN, Bidirectional of one) counts its cell's products over a fixed sequence length; the gate
  arithmetic (element-wise) is not counted. A MultiHeadAttention counts its four projections; its scores and
  weighted sum (activations times activations, float in the simulation) are not counted.
- weight memory [bits] = (quantized weight elements) x w_bits + (bias elements) x 32.
  The bias stays 32-bit (it is added in the int32 accumulator: TFLite int8 spec, Jacob et al.
  2018 §2.4). Parameters of non-compute layers (BatchNormalization, ...) are not counted:
  a folded BN lives in the conv's kernel and bias.
- activation memory [bits] = output elements x a_out bits (the layer's output tensor).
- BOPs = MACs x w_bits x a_in_bits (Baskin et al., "UNIQ", 2021, Eq. 10; van Baalen et al.,
  "Bayesian Bits", NeurIPS 2020, §4; HAWQ-V3, Yao et al. ICML 2021, §3.4), a_in = the width of
  the layer's *input* activation. (UNIQ's BOPs also count the accumulator's additions; like
  Bayesian Bits and HAWQ-V3 we count the multiplications' bit products only.)

A target's per-op cost table (energy or latency of one MAC at a (w, a) width pair; the ``costs:`` key
of its YAML, ``qresearch.hardware.costs.CostTable``) adds ``table_cost`` next to the BOPs proxy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from qresearch.errors import ConfigError
from qresearch.hardware.costs import CostTable
from qresearch.registry import Registry

FLOAT_BITS = 32
BIAS_BITS = 32


@dataclasses.dataclass(frozen=True)
class Part:
    """One multiply stage of a layer (a SeparableConv has two)."""

    name: str
    macs: int
    weights: Tuple[str, ...]     # attributes quantized at w_bits
    bias: str = "bias"           # the attribute holding the bias it adds (32-bit), if the layer has one


@dataclasses.dataclass(frozen=True)
class MacRule:
    parts: Callable[[Any, Tuple, Tuple], List[Part]]


def _prod(xs) -> int:
    return int(np.prod([int(v) for v in xs])) if len(xs) else 1


def _channels_axis(layer) -> int:
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


def _out_elements(out_shape) -> int:
    return _prod(out_shape[1:])


def _dense(layer, in_shape, out_shape):
    # every output element: in_features products (leading dims of a >2-D input are independent rows)
    return [Part("dense", _out_elements(out_shape) * int(in_shape[-1]), ("kernel",))]


def _conv(layer, in_shape, out_shape):
    # every output element: kernel volume x input channels per group
    c_in = int(in_shape[_channels_axis(layer)])
    groups = int(getattr(layer, "groups", 1) or 1)
    return [Part("conv", _out_elements(out_shape) * _prod(layer.kernel_size) * (c_in // groups), ("kernel",))]


def _depthwise(layer, in_shape, out_shape):
    # every output element (C_in x depth_multiplier channels) reads one input channel's window
    return [Part("depthwise", _out_elements(out_shape) * _prod(layer.kernel_size), ("depthwise_kernel",))]


def _separable(layer, in_shape, out_shape):
    # depthwise stage at the output's spatial size (the stride is applied there), then a 1x1 pointwise
    axis = _channels_axis(layer)
    c_in, c_out = int(in_shape[axis]), int(out_shape[axis])
    mid = c_in * int(layer.depth_multiplier)
    spatial = _out_elements(out_shape) // c_out
    return [Part("depthwise", spatial * mid * _prod(layer.kernel_size), ("depthwise_kernel",)),
            Part("pointwise", spatial * c_out * mid, ("pointwise_kernel",))]


def _transpose(layer, in_shape, out_shape):
    # every input element scatters its value times a kernel window into C_out outputs
    axis = _channels_axis(layer)
    c_out = int(out_shape[axis])
    groups = int(getattr(layer, "groups", 1) or 1)
    return [Part("conv_transpose", _out_elements(in_shape) * _prod(layer.kernel_size) * (c_out // groups),
                 ("kernel",))]


#: multiply stages per step of a recurrent cell: one product of the input and one of the state per gate
_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def _positions(layer, shape) -> int:
    """How many vectors a sequence/image tensor holds (all but its batch and feature axes)."""
    if any(d is None for d in shape[1:-1]):
        raise ConfigError(f"layer {layer.name!r} ({type(layer).__name__}) reads inputs of unknown length: the "
                          "cost model prices a fixed length. Fix: give the model's Input a length, e.g. "
                          "keras.Input((T, features))")
    return _prod(shape[1:-1])


def _recurrent(layer, in_shape, out_shape, prefix=""):
    # every step: gates x units x (input features + units), the cell's kernel and recurrent kernel
    cell = layer.cell
    units, gates = int(cell.units), _GATES[type(layer).__name__]
    macs = _positions(layer, in_shape) * gates * units * (int(in_shape[-1]) + units)
    return [Part(f"{prefix}recurrent", macs, (f"{prefix}cell.kernel", f"{prefix}cell.recurrent_kernel"),
                 bias=f"{prefix}cell.bias")]


def _bidirectional(layer, in_shape, out_shape):
    return [part for d in ("forward_layer", "backward_layer")
            for part in _recurrent(getattr(layer, d), in_shape, out_shape, prefix=f"{d}.")]


def _attention(layer, in_shape, out_shape):
    # the four projections: each position of the query (the value, for key and value) times the kernel; the
    # scores and the weighted sum multiply activations by activations (float here) and are not counted
    query, value = tuple(layer._query_shape), tuple(layer._value_shape)
    key = tuple(layer._key_shape) if getattr(layer, "_key_shape", None) is not None else value
    parts = []
    for name, shape in (("query", query), ("key", key), ("value", value), ("output", query)):
        dense = getattr(layer, f"_{name}_dense")
        parts.append(Part(name, _positions(layer, shape) * _prod(dense.kernel.shape), (f"_{name}_dense.kernel",),
                          bias=f"_{name}_dense.bias"))
    return parts


def _lookup(layer, in_shape, out_shape):
    # a table lookup multiplies nothing; its table is weight memory at the layer's width (often most of a token
    # model's weights), and its output an activation at that width (it stays on the table's grid)
    return [Part("lookup", 0, ("embeddings",))]


MAC_RULES = Registry("MAC rule")


def register_mac_rule(cls_name: str, parts: Callable[[Any, Tuple, Tuple], List[Part]]) -> None:
    """Register how a layer class counts MACs: ``parts(layer, input_shape, output_shape) -> [Part]``."""
    MAC_RULES.register(cls_name, MacRule(parts), overwrite=True)


for _name, _rule in (("Dense", _dense), ("Conv1D", _conv), ("Conv2D", _conv), ("Conv3D", _conv),
                     ("DepthwiseConv1D", _depthwise), ("DepthwiseConv2D", _depthwise),
                     ("SeparableConv1D", _separable), ("SeparableConv2D", _separable),
                     ("Conv1DTranspose", _transpose), ("Conv2DTranspose", _transpose),
                     ("Conv3DTranspose", _transpose), ("Embedding", _lookup), ("LSTM", _recurrent),
                     ("GRU", _recurrent), ("SimpleRNN", _recurrent), ("Bidirectional", _bidirectional),
                     ("MultiHeadAttention", _attention)):
    register_mac_rule(_name, _rule)


def mac_rule(layer) -> Optional[MacRule]:
    """The rule of the layer's exact class (a subclass registers its own: its MACs may differ)."""
    name = type(layer).__name__
    return MAC_RULES.get(name) if name in MAC_RULES else None


# ------------------------------------------------------------------ widths
@dataclasses.dataclass(frozen=True)
class Widths:
    """A compute layer's bit widths: weights, input activations, output activations (32 = float)."""

    w: int
    a_in: int
    a_out: int


def resolve_widths(layers, choice: Mapping[str, int], base_bits: int = 8,
                   own_inputs: bool = False) -> Dict[str, Widths]:
    """Explicit widths from a per-layer choice ``{name: b}`` (weights and output activations at b),
    the input width from each layer's source (``qresearch.mixed.graph``); a layer missing from
    ``choice`` is at ``base_bits``; an input from a merge is at ``base_bits``. ``own_inputs``
    (``quantize_ops: inputs``): inputs at the layer's own b, outputs at their reader's b (``graph.read_by``) or float."""
    b = {c.name: int(choice.get(c.name, base_bits)) for c in layers}
    if own_inputs:
        def stored(c):  # one width for every reader: one shared quantizer; else the tensor stays float
            widths = {b[r] for r in c.read_by}
            return widths.pop() if len(widths) == 1 else FLOAT_BITS
        return {c.name: Widths(b[c.name], b[c.name], stored(c)) for c in layers}
    return {c.name: Widths(b[c.name], b[c.source] if c.source is not None else int(base_bits), b[c.name])
            for c in layers}


# ------------------------------------------------------------------ the table
def _param_count(layer, attr) -> int:
    from qresearch.schemes.attrs import get_attr   # dotted paths: a recurrent cell's kernels

    try:
        var = get_attr(layer, attr)
    except AttributeError:
        var = None
    return 0 if var is None else _prod(var.shape)


def layer_rows(model, widths: Mapping[str, Widths], layers=None) -> List[Dict[str, Any]]:
    """One row per compute layer: class, MACs, parameters, weight/activation memory and BOPs."""
    from qresearch.mixed.graph import compute_layers

    layers = compute_layers(model) if layers is None else layers
    rows = []
    for c in layers:
        wd = widths.get(c.name) or Widths(FLOAT_BITS, FLOAT_BITS, FLOAT_BITS)
        parts = mac_rule(c.layer).parts(c.layer, c.input_shape, c.output_shape)
        macs = sum(p.macs for p in parts)
        qparams = sum(_param_count(c.layer, a) for p in parts for a in p.weights)
        bias = sum(_param_count(c.layer, b) for b in dict.fromkeys(p.bias for p in parts))   # None: no bias
        out_elems = _out_elements(c.output_shape)
        rows.append({
            "name": c.name, "class": type(c.layer).__name__, "source": c.source,
            "parts": {p.name: p.macs for p in parts},
            "macs": macs, "params": qparams, "bias_params": bias,
            "w_bits": wd.w, "a_in_bits": wd.a_in, "a_out_bits": wd.a_out,
            "out_elements": out_elems,
            "weight_bits": qparams * wd.w + bias * BIAS_BITS,
            "activation_bits": out_elems * wd.a_out,
            "bops": macs * wd.w * wd.a_in,
        })
    return rows


TOTAL_KEYS = ("macs", "params", "bias_params", "weight_bits", "activation_bits", "bops")


def totals(rows: List[Mapping[str, Any]]) -> Dict[str, int]:
    """Sums over the rows; ``activation_peak_bits`` is the largest single output tensor."""
    out = {k: int(sum(r[k] for r in rows)) for k in TOTAL_KEYS}
    out["activation_peak_bits"] = int(max((r["activation_bits"] for r in rows), default=0))
    return out


def cost(model, choice: Optional[Mapping[str, int]] = None, base_bits: int = 8, table=None,
         own_inputs: bool = False) -> Dict[str, Any]:
    """``{"layers": rows, "totals": {...}}`` for ``choice`` = ``{layer: bits}`` (missing: ``base_bits``).
    ``own_inputs``: every layer reads its input at its own width (a scheme with ``quantize_ops: inputs``;
    ``qresearch.mixed.graph``).

    ``choice`` may also map a layer to ``Widths`` (explicit weight/input/output widths).
    With ``table`` (a ``CostTable``, its dict, or a ``Target``: its ``costs``, if any), each row and the
    totals also carry ``table_cost``.
    """
    from qresearch.mixed.graph import compute_layers

    layers = compute_layers(model, own_inputs)
    choice = dict(choice or {})
    explicit = {k: v for k, v in choice.items() if isinstance(v, Widths)}
    widths = resolve_widths(layers, {k: v for k, v in choice.items() if not isinstance(v, Widths)}, base_bits,
                            own_inputs)
    widths.update(explicit)
    rows = layer_rows(model, widths, layers)
    out = {"layers": rows, "totals": totals(rows)}
    ct = CostTable.of(table)
    if ct is not None:
        for r in rows:
            r["table_cost"] = ct.layer_cost(r)
        out["totals"]["table_cost"] = float(sum(r["table_cost"] for r in rows))
        out["totals"]["table_unit"] = ct.unit
    return out


def format_table(report: Mapping[str, Any]) -> str:
    """The per-layer table and totals as text (MACs, kbit of weights/activations, MBOPs)."""
    lines = [f"{'layer':24} {'class':18} {'W':>3} {'Ain':>4} {'Aout':>4} {'MACs':>10} {'weights kbit':>13} "
             f"{'acts kbit':>10} {'MBOPs':>10}"]
    for r in report["layers"]:
        lines.append(f"{r['name']:24} {r['class']:18} {r['w_bits']:>3} {r['a_in_bits']:>4} {r['a_out_bits']:>4} "
                     f"{r['macs']:>10} {r['weight_bits'] / 1e3:>13.2f} {r['activation_bits'] / 1e3:>10.2f} "
                     f"{r['bops'] / 1e6:>10.3f}")
    t = report["totals"]
    lines.append(f"{'total':24} {'':18} {'':>3} {'':>4} {'':>4} {t['macs']:>10} {t['weight_bits'] / 1e3:>13.2f} "
                 f"{t['activation_bits'] / 1e3:>10.2f} {t['bops'] / 1e6:>10.3f}")
    lines.append("weight memory counts the bias at 32 bits; activation memory is each output tensor (batch 1)")
    return "\n".join(lines)


