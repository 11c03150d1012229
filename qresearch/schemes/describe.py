"""``describe``: what a QAT model quantizes, what stays float and why, and its weight memory."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from qresearch.kernels import accumulator_stats
from qresearch.schemes import layers as L
from qresearch.schemes.annotate import ConfigWrapper
from qresearch.schemes.wrappers import QuantizeInput, QuantizeLike, QuantizeWrapper, get_attr


def _short(var) -> str:
    return var.name.split("/")[-1].split(":")[0]


def _qinfo(q) -> Dict[str, Any]:
    if q is None:
        return None
    # tfmot's own quantizers (a user's QuantizeConfig) say num_bits/per_axis
    bits = getattr(q, "bits", None) or getattr(q, "num_bits", None)
    d = {"quantizer": getattr(q, "registry_name", "") or type(q).__name__, "bits": bits}
    if getattr(q, "per_channel", False) or getattr(q, "per_axis", False):
        d["per_channel"] = True
    if hasattr(q, "range_min") and type(q).__name__ == "FixedRangeQuantizer":
        d["fixed_range"] = [q.range_min, q.range_max]
    return d


def _fmt(d) -> str:
    if d is None:
        return "-"
    s = f"{d['quantizer']}{d['bits'] if d['bits'] is not None else '?'}"
    if d.get("per_channel"):
        s += "/ch"
    if d.get("fixed_range"):
        s += f"[{d['fixed_range'][0]:g},{d['fixed_range'][1]:g}]"
    if d.get("fixed"):
        s += " (not trained)"
    return s


class Report(dict):
    """A dict with a readable ``str``."""

    def __str__(self) -> str:
        lines = [f"{'layer':32} {'class':22} {'weights':34} {'act-in':12} {'output':18}"]
        for row in self["layers"]:
            w = ", ".join(f"{k}:{_fmt(v)}" for k, v in row["weights"].items()) or "-"
            a = ", ".join(f"{k}:{_fmt(v.get('pre') or v.get('post'))}" for k, v in row["activations"].items()) or "-"
            extra = []
            if row.get("folded_bn"):
                extra.append(f"BN {row['folded_bn']} folded" + (" (trained with batch statistics)"
                                                               if row.get("bn_batch_stats") else ""))
            if row.get("bn_affine"):
                extra.append("unfoldable BN as a per-channel affine (int8 DEPTHWISE_CONV_2D 1x1)")
            if row.get("output_shared_with"):
                extra.append(f"output range shared with {row['output_shared_with']}")
            extra += [f"{k} as the runtime's two ops, the tensor between on {_fmt(v['inner'])}"
                      for k, v in row["activations"].items() if v.get("inner")]
            if row.get("inner"):
                extra.append(f"two ops, the tensor between on {_fmt(row['inner'])}")
            lines.append(f"{row['name']:32} {row['class']:22} {w:34} {a:12} {_fmt(row['output']):18} "
                         + "; ".join(extra))
        if self["float_layers"]:
            lines.append("float layers:")
            for row in self["float_layers"]:
                lines.append(f"  {row['name']:30} {row['class']:22} {row['reason']}")
        m = self["memory"]
        lines.append(f"weight memory: {m['quantized_bits']} bits vs {m['float32_bits']} bits float32 "
                     f"({m['ratio']:.3f}x, {m['quantized_bytes']:.0f} B vs {m['float32_bytes']:.0f} B)")
        # sections added by parts above the schemes (qresearch.mixed.describe: the cost table)
        lines.extend(str(text) for text in self.get("sections", {}).values())
        return "\n".join(lines)


def describe(qat_model, print_report: bool = False, data=None) -> Report:
    """Every layer with its quantizers and bit widths, the float layers and why, and weight memory.
    ``data`` (inputs): with a model that emulates integer kernels (a target's pipeline, tflite_int8), also
    each layer's accumulators on those inputs (``accumulators``: max |acc|, bits needed, overflow fraction)."""
    info = getattr(qat_model, "qresearch_info", {}) or {}
    reasons = dict(info.get("float_layers", {}))
    rows: List[Dict[str, Any]] = []
    floats: List[Dict[str, Any]] = []
    qbits = fbits = 0
    for layer in qat_model.layers:
        if isinstance(layer, QuantizeWrapper):
            cfg = layer.quantize_config
            inner = layer.layer
            row = {"name": inner.name, "class": type(inner).__name__, "wrapper": layer.name,
                   "kind": cfg.info.get("kind"),
                   "weights": {k: _qinfo(q) for k, q in cfg.weights.items()},
                   "activations": {k: {w: _qinfo(q) for w, q in v.items() if q is not None}
                                   for k, v in cfg.activations.items()},
                   "output": _qinfo(cfg.output)}
            for key in ("folded_bn", "bn_batch_stats", "bn_affine", "output_shared_with", "overrides"):
                if key in cfg.info:
                    row[key] = cfg.info[key]
            if cfg.inner is not None:
                row["inner"] = _qinfo(cfg.inner)
            rows.append(row)
            by_var = {}
            for attr, q in cfg.weights.items():
                try:
                    by_var[id(get_attr(inner, attr))] = q
                except AttributeError:
                    pass
            for var in inner.weights:
                n = int(np.prod(var.shape))
                q = by_var.get(id(var))
                qbits += n * (q.bits if q is not None else 32)
                fbits += n * 32
            continue
        if isinstance(layer, ConfigWrapper):
            row, q_bits, f_bits = _user_config_row(layer)
            rows.append(row)
            qbits += q_bits
            fbits += f_bits
            continue
        if isinstance(layer, QuantizeInput):
            out = _qinfo(layer.quantizer)
            if out is not None and layer.weights and not layer.trainable:
                out["fixed"] = True   # built non-trainable (train_input_quantizers): no gradient reaches its parameters
            rows.append({"name": layer.name, "class": "QuantizeInput", "kind": "input", "weights": {},
                         "activations": {}, "output": out})
            continue
        if isinstance(layer, QuantizeLike):
            source = layer._source
            rows.append({"name": layer.name, "class": "QuantizeLike", "kind": "same_grid", "weights": {},
                         "activations": {}, "output": _qinfo(source[0]) if source else None,
                         "output_shared_with": layer.source_name})
            continue
        if type(layer).__name__ == "InputLayer":
            continue
        n = sum(int(np.prod(v.shape)) for v in layer.weights)
        qbits += n * 32
        fbits += n * 32
        reason = reasons.get(layer.name)
        if reason is None:
            spec = L.layer_spec(layer)
            if spec is None:
                reason = "no layer config"
            elif spec.kind_of(layer) == "passthrough":
                reason = "pass-through: shares its input's range (no quantizer needed)"
            else:
                reason = "not quantized by this scheme"
        floats.append({"name": layer.name, "class": type(layer).__name__, "reason": reason})
    for name, reason in reasons.items():
        if reason.startswith("folded into") and not any(f["name"] == name for f in floats):
            floats.append({"name": name, "class": "BatchNormalization", "reason": reason})
    memory = {"quantized_bits": int(qbits), "float32_bits": int(fbits),
              "quantized_bytes": qbits / 8.0, "float32_bytes": fbits / 8.0,
              "ratio": (qbits / fbits) if fbits else 1.0}
    report = Report(layers=rows, float_layers=floats, memory=memory,
                    scheme=info.get("scheme"), hardware=info.get("hardware"))
    if data is not None and info.get("kernels"):
        report["accumulators"] = accumulator_stats(qat_model, data)
        report.setdefault("sections", {})["accumulators"] = _accumulator_section(report["accumulators"],
                                                                                 info["kernels"])
    if print_report:
        print(report)
    return report


def _accumulator_section(stats, kernels: str) -> str:
    lines = [f"accumulators ({kernels} kernels; on the data given):",
             f"  {'layer':<28} {'width':>5} {'max |acc|':>12} {'bits needed':>11} {'overflowing':>12}"]
    for name, s in stats.items():
        lines.append(f"  {name:<28} {s['accumulator_bits']:>5} {s['max_abs']:>12} {s['bits_needed']:>11} "
                     f"{100 * s['overflow_fraction']:>11.2f}%")
    return "\n".join(lines)


def _user_config_row(layer):
    """The row of a layer quantized by a user's QuantizeConfig, and its weight bits (quantized, float32).
    A quantizer that does not say its bit width counts as 32 bits."""
    inner, cfg = layer.layer, layer.quantize_config
    row = {"name": inner.name, "class": type(inner).__name__, "wrapper": layer.name, "kind": "user_config",
           "quantize_config": type(cfg).__name__,
           "weights": {_short(w): _qinfo(q) for w, q, _ in getattr(layer, "_weight_vars", [])},
           "activations": {f"activation{i or ''}": {"post": _qinfo(a.quantizer)}
                           for i, a in enumerate(getattr(layer, "_quantize_activations", []))},
           "output": _qinfo(layer._output_quantizers[0]) if getattr(layer, "_output_quantizers", None) else None}
    by_var = {id(w): q for w, q, _ in getattr(layer, "_weight_vars", [])}
    q_bits = f_bits = 0
    for var in inner.weights:
        n = int(np.prod(var.shape))
        q = by_var.get(id(var))
        q_bits += n * ((_qinfo(q)["bits"] or 32) if q is not None else 32)
        f_bits += n * 32
    return row, q_bits, f_bits


def quantized_weights(qat_model) -> Dict[str, Dict[str, np.ndarray]]:
    """``{layer name: {weight attribute: fake-quantized value}}`` as inference would use them."""
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for layer in qat_model.layers:
        if isinstance(layer, ConfigWrapper) and layer.built:  # keyed by the weight's own name
            out[layer.layer.name] = {_short(w): np.asarray(q(w, False, weights=v)) for w, q, v in layer._weight_vars}
            continue
        if not isinstance(layer, QuantizeWrapper) or not layer.built:
            continue
        values = {}
        for attr, (weight, quantizer, qvars) in zip(layer.quantize_config.weights, layer._live_weights()):
            values[attr] = np.asarray(quantizer(weight, False, weights=qvars))
        if values:
            out[layer.layer.name] = values
    return out
