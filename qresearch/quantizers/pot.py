"""Power-of-two scales: min-max ranges with ``scale = 2^ceil(log2(max|x| / Qp))``.

Shift-only hardware (DSPs, some NPUs) rescales with bit shifts, so every scale
must be a power of two. Ranges are tracked as in ``minmax``; the symmetric
scale is rounded up (``pot_rounding: ceil``, never clips, as in TQT, Jain et
al. 2019), to the nearest power in the log domain (``round``), or, for weights,
to whichever of the two powers around ``max|x| / Qp`` (the ceil and the one
below it) quantizes the tensor with the smaller squared error, per channel
where per-channel (``mse``: the MSE range setting of Nagel et al. 2021, "A White
Paper on Neural Network Quantization", arXiv:2106.08295, §3.1, over the two power-of-two
candidates). ``ceil`` never clips, which 8-bit grids want; at 2-3 bits it puts
most weights under half a step, on 0, where the lower power keeps them.
The forward is TF FakeQuant over ``[-Qn·2^k, Qp·2^k]``: zero point exact, TFLite-convertible.
"""
from __future__ import annotations

from qresearch._compat import tf
from qresearch.errors import ConfigError
from qresearch.quantizers import ops
from qresearch.quantizers.base import check_choice
from qresearch.quantizers.minmax import MinMaxQuantizer
from qresearch.quantizers.registry import register

POT_ROUNDING = ("ceil", "round", "mse")


@register("pot")
class PotQuantizer(MinMaxQuantizer):
    """Symmetric min-max quantizer with power-of-two scales.

    Args: those of ``minmax`` (``symmetric`` must stay true, ``scale_format`` "pot"),
    plus ``pot_rounding``: ``"ceil"``, ``"round"`` or ``"mse"`` (``range_tracking: last_value`` only: the
    scale is chosen from the tensor being quantized, so an activation's would change with its batch).
    """

    role_defaults = {
        "weights": {"narrow_range": True, "range_tracking": "last_value"},
        "activations": {"range_tracking": "ema"},
    }

    def __init__(self, bits=8, symmetric=True, narrow_range=False, per_channel=False, axis=None,
                 signed=True, scale_format="pot", range_tracking="ema", ema_decay=0.99,
                 init_min=-6.0, init_max=6.0, pot_rounding="ceil"):
        if symmetric is not True:
            raise ConfigError("quantizer 'pot': symmetric must be true (power-of-two scales here have "
                              f"zero point 0), got {symmetric!r}")
        if scale_format != "pot":
            raise ConfigError(f"quantizer 'pot': scale_format must be 'pot', got {scale_format!r}; "
                              "use 'minmax' for float scales")
        self.pot_rounding = check_choice("pot", "pot_rounding", pot_rounding, POT_ROUNDING)
        if self.pot_rounding == "mse" and range_tracking != "last_value":
            raise ConfigError("quantizer 'pot': pot_rounding 'mse' picks each scale from the tensor it quantizes, "
                              f"so it needs range_tracking 'last_value' (weights), got {range_tracking!r}: an "
                              "activation's scale would change with its batch. Use 'ceil' or 'round' there")
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format,
                         range_tracking, ema_decay, init_min, init_max, range_rule="max")

    def pot(self, scale):
        return ops.pot_ste(scale, "ceil" if self.pot_rounding == "mse" else self.pot_rounding)

    def range_from_input(self) -> bool:
        return self.pot_rounding == "mse"

    def range_of(self, x, lo, hi, axes):
        fq_min, fq_max = self.fake_quant_range(lo, hi)
        if self.pot_rounding != "mse":
            return fq_min, fq_max
        qn, qp = self.grid
        upper = tf.stop_gradient(fq_max / qp)   # 2^ceil(log2(max|x| / Qp)): never clips
        lower = upper / 2
        reduce = self.reduce_axes(x, axes)

        def squared_error(scale):
            s = self.broadcast(scale, x, axes)
            return tf.reduce_sum(tf.square(tf.clip_by_value(tf.round(x / s), -qn, qp) * s - x), axis=reduce)

        scale = tf.where(squared_error(lower) < squared_error(upper), lower, upper)
        return -qn * scale, qp * scale
