"""A2Q: accumulator-aware weight quantization (Colbert, Pappalardo, Petri-Koenig, ICCV 2023, arXiv:2308.13504).

The bound (the paper's §3, derived here). One output channel accumulates ``acc = Σ_i q_i·x_i`` over integer
weights ``q_i`` and N-bit integer inputs ``x_i``. Whatever the inputs, ``|acc| ≤ Σ_i |q_i|·|x_i| ≤ ||q||_1 ·
max|x|``, so a P-bit signed accumulator (range ``[-2^(P-1), 2^(P-1)-1]``) never overflows, at any point of the
sum, in any order, if

    ||q||_1 · max|x| ≤ 2^(P-1) - 1,   i.e.   ||q||_1 ≤ L = floor((2^(P-1) - 1) / max|x|)

(every partial sum is bounded by the same l1 norm, so the order of accumulation does not matter). ``max|x|`` is
``2^N - 1`` for unsigned inputs (``input_signed: false``, post-ReLU) and ``2^(N-1)`` for signed two's-complement
inputs (``input_signed: true``; the level ``-2^(N-1)``). The paper writes the unsigned case with ``2^N`` (its
``2^(1_signed(x) - N)`` factor), one level more conservative; L here uses the exact maximum. ``||q||_1`` is an
integer, so the floor loses nothing. An asymmetric N-bit input grid feeds the accumulator ``x - Z``, whose
magnitude is at most ``2^N - 1``: ``input_signed: false`` covers every N-bit input, zero point included;
``input_signed: true`` only symmetric signed inputs (``Z = 0``). The bias is not included: it is added to the
accumulator once (TFLite adds it before the products), so a target that does so needs ``|bias_int|`` of headroom
(not given here).

The quantizer (the paper's §4). Each output channel's weights are re-parameterised as in weight normalisation
with an l1 norm, ``w = g · v / ||v||_1`` (``v``: the layer's own kernel), and quantized on a symmetric grid with
step ``s``: ``q = clip(round(w / s), -Qn, Qp)``. Step and norm are learned in the log2 domain, ``s = 2^t`` and
``g = min(2^d, L·s)`` (the paper's ``g = 2^min(d, T + t)``, ``T = log2 L``), so ``||w / s||_1 = g / s ≤ L``.
Rounding toward zero never increases a magnitude, so ``||q||_1 ≤ ||w / s||_1 ≤ L`` holds AFTER rounding; the
clip only shrinks magnitudes too. The paper rounds every weight toward zero; here a channel keeps round-to-
nearest when its rounded weights already satisfy ``||q||_1 ≤ L`` (checked exactly, on integers) and rounds toward
zero only where it is needed. So with a loose accumulator the quantizer is the plain symmetric per-channel grid
with step ``s``. The forward runs in float64 (its integer sums are exact below 2^53), so the bound holds
exactly, not up to float32 round-off.

Gradients: straight-through rounding (both roundings), autodiff through the clip, the normalisation, ``2^t``,
``2^d`` and the ``min`` (while the constraint binds, ``g`` follows ``t`` and ``d`` gets no gradient, as in the
paper; its penalty ``λ·Σ max(d - T - t, 0)`` that pulls ``d`` back to ``T + t`` is added to the layer's losses
when ``norm_penalty`` λ > 0). A kernel of ``ops.FUSED_MIN_ELEMENTS`` or more trains through the same arithmetic
in five XLA passes (``fused_training_weights``: the same bits, far less memory).

Initialisation (first training or calibration batch, once), ``init``:

- ``paper`` (the paper's rule): ``s = max|v| / Qp`` and ``g = ||v||_1`` per channel, so ``w = v`` and, with a
  loose accumulator, the grid is the min-max one. Where the bound binds (``||v||_1 / s > L``), ``g`` is clipped
  to ``L·s``: the channel's weights shrink by the factor ``L·s / ||v||_1`` (measured in notes/a2q.md). A2Q+
  (Colbert et al., ICML 2024, arXiv:2401.10432) names A2Q's initialisation as a source of needless error.
- ``max`` (the default of the preset, notes/a2q.md): ``s = max(max|v| / Qp, ||v||_1 / L)``, ``g = ||v||_1``. Where
  the bound is loose this is ``paper``; where it binds, ``w / s`` is the same vector as ``paper``'s (so the same
  integers) but the step is ``||v||_1 / L``, so ``s·q`` keeps the weights' scale instead of shrinking them. (Not
  A2Q+'s Euclidean-projection init, which changes ``v`` itself.)

Other rules (``percentile``, ``mse``) are refused. Until initialised, the inference pass uses the same estimate
from the current weights.

Inference: the same integers ``q`` times ``s``, through one TF FakeQuant over ``[-Qn·s, Qp·s]`` per channel
(identity on the grid), so the TFLite converter stores exactly these integers and the integer emulation reads
the grid from the FakeQuant range.
"""
from __future__ import annotations

import math

from qresearch._compat import tf
from qresearch.errors import ConfigError
from qresearch.quantizers import ops
from qresearch.quantizers.base import Quantizer, check_bool, check_number
from qresearch.quantizers.channels import channel_axes_for
from qresearch.quantizers.registry import register

MIN_ACCUMULATOR_BITS, MAX_ACCUMULATOR_BITS = 2, 64
MIN_INPUT_BITS, MAX_INPUT_BITS = 1, 32
#: Floor on an l1 norm, so an all-zero channel divides by something (its weights are 0 whatever the divisor).
TINY = 1e-30


def max_input_magnitude(input_bits: int, input_signed: bool) -> int:
    """Largest ``|x|`` of an N-bit integer input: ``2^N - 1`` unsigned, ``2^(N-1)`` signed."""
    return 2 ** (input_bits - 1) if input_signed else 2**input_bits - 1


def l1_budget(accumulator_bits: int, input_bits: int, input_signed: bool) -> int:
    """``L = floor((2^(P-1) - 1) / max|x|)``: the largest per-channel ``Σ|q_i|`` a P-bit accumulator holds."""
    return (2 ** (accumulator_bits - 1) - 1) // max_input_magnitude(input_bits, input_signed)


def _check_int(name, field, value, low, high) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"quantizer {name!r}: {field} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


@register("a2q")
class A2QQuantizer(Quantizer):
    """Accumulator-aware weight quantizer: per output channel ``Σ|q_i| · max|x| ≤ 2^(P-1) - 1``.

    Args (besides the common ones; weights only, symmetric signed grid):
      accumulator_bits: P, the signed accumulator width the layer must never overflow.
      input_bits: N, the bit width of the layer's integer input (its activation quantizer's bits).
      input_signed: false for unsigned inputs (post-ReLU, or any asymmetric grid: ``max|x| = 2^N - 1``),
        true for symmetric signed inputs (``max|x| = 2^(N-1)``).
      norm_penalty: weight λ of the paper's penalty ``λ·Σ_c max(d_c - T - t_c, 0)`` added to the layer's losses:
        it pulls the log2 norm ``d`` back to the clamp ``T + t`` while the bound binds (there ``d`` has no other
        gradient). 0 (default) adds no loss.

    ``per_channel: false`` keeps one step for the tensor; the l1 constraint is still per output channel
    (it is a property of each dot product).
    """

    role_defaults = {"weights": {"signed": True, "symmetric": True, "narrow_range": True, "per_channel": True}}

    def __init__(self, bits=8, symmetric=True, narrow_range=True, per_channel=True, axis=None, signed=True,
                 scale_format="float32", accumulator_bits=32, input_bits=8, input_signed=False, norm_penalty=0.0):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        name = self.registry_name
        if not symmetric or not signed:
            raise ConfigError(f"quantizer {name!r}: weights need a symmetric signed grid (zero point 0) for the "
                              "l1 bound; use symmetric: true and signed: true")
        self.input_bits = _check_int(name, "input_bits", input_bits, MIN_INPUT_BITS, MAX_INPUT_BITS)
        self.input_signed = check_bool(name, "input_signed", input_signed)
        self.norm_penalty = check_number(name, "norm_penalty", norm_penalty, low=0.0)
        self.accumulator_bits = _check_int(name, "accumulator_bits", accumulator_bits, MIN_ACCUMULATOR_BITS,
                                           MAX_ACCUMULATOR_BITS)
        if self.budget < 1:
            need = next(p for p in range(2, MAX_ACCUMULATOR_BITS + 1)
                        if l1_budget(p, self.input_bits, self.input_signed) >= 1)
            kind = "signed" if self.input_signed else "unsigned"
            raise ConfigError(
                f"quantizer {name!r}: accumulator_bits={self.accumulator_bits} cannot hold even one product of "
                f"a weight level (1) and the largest {self.input_bits}-bit {kind} input "
                f"({max_input_magnitude(self.input_bits, self.input_signed)}): every weight would be 0. Fix: "
                f"accumulator_bits >= {need}, or fewer input_bits")

    #: ``init`` rules A2Q implements (see the module docstring); the others are refused.
    INITS = ("paper", "max")

    def check_init(self) -> None:
        if self.init not in self.INITS:
            raise ConfigError(
                f"quantizer {self.registry_name!r}: init must be one of {', '.join(map(repr, self.INITS))} "
                f"(A2Q starts its step and norm from the weights, not from a clip search), got {self.init!r}")

    # ------------------------------------------------------------- the bound
    @property
    def budget(self) -> int:
        """``L``: the largest ``Σ|q_i|`` per output channel (see the module docstring)."""
        return l1_budget(self.accumulator_bits, self.input_bits, self.input_signed)

    # ----------------------------------------------------------- variables
    def build(self, tensor_shape, name, layer):
        if tensor_shape is None or any(d is None for d in tf.TensorShape(tensor_shape)):
            raise ConfigError(f"quantizer {self.registry_name!r} is for weights (it bounds each output "
                              f"channel's dot product); tensor {name!r} is an activation. Use another "
                              "quantizer for activations (e.g. minmax)")
        weights = super().build(tensor_shape, name, layer)
        norm_axes = weights["channel_axes"] or self._output_axes(tensor_shape, name, layer)
        weights["log2_norm"] = self.add_variable(layer, f"{name}_log2_norm",
                                                 self.param_shape(tensor_shape, norm_axes), 0.0, trainable=True)
        weights["norm_axes"] = norm_axes
        if self.norm_penalty > 0.0:
            layer.add_loss(self._penalty(weights["log2_step"], weights["log2_norm"]))
        return weights

    def _penalty(self, t_var, d_var):
        lam, log2_budget = self.norm_penalty, math.log2(self.budget)

        def penalty():
            return lam * tf.reduce_sum(tf.nn.relu(tf.convert_to_tensor(d_var) - log2_budget - t_var))

        return penalty

    def build_params(self, shape, name, layer):
        return {
            "log2_step": self.add_variable(layer, f"{name}_log2_step", shape, 0.0, trainable=True),
            "initialized": self.add_flag(layer, f"{name}_a2q_initialized"),
        }

    def _output_axes(self, tensor_shape, name, layer):
        """Output-channel axes of a weight, for the per-channel norm of a per-tensor-step quantizer."""
        rank = len(tensor_shape)
        axes = (self.axis if isinstance(self.axis, list) else [self.axis]) if self.axis is not None \
            else list(channel_axes_for(layer, name))
        if any(not -rank <= a < rank for a in axes):
            raise ConfigError(f"quantizer {self.registry_name!r}: axis {self.axis!r} is out of range for tensor "
                              f"{name!r} of shape {tuple(tensor_shape)}")
        return tuple(sorted(a % rank for a in axes))

    # ------------------------------------------------------------ the math
    def initial_params(self, x, axes, norm_axes):
        """``(t, d)`` = ``(log2(max|v| / Qp), log2(||v||_1))`` per channel, over finite values; with
        ``init: max`` the step is at least ``||v||_1 / L`` (one step for the tensor: the largest channel's).

        Channels with no usable value (all zero or non-finite) get ``t = d = 0``.
        """
        _, qp = self.grid
        finite = tf.math.is_finite(x)
        mag = tf.where(finite, tf.abs(x), tf.zeros_like(x))
        max_abs = tf.reduce_max(mag, axis=self.reduce_axes(x, axes))
        l1 = tf.reduce_sum(mag, axis=self.reduce_axes(x, norm_axes))
        if self.init == "max":
            per_step = l1 if axes is not None else tf.reduce_max(l1)
            max_abs = tf.maximum(max_abs, per_step * (float(qp) / float(self.budget)))
        t = tf.where(max_abs > 0.0, tf.math.log(tf.maximum(max_abs, TINY) * ops.reciprocal(qp)) / math.log(2.0),
                     tf.zeros_like(max_abs))
        d = tf.where(l1 > 0.0, tf.math.log(tf.maximum(l1, TINY)) / math.log(2.0), tf.zeros_like(l1))
        return t, d

    def step_and_norm(self, t, d):
        """``(s, s64, g)``: the float32 step ``2^t`` (what FakeQuant and TFLite see), it in float64, and the norm
        ``g = min(2^d, L·s)`` (float64)."""
        t = tf.convert_to_tensor(t)
        if self.scale_format == "pot":
            t = t + tf.stop_gradient(tf.math.ceil(t) - t)
        s = tf.pow(2.0, t)
        s64 = tf.cast(s, tf.float64)
        # A per-tensor step (shape ()) broadcasts against the per-channel norms: the bound is per channel.
        g = tf.minimum(tf.pow(tf.constant(2.0, tf.float64), tf.cast(d, tf.float64)), float(self.budget) * s64)
        return s, s64, g

    def integers(self, x, t, d, axes, norm_axes):
        """``(q, s)``: the integer weights (float64, straight-through) and the float32 step."""
        qn, qp = self.grid
        budget = float(self.budget)
        s, s64, g = self.step_and_norm(t, d)
        v = tf.cast(x, tf.float64)
        reduce = self.reduce_axes(x, norm_axes)
        l1 = tf.maximum(tf.reduce_sum(tf.abs(v), axis=reduce, keepdims=True), TINY)
        u = self.broadcast(g, x, norm_axes) * v / (l1 * self.broadcast(s64, x, axes))
        u = tf.clip_by_value(u, -float(qn), float(qp))
        nearest = tf.round(u)
        toward_zero = tf.sign(u) * tf.floor(tf.abs(u))
        fits = tf.reduce_sum(tf.abs(nearest), axis=reduce, keepdims=True) <= budget
        q = tf.where(fits, nearest, toward_zero)
        return u + tf.stop_gradient(q - u), s

    def quantize(self, x, training, weights, axes):
        qn, qp = self.grid
        norm_axes = weights["norm_axes"]
        t_var, d_var, flag = weights["log2_step"], weights["log2_norm"], weights["initialized"]
        if training:
            def estimate():
                t0, d0 = self.initial_params(x, axes, norm_axes)
                valid = tf.reduce_any(tf.math.is_finite(x))
                return [t0, d0], valid

            with tf.control_dependencies([self.init_from_data(flag, [t_var, d_var], estimate)]):
                t, d = tf.identity(t_var), tf.identity(d_var)
        elif self.set_at_trace(flag):  # traced after initialisation: no estimate on the inference path
            t, d = t_var, d_var
        else:  # before any data: the estimate from the current weights, not the placeholder zeros
            t0, d0 = self.initial_params(x, axes, norm_axes)
            ready = flag > 0.0
            t, d = tf.where(ready, t_var, t0), tf.where(ready, d_var, d0)
        if training and not ops.below_fused_size(x):   # (a small kernel: plain autodiff, cheaper than XLA calls)
            s, s64, g = self.step_and_norm(t, d)
            return fused_training_weights(x, self.broadcast(g, x, norm_axes), self.broadcast(s64, x, axes),
                                          self.broadcast(tf.cast(s, tf.float64), x, axes), self.grid,
                                          float(self.budget), self.reduce_axes(x, norm_axes))
        q, s = self.integers(x, t, d, axes, norm_axes)
        s_b = self.broadcast(tf.cast(s, tf.float64), x, axes)
        y = tf.cast(q * s_b, x.dtype)
        if training:
            return y
        # One FakeQuant per channel, identity on this grid: the converter and the emulation read its range.
        return ops.fake_quant(y, -qn * s, qp * s, self.bits, self.narrow_range, axes)


def fused_training_weights(x, g_b, s_b, so_b, grid, budget: float, reduce):
    """The training value of ``A2QQuantizer.quantize`` (``integers`` times the step) for the broadcast norm
    ``g_b``, step ``s_b`` and output step ``so_b`` (float64), in five XLA passes (``fused.a2q_weights``) and
    TF's sums, with autodiff's bits for the value and the four gradients (tests/quantizers/test_fused.py). The
    plain float64 chain kept about ten weight-sized float64 tensors from the forward to the backward; here
    the step keeps none but ``x``. The norm and step arithmetic (``step_and_norm``) stays plain autodiff."""
    from qresearch.quantizers import fused

    qn, qp = grid
    reduce = tuple(reduce)
    forward_pass, term_passes, backward_pass = fused.a2q_weights(float(qn), float(qp), budget, reduce)
    kept = [1 if i in reduce else n for i, n in enumerate(x.shape)]

    @tf.custom_gradient
    def forward(x, g_b, s_b, so_b):
        zero = tf.zeros([], tf.int32)
        raw = tf.reduce_sum(tf.abs(tf.cast(x, tf.float64)), axis=reduce, keepdims=True)
        l1 = tf.maximum(raw, TINY)
        den = l1 * s_b
        y, fits = forward_pass(x, g_b, den, so_b, zero)
        if not tf.executing_eagerly():   # shapes a relaxed trace leaves unknown
            y.set_shape(x.shape)
            fits.set_shape(kept)

        def backward(dy):
            def summed(k, param, after):
                with tf.control_dependencies(after):   # one float64 product alive at a time
                    return ops.summed_to(param, term_passes[k](dy, x, g_b, den, so_b, fits, zero))

            g_so = summed(0, so_b, [])
            g_den = summed(1, den, [g_so])
            g_g = summed(2, g_b, [g_den])
            g_l1 = ops.summed_to(l1, g_den * s_b)
            g_l1 = tf.where(raw >= TINY, g_l1, tf.zeros_like(g_l1))   # Maximum's gradient
            g_x = backward_pass(dy, x, g_b, den, so_b, g_l1, zero)
            return g_x, g_g, ops.summed_to(s_b, l1 * g_den), g_so

        return y, backward

    return forward(*ops.plain(x, g_b, s_b, so_b))
