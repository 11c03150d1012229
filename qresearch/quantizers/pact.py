"""PACT: Parameterized Clipping Activation (Choi et al., 2018, arXiv:1805.06085).

``y = clip(x, 0, α)`` with a trainable clipping level ``α`` (eq. 1), quantized on
``2^b - 1`` levels of step ``α/(2^b - 1)`` (eq. 2). The rounding is straight
through and the step is held constant in the backward pass, so
``∂y_q/∂α = 1`` where ``x ≥ α`` and 0 elsewhere (eq. 3). ``alpha_decay`` adds the
paper's L2 penalty ``λ_α·α²`` through the variable's regularizer (it appears in
``model.losses``).

Extension (not in the paper): ``signed: true`` clips to ``[-α, α]`` on the symmetric
signed grid (a common way to use PACT for weights or pre-activations); then
``∂y/∂α`` is also ``-1`` where ``x ≤ -α``.

Inference is TF FakeQuant over ``[0, α]`` (or ``[-α, α]``): the same grid, so the
TFLite converter reads it; it equals the training forward except at rounding ties.
"""
from __future__ import annotations

from qresearch._compat import keras, tf
from qresearch.quantizers import ops
from qresearch.quantizers.base import Quantizer, check_bool, check_number
from qresearch.quantizers.registry import register

MIN_ALPHA = 1e-6


@register("pact")
class PACTQuantizer(Quantizer):
    """Learned clipping level quantizer.

    The grid is fixed by ``signed``: ``[0, 2^b-1]`` (``narrow_range``: ``2^b-2``
    levels) or ``[-(2^(b-1)-1), 2^(b-1)-1]`` scaled by ``α/Qp``; ``symmetric`` is
    implied (zero is always exact).

    Args (besides the common ones):
      alpha_init: initial clipping level. PACT (§3) starts α large relative to the
        activations and lets training (and the L2 decay) shrink it; 6.0 is the ReLU6
        bound, tfmot's initial activation range too.
      alpha_decay: L2 coefficient ``λ_α`` on α (0 disables it).
      data_init: with ``init: paper``, set α from the data instead: ``max(x)`` (``max|x|`` when signed) over
        the calibration data (or the first training batch), per channel when ``per_channel`` — no clipping
        at the start, as with a large α, but on the data's scale. Off by default (the paper's fixed
        start); ``quantize`` turns it on for model inputs, where a fixed α = 6 would clip unnormalised
        data (pixels in [0, 255]) to nothing. Other ``init`` rules always start α from the data.
    """

    role_defaults = {"weights": {"signed": True}, "activations": {"signed": False}}
    init_params = {"alpha": "clip"}

    def __init__(self, bits=8, symmetric=True, narrow_range=False, per_channel=False, axis=None,
                 signed=False, scale_format="float32", alpha_init=6.0, alpha_decay=0.0, data_init=False):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        name = self.registry_name
        self.alpha_init = check_number(name, "alpha_init", alpha_init, low=0.0, low_open=True)
        self.alpha_decay = check_number(name, "alpha_decay", alpha_decay, low=0.0)
        self.data_init = check_bool(name, "data_init", data_init)

    @property
    def grid(self):
        return ops.integer_grid(self.bits, self.signed, self.narrow_range)

    def paper_uses_data(self):
        return self.data_init

    def paper_init(self, stats):
        """The paper's fixed start (``alpha_init``: None keeps it); with ``data_init``, the data's max."""
        if not self.data_init:
            return None
        from qresearch.quantizers.init.rules import INIT_RULES

        return INIT_RULES.get("max")(self, stats)

    def build_params(self, shape, name, layer):
        # The "initialized" flag is added by the base class when α starts from data.
        reg = keras.regularizers.l2(self.alpha_decay) if self.alpha_decay > 0 else None
        return {"alpha": self.add_variable(layer, f"{name}_alpha", shape, self.alpha_init, trainable=True,
                                           regularizer=reg)}

    def clip_level(self, alpha):
        """α floored at a tiny positive value, rounded so α/Qp is a power of two if asked."""
        qp = self.grid[1]
        alpha = tf.maximum(alpha, MIN_ALPHA)
        return self.pot(alpha / qp) * qp if self.scale_format == "pot" else alpha

    def quantize(self, x, training, weights, axes):
        qn, qp = self.grid
        alpha = self.clip_level(tf.convert_to_tensor(weights["alpha"]))
        if not training:
            s = alpha * ops.reciprocal(qp)  # see ops.reciprocal
            a = self.broadcast(alpha, x, axes)
            if qn > qp:  # non-narrow signed grid: the bottom level lies below -α
                x = tf.maximum(x, -a)
            return ops.fake_quant(x, -qn * s, qp * s, self.bits, self.narrow_range, axes)
        return pact_ste(x, self.broadcast(alpha, x, axes), qp, self.signed)


def pact_ste(x, a, qp: int, signed: bool):
    """PACT's training forward: ``x`` clipped to ``[0, α]`` (``[-α, α]`` when signed) with the gradient at
    ``x >= α`` going to α (``tf.where``, not clip_by_value/minimum: those send it to x), then rounded
    straight through onto the step ``α/qp``, which is held constant in the backward pass (paper eq. 3).

    The backward pass is written out (``tf.custom_gradient``) with the float operations autodiff builds for
    ``where(x >= α, α·ones, relu(x))`` and friends, without the ``α·ones`` tensors and the identity
    reductions of SelectV2's gradient, each direction one XLA-fused pass (``quantizers/fused.py``) that
    recomputes the masks from ``x``: bit-identical gradients (tests/quantizers/test_pact.py), fewer passes
    over ``x`` and nothing full-size kept but ``x``.
    """
    from qresearch.quantizers import fused

    forward_pass, backward_pass = fused.pact_forward(signed), fused.pact_backward(signed)

    @tf.custom_gradient
    def forward(x, a):
        step = a / qp   # small (a's shape); held constant in the backward pass
        out = forward_pass(x, a, step)

        def backward(dy):
            g_x, *terms = backward_pass(dy, x, a, step)
            g_a = ops.summed_to(a, terms[0]) - ops.summed_to(a, terms[1]) if signed else ops.summed_to(a, terms[0])
            return g_x, g_a

        return out, backward

    return forward(*ops.plain(x, a))
