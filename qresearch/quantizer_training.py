"""Training settings of quantizer parameters (steps, clips, offsets): a learning-rate multiplier, no
weight decay, and a warm-up that holds them for the first N steps.

Quantizer parameters are the trainable variables a quantizer builds (``quantizers.is_quantizer_param``).
The multiplier rescales each one's update after the optimizer applied it, ``v <- v0 + k·(v1 - v0)``:
the update of every tf_keras optimizer used here (SGD with momentum, Adam, AdamW, RMSprop) is linear in
the learning rate given the gradient history, so this trains those variables at ``k·lr`` exactly, with
any schedule. Scaling their gradients would not: Adam's step does not change with the gradient's scale.
LSQ's gradient scale (Esser et al. 2020, §2.2) is inside the quantizer and unaffected. ``k`` is 0 while
frozen (the optimizer's moments still see the gradients). Weight decay is the optimizers' own decoupled
decay; ``exclude_from_weight_decay`` keeps it off quantizer parameters.
"""
from __future__ import annotations

from typing import Dict, List

from qresearch._compat import tf
from qresearch.config import QuantizerTraining
from qresearch.quantizers.base import is_quantizer_param

_CLASSES: Dict[type, type] = {}


def quantizer_variables(model) -> List[tf.Variable]:
    """The model's trainable quantizer parameters."""
    return [v for v in model.trainable_variables if is_quantizer_param(v)]


def configure(optimizer, model, settings: QuantizerTraining):
    """Apply ``settings`` to ``optimizer`` for ``model``'s quantizer parameters; returns the optimizer.

    Call before the first training step (weight-decay exclusions are read when the optimizer builds)."""
    qvars = quantizer_variables(model)
    if not qvars:
        return optimizer
    if not settings.weight_decay and getattr(optimizer, "weight_decay", None):
        optimizer.exclude_from_weight_decay(var_list=qvars)
    if settings.changes_updates:
        optimizer.__class__ = _scaled_class(type(optimizer))
        optimizer._quantizer_settings = settings
    return optimizer


def configure_optimizer(optimizer, model):
    """``optimizer`` set up for a ``qresearch.quantize`` model with that model's scheme's quantizer-training
    settings (``quantizer_lr_multiplier``, ``quantizer_weight_decay``, ``freeze_quantizer_steps``), as the
    runner trains it: ``qat.compile(qresearch.configure_optimizer(keras.optimizers.Adam(5e-4), qat), ...)``.
    ``optimizer`` is an optimizer instance (not a string); call before the first training step."""
    from qresearch.config import quantizer_training

    info = getattr(model, "qresearch_info", None)
    if not isinstance(info, dict) or "scheme" not in info:
        raise ValueError(f"configure_optimizer: model {getattr(model, 'name', model)!r} was not made by "
                         "qresearch.quantize (it has no qresearch_info['scheme']); pass the model quantize "
                         "returned, or call qresearch.quantizer_training.configure(optimizer, model, "
                         "qresearch.config.quantizer_training(scheme_dict)) yourself")
    if isinstance(optimizer, str) or not hasattr(optimizer, "apply_gradients"):
        raise TypeError(f"configure_optimizer: expected a tf_keras optimizer instance, got {optimizer!r}; "
                        "e.g. qresearch.keras.optimizers.Adam(5e-4)")
    return configure(optimizer, model, quantizer_training(info["scheme"]))


def _scaled_class(base: type) -> type:
    """``base`` with quantizer-parameter updates rescaled (the same class name: saved configs load as ``base``)."""
    if base not in _CLASSES:
        _CLASSES[base] = type(base.__name__, (base,), {"apply_gradients": _apply_gradients,
                                                      "__module__": base.__module__})
    return _CLASSES[base]


def _apply_gradients(self, grads_and_vars, *args, **kwargs):
    grads_and_vars = list(grads_and_vars)
    settings: QuantizerTraining = self._quantizer_settings
    qvars = [v for g, v in grads_and_vars if g is not None and is_quantizer_param(v)]
    step = tf.identity(self.iterations)            # this update's index, read before it increments
    before = [tf.identity(v) for v in qvars]
    result = super(type(self), self).apply_gradients(grads_and_vars, *args, **kwargs)
    k = tf.constant(settings.lr_multiplier, tf.float32)
    if settings.freeze_steps:
        k = tf.where(step < settings.freeze_steps, tf.zeros_like(k), k)
    for var, old in zip(qvars, before):
        new = tf.identity(var)
        kk = tf.cast(k, var.dtype)
        # k = 1 keeps the optimizer's value bit for bit, k = 0 the old one.
        var.assign(tf.where(tf.equal(kk, 1.0), new, old + kk * (new - old)))
    return result
