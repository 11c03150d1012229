"""Power-of-two scales: min-max ranges with ``scale = 2^ceil(log2(max|x| / Qp))``.

Shift-only hardware (DSPs, some NPUs) rescales with bit shifts, so every scale
must be a power of two. Ranges are tracked as in ``minmax``; the symmetric
scale is rounded up (``pot_rounding: ceil``, never clips, as in TQT, Jain et
al. 2019) or to the nearest power in the log domain (``round``). The forward is
TF FakeQuant over ``[-Qn·2^k, Qp·2^k]``: zero point exact, TFLite-convertible.
"""
from __future__ import annotations

from qresearch.errors import ConfigError
from qresearch.quantizers import ops
from qresearch.quantizers.base import check_choice
from qresearch.quantizers.minmax import MinMaxQuantizer
from qresearch.quantizers.registry import register

POT_ROUNDING = ("ceil", "round")


@register("pot")
class PotQuantizer(MinMaxQuantizer):
    """Symmetric min-max quantizer with power-of-two scales.

    Args: those of ``minmax`` (``symmetric`` must stay true, ``scale_format`` "pot"),
    plus ``pot_rounding``: ``"ceil"`` or ``"round"``.
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
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format,
                         range_tracking, ema_decay, init_min, init_max)

    def pot(self, scale):
        return ops.pot_ste(scale, self.pot_rounding)
