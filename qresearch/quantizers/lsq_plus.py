"""LSQ+: learned step and learned offset (Bhalgat et al., CVPR-W 2020, arXiv:2004.09576).

``v = round(clip((x - β)/s, -Qn, Qp)) · s + β`` with trainable step ``s`` and offset
``β`` for asymmetric activations (eq. 3); both gradients are scaled by LSQ's
``g = 1/sqrt(N·Qp)``. With ``symmetric: true`` (weights) there is no offset and
LSQ+ is LSQ with the paper's weight initialisation.

``init: paper`` (paper §3.3; finite values; over every calibration batch, or the first training batch
without calibration data; ``init`` picks another rule, see the base class):
  * asymmetric: ``s = (max - min) / (Qp + Qn)`` and ``β = min + Qn·s`` — the paper's
    min/max rule ``s = (max - min)/(p - n)``, ``β = min - n·s`` with ``n = -Qn``,
    ``p = Qp`` (the paper also offers an MSE-optimal start; not implemented here);
  * symmetric: ``s = max(|μ - 3σ|, |μ + 3σ|) / 2^(b-1)`` (``/ 2^b`` for unsigned grids).

Deviation (default ``nudge_zero_point: true``): the forward moves ``β`` to the
nearest value that puts real 0 on the grid, the integer zero point TFLite needs
— exactly what TF FakeQuant's nudging does at inference. The gradient still
reaches ``β`` straight through, so the paper's gradients are unchanged. With
``nudge_zero_point: false`` the forward is the paper's, and the inference
FakeQuant (which always nudges) then differs from it by less than one step.
"""
from __future__ import annotations

import math

from qresearch._compat import tf
from qresearch.errors import ConfigError
from qresearch.quantizers import ops
from qresearch.quantizers.base import Quantizer, check_bool, check_number
from qresearch.quantizers.lsq import MIN_STEP
from qresearch.quantizers.registry import register


@register("lsq_plus")
class LSQPlusQuantizer(Quantizer):
    """Learned step and offset quantizer.

    Asymmetric (default): the unsigned grid ``[0, 2^b-1]`` shifted by ``β``.
    Symmetric: LSQ's zero-centred grid (signed or unsigned) and no offset.

    Args (besides the common ones):
      step_init, offset_init: values before data are seen (kept if ``data_init`` is false).
      data_init: start ``s`` (and ``β``) from the data by the ``init`` rule; false keeps the values above.
      grad_scaling: scale the gradients by ``1/sqrt(N·Qp)``.
      nudge_zero_point: keep real 0 on the grid in training too (see module docstring).
    """

    role_defaults = {"weights": {"symmetric": True, "signed": True},
                     "activations": {"symmetric": False}}
    init_params = {"step": "step", "offset": "offset"}

    def __init__(self, bits=8, symmetric=False, narrow_range=False, per_channel=False, axis=None,
                 signed=True, scale_format="float32", step_init=1.0, offset_init=0.0, data_init=True,
                 grad_scaling=True, nudge_zero_point=True):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        name = self.registry_name
        self.step_init = check_number(name, "step_init", step_init, low=0.0, low_open=True)
        self.offset_init = check_number(name, "offset_init", offset_init)
        self.data_init = check_bool(name, "data_init", data_init)
        self.grad_scaling = check_bool(name, "grad_scaling", grad_scaling)
        self.nudge_zero_point = check_bool(name, "nudge_zero_point", nudge_zero_point)

    @property
    def has_offset(self) -> bool:
        return not self.symmetric

    def build_params(self, shape, name, layer):
        params = {
            "step": self.add_variable(layer, f"{name}_step", shape, self.step_init, trainable=True),
            "initialized": self.add_flag(layer, f"{name}_step_initialized"),
        }
        if self.has_offset:
            params["offset"] = self.add_variable(layer, f"{name}_offset", shape, self.offset_init, trainable=True)
        return params

    def check_init(self):
        if self.init != "paper" and not self.data_init:
            raise ConfigError(f"quantizer {self.registry_name!r}: data_init: false keeps step_init/offset_init, so "
                              f"init: {self.init!r} would not apply; drop data_init: false or use init: paper")

    def paper_uses_data(self):
        return self.data_init

    def paper_init(self, stats):
        """The paper's §3.3 rules (see the module docstring)."""
        qn, qp = self.grid
        if self.has_offset:
            step = (stats.max - stats.min) / float(qp + qn)
            offset = stats.min + qn * step
            valid = tf.logical_and(tf.math.is_finite(step), step > 0.0) & tf.math.is_finite(offset)
            return {"step": step, "offset": offset}, valid
        spread = tf.maximum(tf.abs(stats.mean - 3.0 * stats.std), tf.abs(stats.mean + 3.0 * stats.std))
        step = spread / float(qp + 1)
        return {"step": step}, tf.logical_and(tf.math.is_finite(step), step > 0.0)

    def grad_factor(self, x, weights, axes):
        if not self.grad_scaling:
            return 1.0
        n = ops.count_per_param(x, math.prod(weights["step"].shape), weights.get("per_example", False))
        return ops.lsq_grad_factor(n, self.grid[1])

    def quantize(self, x, training, weights, axes):
        qn, qp = self.grid
        step, offset = weights["step"], weights.get("offset")
        if not training:
            s = self.pot(tf.maximum(tf.convert_to_tensor(step), MIN_STEP))
            b = 0.0 if offset is None else tf.convert_to_tensor(offset)
            return ops.fake_quant(x, b - qn * s, b + qp * s, self.bits, self.narrow_range, axes)
        values = [tf.convert_to_tensor(v) for v in ([step] if offset is None else [step, offset])]
        g = self.grad_factor(x, weights, axes)
        s = self.pot(tf.maximum(ops.grad_scale(values[0], g), MIN_STEP))
        s = self.broadcast(s, x, axes)
        if offset is None:
            return ops.uniform_ste(x, s, qn, qp)
        b = self.broadcast(ops.grad_scale(values[1], g), x, axes)
        if self.nudge_zero_point:
            b = b + tf.stop_gradient(ops.nudged_offset(b, s, qn, qp) - b)
        return ops.uniform_ste(x, s, qn, qp, offset=b)
