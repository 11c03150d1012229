"""Structural checks of a converted ``.tflite`` model against a TFLite target.

Checks (tflite-int8-spec.md §1, §3, §5, §10.3):
- every op's tensors are integer: int8/int32 (int8 runtime) or int16/int8/int32/int64 (16x8);
- no QUANTIZE/DEQUANTIZE except at the model's edges (an int->int QUANTIZE inside is a
  requantization the simulation did not model), apart from a QUANTIZE read only by CONCATENATIONs: the
  converter's requantization of an input on another grid, which the simulation rounds at the concatenation's
  range (and the integer emulation computes as LiteRT does, ``kernels.tflite_ops.concatenation``);
- weights of CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED/TRANSPOSE_CONV: zero point 0, narrow range
  when the target asks, granularity the target allows for that layer kind;
- bias scale = input scale x weight scale;
- fixed-output ops (SOFTMAX, LOGISTIC, TANH, ...) carry the target's (scale, zero_point);
- scale-preserving ops (CONCATENATION, pooling, reshapes) keep their input's (scale, zero_point);
- 16x8: every int16 activation has zero point 0.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List

import numpy as np

from qresearch.hardware.runtimes import FIXED_OUTPUT_OPS
from qresearch.kernels.grid import NARROWEST

# TFLite ops with int8 weights: (the target layer kind whose granularity applies, weight input, bias input).
# The target kinds are LayerSpec.target_kind; a TFLite op is not a Keras layer, so this is TFLite's table.
WEIGHT_OPS = {"CONV_2D": ("conv", 1, 2), "DEPTHWISE_CONV_2D": ("conv", 1, 2),
              "FULLY_CONNECTED": ("dense", 1, 2), "TRANSPOSE_CONV": ("conv_transpose", 1, 3)}
SAME_OPS = {"CONCATENATION", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "SQUEEZE", "TRANSPOSE", "PAD",
            "PADV2", "SLICE", "STRIDED_SLICE", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "EXPAND_DIMS"}
# Inputs that are not activations (shapes, paddings, axes, ...): only input 0 (and all inputs for
# CONCATENATION) carry the activation's quantization.
EDGE_OPS = {"QUANTIZE", "DEQUANTIZE"}


def _q(t) -> tuple:
    p = t["quantization_parameters"]
    return np.asarray(p["scales"], np.float64), np.asarray(p["zero_points"], np.int64), p["quantized_dimension"]


def _allowed_dtypes(target):
    return {np.dtype(d) for d in target.runtime_facts.tensor_dtypes}


def inspect_model(tflite_model: bytes, target) -> Dict[str, Any]:
    """Return ``{"integer_only": bool, "issues": [str], "ops": {op: count}}`` for ``tflite_model``."""
    from qresearch.hardware.deploy import make_interpreter
    from qresearch.hardware.registry import get

    target = get(target)
    interp = make_interpreter(tflite_model)
    interp.allocate_tensors()
    ops = interp._get_ops_details()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    graph_inputs = {d["index"] for d in interp.get_input_details()}
    graph_outputs = {d["index"] for d in interp.get_output_details()}
    allowed = _allowed_dtypes(target)
    act_dtype = np.dtype(target.runtime_facts.activation_dtype)
    issues: List[str] = []
    float_ops = 0
    hist = Counter(op["op_name"] for op in ops)
    readers: Dict[int, List[str]] = {}   # tensor -> the ops reading it
    producers: Dict[int, str] = {}       # tensor -> the op writing it
    for op in ops:
        for i in op["inputs"]:
            readers.setdefault(i, []).append(op["op_name"])
        for o in op["outputs"]:
            producers[o] = op["op_name"]

    def name(i):
        return tensors[i]["name"] if i in tensors else f"#{i}"

    for op in ops:
        kind = op["op_name"]
        ins = [i for i in op["inputs"] if i >= 0]
        outs = [i for i in op["outputs"] if i >= 0]
        where = f"op {op['index']} {kind} -> {name(outs[0]) if outs else '?'}"
        bad = sorted({np.dtype(tensors[i]["dtype"]).name for i in ins + outs
                      if i in tensors and np.dtype(tensors[i]["dtype"]) not in allowed})
        if bad:
            float_ops += 1
            issues.append(f"{where}: non-integer tensors ({', '.join(bad)}); allowed "
                          f"{sorted(d.name for d in allowed)}")
        if kind == "QUANTIZE" and not all(i in graph_inputs for i in ins) and not _into_concatenation(outs, readers) \
                and not _concatenation_into_reshape(ins, outs, producers, readers):
            issues.append(f"{where}: QUANTIZE inside the graph (requantization from {name(ins[0])!r}): "
                          "neighbouring quantizers disagree on (scale, zero_point), the simulation did not "
                          "model this extra rounding")
        if kind == "DEQUANTIZE" and not all(o in graph_outputs for o in outs):
            const = all(tensors[i].get("shape") is not None and _is_constant(interp, i) for i in ins)
            issues.append(f"{where}: DEQUANTIZE inside the graph" +
                          (" (float weights kept: an unquantized layer)" if const else ""))
        if kind in WEIGHT_OPS:
            issues += _check_weights(interp, tensors, op, kind, where, target)
        if kind in FIXED_OUTPUT_OPS and outs:
            fixed = target.fixed_output_params.get(FIXED_OUTPUT_OPS[kind])
            s, z, _ = _q(tensors[outs[0]])
            if fixed is not None and len(s) == 1:
                if abs(s[0] - fixed.scale) > 1e-6 * fixed.scale or int(z[0]) != fixed.zero_point:
                    issues.append(f"{where}: output (scale {s[0]:.8g}, zero_point {int(z[0])}) differs from the "
                                  f"fixed ({fixed.scale:.8g}, {fixed.zero_point}) of target {target.name}")
        if kind in SAME_OPS and outs:
            s_o, z_o, _ = _q(tensors[outs[0]])
            data_ins = ins if kind == "CONCATENATION" else ins[:1]
            for i in data_ins:
                if i not in tensors or np.dtype(tensors[i]["dtype"]) != act_dtype:
                    continue
                s_i, z_i, _ = _q(tensors[i])
                if len(s_i) == 1 and len(s_o) == 1 and (abs(s_i[0] - s_o[0]) > 1e-6 * s_o[0] or z_i[0] != z_o[0]):
                    issues.append(f"{where}: input {name(i)!r} (scale {s_i[0]:.6g}, zp {int(z_i[0])}) differs "
                                  f"from the output (scale {s_o[0]:.6g}, zp {int(z_o[0])}); {kind} needs equal "
                                  "parameters")
        if target.runtime_facts.symmetric_activations:
            for i in ins + outs:
                t = tensors.get(i)
                if t is not None and np.dtype(t["dtype"]) == act_dtype:
                    _, z, _ = _q(t)
                    if np.any(z != 0):
                        issues.append(f"{where}: int16 tensor {name(i)!r} has zero point {z.tolist()} (16x8 "
                                      "needs 0)")
    for d in interp.get_input_details() + interp.get_output_details():
        if not np.issubdtype(d["dtype"], np.integer):
            float_ops += 1
            issues.append(f"model edge {d['name']!r} is {np.dtype(d['dtype']).name}, expected {act_dtype.name}")
    integer_only = float_ops == 0 and not any("QUANTIZE inside" in s or "DEQUANTIZE inside" in s for s in issues)
    return {"integer_only": integer_only, "issues": list(dict.fromkeys(issues)), "ops": dict(sorted(hist.items()))}


def _is_constant(interp, index) -> bool:
    try:
        interp.get_tensor(index)
        return True
    except ValueError:
        return False


def _check_weights(interp, tensors, op, kind, where, target) -> List[str]:
    layer_kind, w_pos, b_pos = WEIGHT_OPS[kind]
    inputs = list(op["inputs"])
    out: List[str] = []
    if len(inputs) <= w_pos or inputs[w_pos] < 0:
        return out
    w_idx = inputs[w_pos]
    in_idx = inputs[2] if kind == "TRANSPOSE_CONV" else inputs[0]
    w = tensors[w_idx]
    if np.dtype(w["dtype"]) != np.int8:
        return out  # the dtype check reports it
    s_w, z_w, qdim = _q(w)
    if np.any(z_w != 0):
        out.append(f"{where}: weights {w['name']!r} have non-zero zero points {sorted(set(z_w.tolist()))[:4]} "
                   "(symmetric weights need 0)")
    try:
        values = np.asarray(interp.get_tensor(w_idx))
    except ValueError:
        values = None
    if values is not None and target.weights.narrow_range and values.size and values.min() < -127:
        out.append(f"{where}: weights {w['name']!r} use -128 (narrow range [-127, 127] expected)")
    gran = "per_channel" if len(s_w) > 1 else "per_tensor"
    allowed = target.weights.allowed_granularity(layer_kind)
    if gran not in allowed and not (gran == "per_tensor" and values is not None and _one_channel(values, qdim)):
        out.append(f"{where}: weights are {gran}; target {target.name} allows {list(allowed)} for {layer_kind}")
    if len(inputs) > b_pos and inputs[b_pos] >= 0 and in_idx in tensors:
        b = tensors[inputs[b_pos]]
        bias_dtype = target.runtime_facts.conv_bias_dtype
        if bias_dtype is not None and layer_kind == "conv" and np.dtype(b["dtype"]) != np.dtype(bias_dtype):
            out.append(f"{where}: bias {b['name']!r} is {np.dtype(b['dtype']).name}; runtime {target.runtime} "
                       f"quantizes conv bias to {bias_dtype} (16x8, measured in TF 2.21: DEPTHWISE_CONV_2D "
                       "refuses int32, CONV_2D gives wrong outputs)")
        s_b, _, _ = _q(b)
        s_in, _, _ = _q(tensors[in_idx])
        out += _saturated_bias(interp, b, s_in, s_w, where)
        if len(s_b) and len(s_in) == 1:
            expect = s_in[0] * (s_w if len(s_w) == len(s_b) else s_w[:1])
            rel = np.max(np.abs(s_b - expect) / np.maximum(expect, 1e-30))
            if rel > 1e-5:
                out.append(f"{where}: bias scale differs from input scale x weight scale (relative error "
                           f"{rel:.2g})")
    return out


def _saturated_bias(interp, b, s_in, s_w, where) -> List[str]:
    """A bias the converter stored at the int32 limits: its scale ``S_in·S_w`` is too small for it, which happens
    where a range under 1e-6 (``kernels.grid.NARROWEST``) got the converter's tiny scale. A 16x8 conv bias widened to
    int64 (bias_widening.py) keeps the converter's int32 integers, so one at exactly those limits saturated too."""
    try:
        values = np.asarray(interp.get_tensor(b["index"])).astype(np.int64).ravel()
    except ValueError:
        return []
    dtype = np.dtype(b["dtype"])
    if dtype not in (np.int32, np.int64) or not values.size:
        return []
    limits = (values >= 2 ** 31 - 1) | (values <= -2 ** 31) if dtype == np.int32 else \
        (values == 2 ** 31 - 1) | (values == -2 ** 31)
    hit = np.flatnonzero(limits)
    if not hit.size:
        return []
    narrowest = NARROWEST / 127   # a scale the converter gives only a range under NARROWEST
    if len(s_in) == 1 and s_in[0] < narrowest:
        cause = (f"its input's scale {s_in[0]:.3g} is the converter's for a range under {NARROWEST:g}: the input is "
                 "constant zero (a layer whose outputs never leave 0, e.g. a ReLU that never fires); remove that "
                 "layer or keep it alive")
    elif len(s_w) and float(np.min(s_w)) < narrowest:
        cause = f"its weight scale {float(np.min(s_w)):.3g} is the converter's for an all-zero kernel; remove the layer"
    else:
        cause = "the bias is over 2^31 times S_in·S_w; widen the input's or the weights' range"
    return [f"{where}: bias {b['name']!r} saturates int32 in {hit.size} of {values.size} channels "
            f"({hit[:4].tolist()}): the deployed layer adds ±2^31·S_b there, not its bias. Cause: {cause}"]


def _one_channel(values, qdim) -> bool:
    return values.ndim == 0 or values.shape[qdim] == 1


#: Ops whose inputs and output share one grid in TFLite's int8 kernels.
SAME_GRID_MERGES = ("CONCATENATION", "MAXIMUM", "MINIMUM")


def _concatenation_into_reshape(ins, outs, producers, readers) -> bool:
    """A QUANTIZE from a CONCATENATION (MAXIMUM, MINIMUM) to the RESHAPE after it: TF 2.21 moves the op's FakeQuant
    past a reshape and requantizes there; the emulation models it (``schemes.emulation.concat_grid_source``)."""
    return bool(ins) and all(producers.get(i) in SAME_GRID_MERGES for i in ins) \
        and bool(outs) and all(readers.get(o) and set(readers[o]) == {"RESHAPE"} for o in outs)


def _into_concatenation(outs, readers) -> bool:
    """Every output of a QUANTIZE read only by CONCATENATION (MAXIMUM, MINIMUM) ops: an input on another grid,
    which the emulation requantizes as the QUANTIZE does."""
    return bool(outs) and all(readers.get(o) and set(readers[o]) <= set(SAME_GRID_MERGES) for o in outs)
