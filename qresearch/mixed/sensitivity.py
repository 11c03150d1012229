"""Per-layer sensitivity to a bit width: measured, and a second-order estimate.

``sensitivity`` (measured): for every compute layer l and width b, quantize *only* l (its weights,
its input and its output at b bits; every other layer float) with ``qresearch.quantize`` and the
scheme's own quantizers, calibrate on the calibration data, and record the change in loss and
accuracy on ``data`` against the float model. No training: this is post-training sensitivity,
the "one layer at a time" analysis of AIMET's per-layer sensitivity and of HAWQ's validation.

``hessian_sensitivity`` (cheap): HAWQ-V2's score (Dong et al., "HAWQ-V2: Hessian Aware trace-
Weighted Quantization of Neural Networks", NeurIPS 2020, §3.2)

    Omega_l(b) = (Tr(H_l) / n_l) * || Q_b(W_l) - W_l ||_2^2

with H_l the Hessian of the loss w.r.t. layer l's quantized weights (n_l of them). The trace comes
from Hutchinson's estimator (Hutchinson 1989; Avron & Toledo, "Randomized algorithms for
estimating the trace of an implicit symmetric positive semi-definite matrix", JACM 2011, Eq. 1):

    Tr(H) = E_v[ v^T H v ],  v with i.i.d. Rademacher entries,

averaged over ``samples`` draws; H v is a Hessian-vector product by double back-propagation
(Pearlmutter 1994), so H is never formed. One v over all layers at once gives each layer's block
trace: E[v_l^T (H v)_l] = Tr(H_ll) since the cross terms H_lm v_m have zero mean. Q_b is a
symmetric max-abs uniform quantizer at b bits (per output channel when the scheme's weights are
per-channel). Activations are not scored (HAWQ-V2 scores them separately).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from qresearch.mixed.cost import mac_rule
from qresearch.mixed.graph import compute_layers
from qresearch.mixed.scheme import base_spec, to_scheme


def _xy(data) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.asarray(data[0]), np.asarray(data[1])
    if hasattr(data, "x_test") and hasattr(data, "y_test"):
        return np.asarray(data.x_test), np.asarray(data.y_test)
    raise TypeError("data must be (x, y) arrays (or a qresearch Dataset: its test split is used)")


def default_loss(model):
    """Sparse categorical cross-entropy; from logits unless the model ends in a softmax."""
    from qresearch._compat import keras

    last = model.layers[-1]
    act = getattr(getattr(last, "activation", None), "__name__", "")
    probs = act == "softmax" or type(last).__name__ == "Softmax"
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)


def evaluate(model, x, y, loss_fn=None, batch_size: int = 256) -> Dict[str, float]:
    """Mean loss and accuracy of ``model`` on (x, y), inference mode."""
    loss_fn = loss_fn or default_loss(model)
    total, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size], training=False)
        yb = y[i:i + batch_size]
        total += float(loss_fn(yb, out)) * len(yb)
        correct += int(np.sum(np.argmax(np.asarray(out), axis=-1) == yb.reshape(-1)))
    return {"loss": total / len(x), "accuracy": correct / len(x)}


def sensitivity(model, data, scheme, bits: Sequence[int] = (8, 4, 3, 2), calibration_data=None,
                layers: Optional[Sequence[str]] = None, loss_fn=None) -> Dict[str, Any]:
    """Measured sensitivity of each compute layer quantized alone at each width.

    Args:
      model: the float tf_keras model (flat, built).
      data: ``(x, y)`` on which loss and accuracy are measured (a held-out or training subset).
      scheme: the base scheme (preset name, dict or SchemeSpec): its quantizers are used at each width.
      bits: candidate widths.
      calibration_data: initialises the quantizers' ranges (default: the first 512 images of ``data``).
      layers: the compute layers to measure (default: all).
    Returns:
      ``{"scores": {layer: {bits: loss increase}}, "accuracy_drop": {layer: {bits: points}},
      "float": {"loss", "accuracy"}, "method": "measured"}``.
    """
    from qresearch.api import quantize

    x, y = _xy(data)
    calib = x[:512] if calibration_data is None else calibration_data
    loss_fn = loss_fn or default_loss(model)
    ref = evaluate(model, x, y, loss_fn)
    all_layers = compute_layers(model)
    chosen = [c for c in all_layers if layers is None or c.name in layers]
    names = [l.name for l in model.layers if type(l).__name__ != "InputLayer"]
    scores: Dict[str, Dict[int, float]] = {}
    drops: Dict[str, Dict[int, float]] = {}
    for c in chosen:
        keep = {c.name, *c.chain}
        skip = [re.escape(n) for n in names if n not in keep]
        for b in bits:
            spec = to_scheme(scheme, {c.name: int(b)}, model)
            spec["skip"] = list(spec.get("skip", [])) + skip
            q = quantize(model, spec, calibration_data=calib)
            m = evaluate(q, x, y, loss_fn)
            scores.setdefault(c.name, {})[int(b)] = m["loss"] - ref["loss"]
            drops.setdefault(c.name, {})[int(b)] = 100.0 * (ref["accuracy"] - m["accuracy"])
    return {"scores": scores, "accuracy_drop": drops, "float": ref, "method": "measured"}


def quantize_weights(w: np.ndarray, bits: int, per_channel: bool = False) -> np.ndarray:
    """Symmetric max-abs uniform quantizer: s = max|w| / (2^(b-1) - 1), Q(w) = s * clip(round(w/s))."""
    qmax = 2 ** (int(bits) - 1) - 1
    axes = tuple(range(w.ndim - 1)) if per_channel and w.ndim > 1 else None
    m = np.max(np.abs(w), axis=axes, keepdims=True)
    s = np.where(m > 0, m / qmax, 1.0)
    return np.clip(np.round(w / s), -qmax, qmax) * s


def hutchinson_traces(model, data, samples: int = 32, batch_size: int = 256, loss_fn=None,
                      seed: int = 0) -> Dict[str, Dict[str, float]]:
    """``{layer: {"trace": Tr(H_l), "n": n_l, "std_error": ...}}`` by Hutchinson's estimator (module doc)."""
    from qresearch._compat import tf

    x, y = _xy(data)
    x, y = x[:batch_size], y[:batch_size]
    loss_fn = loss_fn or default_loss(model)
    layers = compute_layers(model)
    params = {c.name: [getattr(c.layer, a) for p in mac_rule(c.layer).parts(c.layer, c.input_shape, c.output_shape)
                       for a in p.weights] for c in layers}
    flat = [v for c in layers for v in params[c.name]]
    rng = np.random.default_rng(seed)
    draws: Dict[str, list] = {c.name: [] for c in layers}
    xt, yt = tf.constant(x), tf.constant(y)
    for _ in range(int(samples)):
        vs = [tf.constant(rng.choice([-1.0, 1.0], size=v.shape).astype(v.dtype.as_numpy_dtype)) for v in flat]
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = loss_fn(yt, model(xt, training=False))
            grads = inner.gradient(loss, flat)
            gv = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vs)])
        hvs = outer.gradient(gv, flat)
        i = 0
        for c in layers:
            k = len(params[c.name])
            draws[c.name].append(float(sum(tf.reduce_sum(v * hv) for v, hv in zip(vs[i:i + k], hvs[i:i + k]))))
            i += k
    out = {}
    for c in layers:
        d = np.array(draws[c.name])
        out[c.name] = {"trace": float(d.mean()), "n": int(sum(int(np.prod(v.shape)) for v in params[c.name])),
                       "std_error": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")}
    return out


def hessian_sensitivity(model, data, scheme, bits: Sequence[int] = (8, 4, 3, 2), samples: int = 32,
                        batch_size: int = 256, loss_fn=None, seed: int = 0,
                        traces: Optional[Mapping[str, Mapping[str, float]]] = None) -> Dict[str, Any]:
    """HAWQ-V2 scores Omega_l(b) = Tr(H_l)/n_l * ||Q_b(W_l) - W_l||^2 for every compute layer and width."""
    spec = base_spec(scheme)
    per_channel = bool((spec.weights or {}).get("per_channel", False))
    traces = traces or hutchinson_traces(model, data, samples, batch_size, loss_fn, seed)
    scores: Dict[str, Dict[int, float]] = {}
    for c in compute_layers(model):
        attrs = [a for p in mac_rule(c.layer).parts(c.layer, c.input_shape, c.output_shape) for a in p.weights]
        ws = [getattr(c.layer, a).numpy() for a in attrs]
        t = traces[c.name]
        mean_curv = max(t["trace"], 0.0) / t["n"]  # a negative estimate (noise, non-convexity) counts as 0
        scores[c.name] = {int(b): mean_curv * float(sum(np.sum((quantize_weights(w, b, per_channel) - w) ** 2)
                                                        for w in ws)) for b in bits}
    return {"scores": scores, "traces": dict(traces), "method": "hessian"}
