"""DoReFa-Net quantizers (Zhou et al., 2016, arXiv:1606.06160).

Weights (eq. 9): ``w_q = 2·quantize_k(tanh(w) / (2·max|tanh(w)|) + 1/2) - 1``;
activations (§2.6): ``quantize_k(clip(x, 0, 1))``; ``quantize_k(r) =
round((2^k-1)·r)/(2^k-1)`` with a straight-through round. The max is taken per
channel with ``per_channel`` and, as in the authors' tensorpack code, is part of
the graph (it receives gradient).

Not TFLite-exact: the weight grid ``{2i/(2^k-1) - 1}`` has no exact zero
(at 2 bits: ±1/3, ±1) and lies in ``[-1, 1]`` whatever the weights' scale (``weight_scale: unit``;
``max`` multiplies it by ``max|w|``), so no integer zero point reproduces it. Activations are: their
grid is FakeQuant over ``[0, c]`` (``[-c, c]`` when signed), which the inference path uses. No
power-of-two scale format.

Signed activations (an extension; the paper quantizes only clipped, non-negative activations): with
``signed: true`` (what a scheme sets for a tensor not known to be non-negative: a BN output feeding a residual
Add, a normalised model input) the grid is the symmetric ``c·round(m·clip(x/c, -1, 1))/m``, ``m = 2^(k-1) - 1``
(zero exact; FakeQuant over ``[-c, c]`` with a narrow range at inference), instead of clipping the negative half
to 0, which broke residual networks (CIFAR-10 ResNet-8 at chance: notes/accuracy.md).

Activation clip ``c`` (an extension; the paper clips at 1 and relies on the preceding layers' scale):
with ``init: paper`` it is the paper's 1 and no variable exists; any other ``init`` rule adds a
non-trainable clip ``c`` set from the data, and the forward is ``c·quantize_k(clip(x/c, 0, 1))``.
Weights have no step or clip to initialise (tanh-normalised to [-1, 1]): ``init`` is ignored for them.

Latent weights (an extension): the transform is not the identity at any width (``tanh`` compresses the large
weights against the small ones), so a float model's weights taken as they are lose accuracy even at 8 bits
(CIFAR-10 ResNet-8 PTQ W8A8: 56.4% against float 62.4%, notes/accuracy.md). ``latent_init: inverse`` starts the
latent weight at ``u = atanh(w·tanh(M)/M)``, ``M = max|w|`` over the tanh's max axes: then ``max|u| = M`` and
``tanh(u)/max|tanh(u)| = w/M``, so with ``weight_scale: max`` the transform returns ``w`` before rounding (the
same ``2^k - 1``-level grid over ``[-M, M]`` as a linear quantizer), and with ``unit`` it returns ``w/M``.
``latent_init: float`` trains from ``w`` itself, as the paper (which trains from scratch) and the authors'
fine-tuning code do.
"""
from __future__ import annotations

import numpy as np

from qresearch._compat import tf
from qresearch.errors import ConfigError
from qresearch.quantizers import ops
from qresearch.quantizers.base import Quantizer, check_choice
from qresearch.quantizers.registry import register

MODES = ("auto", "weights", "activations")
WEIGHT_SCALES = ("unit", "max")
LATENT_INITS = ("float", "inverse")


@register("dorefa")
class DoReFaQuantizer(Quantizer):
    """DoReFa weight or activation quantizer, picked by ``mode``.

    Args (besides the common ones; ``symmetric`` does not apply, the grids are fixed, and ``narrow_range``
    must be false):
      signed: activations only: false (default) clips to ``[0, c]`` as the paper, true uses the symmetric
        grid over ``[-c, c]`` (module docstring). Weights ignore it.
      weight_scale: ``"unit"`` (the paper: the weight grid lies in ``[-1, 1]`` whatever the weights' scale) or
        ``"max"`` (that grid times ``max|w|`` over the same axes as the tanh's max, so ``w_q ≈ w`` where tanh is
        near-linear: a float model's function survives; an extension, see notes/accuracy.md).
      latent_init: ``"float"`` (QAT trains from the float weights as they are) or ``"inverse"`` (from the
        latent weights the transform maps to them: module docstring).
      mode: ``"weights"``, ``"activations"`` or ``"auto"`` (activations when tfmot builds
        the quantizer without a static shape, weights otherwise). ``create(..., role=)``
        sets it from the role.
    """

    supports_pot_scales = False
    role_defaults = {"weights": {"mode": "weights"}, "activations": {"mode": "activations", "signed": False}}
    init_params = {"clip": "clip"}

    def __init__(self, bits=8, symmetric=True, narrow_range=False, per_channel=False, axis=None,
                 signed=False, scale_format="float32", mode="auto", weight_scale="unit", latent_init="float"):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        self.weight_scale = check_choice(self.registry_name, "weight_scale", weight_scale, WEIGHT_SCALES)
        self.latent_init = check_choice(self.registry_name, "latent_init", latent_init, LATENT_INITS)
        if narrow_range:
            raise ConfigError("quantizer 'dorefa': narrow_range must be false (DoReFa's grid has 2^bits levels)")
        self.mode = check_choice(self.registry_name, "mode", mode, MODES)

    @property
    def init_range(self):
        return "symmetric" if self.signed else "unsigned"

    @property
    def init_grid(self):
        if self.signed:
            m = 2 ** (self.bits - 1) - 1
            return m, m
        return 0, 2**self.bits - 1

    def build_params(self, shape, name, layer):
        if self.init == "paper" or self.mode == "weights":
            return {}  # the paper's fixed clip at 1: no variable, the graph of before
        return {"clip": self.add_variable(layer, f"{name}_clip", shape, 1.0, trainable=False)}

    def latent_weights(self, w, axes):
        if self.latent_init == "float" or self.mode == "activations":
            return None
        w = np.asarray(w)
        reduce = tuple(i for i in range(w.ndim) if axes is None or i not in axes)
        wide = w.astype(np.float64)   # tanh(M) rounds to 1 in float32 from M ≈ 9
        m = np.max(np.abs(wide), axis=reduce, keepdims=True)
        m = np.where(m > 0, m, 1.0)   # an all-zero channel stays 0
        below_one = np.nextafter(1.0, 0.0)   # atanh(1) is infinite: M over ~19 saturates at atanh(1 - 2^-53)
        return np.arctanh(np.clip(wide * (np.tanh(m) / m), -below_one, below_one)).astype(w.dtype)

    def is_weights(self, weights) -> bool:
        if self.mode == "auto":
            return not weights.get("per_example", False)
        return self.mode == "weights"

    def quantize(self, x, training, weights, axes):
        if self.is_weights(weights):
            return self.quantize_weights(x, axes)
        c = tf.maximum(tf.convert_to_tensor(weights["clip"]), ops.EPS) if "clip" in weights else None
        # unsigned: quantize_k over [0, c]; signed: c·round(m·clip(x/c, -1, 1))/m, m = 2^(k-1) - 1 (a symmetric
        # narrow grid). Straight-through inside the clip, 0 outside; c is 1 (the paper's) without a clip variable.
        if not training:
            top = 1.0 if c is None else c
            return ops.fake_quant(x, -top if self.signed else 0.0, top, self.bits, self.signed)
        if c is None:   # x/1 and ·1 would change no bit
            return clipped_unit_ste(x, self.bits, self.signed)
        return clipped_unit_ste(x / c, self.bits, self.signed) * c

    def quantize_weights(self, w, axes):
        if ops.below_fused_size(w):   # a small kernel: plain autodiff (an XLA call costs more than its ops)
            return self.weights_autodiff(w, axes)
        return fused_weights(w, self.bits, self.reduce_axes(w, axes), self.weight_scale == "max")

    def weights_autodiff(self, w, axes):
        """The weight transform as plain TF ops, differentiated by autodiff (the reference of
        ``fused_weights``; what a kernel under ``ops.FUSED_MIN_ELEMENTS`` runs)."""
        t = tf.tanh(w)
        reduce = self.reduce_axes(w, axes)
        m = ops.reduce_finite(tf.reduce_max, tf.abs(t), reduce, empty=0.0)
        m = self.broadcast(tf.maximum(m, ops.EPS), w, axes)
        y = 2.0 * ops.quantize_unit_ste(t / (2.0 * m) + 0.5, self.bits) - 1.0
        if self.weight_scale == "unit":
            return y
        scale = ops.reduce_finite(tf.reduce_max, tf.abs(w), reduce, empty=0.0)
        return y * self.broadcast(tf.maximum(scale, ops.EPS), w, axes)


def clipped_unit_ste(x, bits: int, signed: bool = False):
    """DoReFa's activation forward ``quantize_k(clip(x, 0, 1))`` (straight-through round); with ``signed``, the
    signed grid ``round(m·clip(x, -1, 1))/m``, ``m = 2^(k-1) - 1``.

    The backward pass is written out (``tf.custom_gradient``) with autodiff's float operations (the
    gradient of ``·/levels`` then of ``·levels``, kept where the clip kept ``x``), one mask instead of
    clip_by_value's two, in one XLA-fused pass (``quantizers/fused.py``); the forward is one pass too
    (``fused.unit_forward``). Values and gradients are autodiff's bits (tests/quantizers/test_dorefa.py,
    test_fused.py). (Until the tenth session the forward was plain TF, and in a model grappler's arithmetic
    optimizer re-associated its ``·(1/levels)`` with the caller's ``·c``: up to 2 ulp from the formula;
    notes/performance.md, "tenth session".)
    """
    from qresearch.quantizers import fused

    levels = float(2 ** (bits - 1) - 1 if signed else 2**bits - 1)
    eager = tf.executing_eagerly()   # the plain ops round ·/levels differently eagerly (see fused._unit_scaling)
    forward_pass = fused.unit_forward(levels, eager, -1.0 if signed else 0.0)
    backward_pass = fused.unit_backward(levels, eager)
    lv = tf.constant(levels)

    @tf.custom_gradient
    def forward(x):
        # the value and both clip masks in one (the backward keeps this 1-byte mask, not x and c)
        y, kept = forward_pass(x, lv, tf.zeros([], tf.int32))

        def backward(dy):
            return backward_pass(dy, kept, lv)

        return y, backward

    return forward(*ops.plain(x))


def fused_weights(w, bits: int, reduce, scaled: bool):
    """DoReFa's weight transform (``DoReFaQuantizer.weights_autodiff``) in XLA passes
    (``fused.dorefa_weights``) and TF's Tanh and two sums, with autodiff's bits for the value and the gradient
    (tests/quantizers/test_fused.py). The plain chain is ~10 forward and ~25 backward ops over the weight, and
    a step kept about ten weight-sized tensors of it alive until the backward (TF runs a gradient op as soon
    as its inputs exist: ``sign(t)``, ``-t``, the max's indicators). Here the step keeps ``tanh(w)`` only; the
    backward recomputes the rest from it and ``w``."""
    from qresearch.quantizers import fused

    levels = float(2**bits - 1)
    eager = tf.executing_eagerly()   # the plain ops round ·/levels differently eagerly (see fused._unit_scaling)
    reduce = tuple(reduce)
    forward_pass, term_passes, backward_pass = fused.dorefa_weights(levels, eager, reduce, scaled, ops.EPS)
    lv = tf.constant(levels)
    kept = [1 if i in reduce else d for i, d in enumerate(w.shape)]

    @tf.custom_gradient
    def forward(w):
        t = tf.tanh(w)
        zero = tf.zeros([], tf.int32)
        y, stats = forward_pass(t, w, lv, zero)
        if not eager:   # shapes a relaxed trace leaves unknown
            y.set_shape(w.shape)
            for s in stats:
                s.set_shape(kept)

        def backward(dy):
            def summed(k, after):
                with tf.control_dependencies(after):   # one weight-sized product alive at a time
                    return tf.reduce_sum(term_passes[k](dy, t, *stats, lv, zero), axis=reduce, keepdims=True)

            sums = [summed(0, [])]
            if scaled:
                sums.append(summed(1, sums))
            return backward_pass(dy, t, w, *sums, *stats, lv, zero)

        return y, backward

    return forward(*ops.plain(w))
