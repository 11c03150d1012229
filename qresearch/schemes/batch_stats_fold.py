"""BN folded into the conv/dense before it, trained with batch statistics (``bn_folding: fold_batch_stats``).

Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference: A whitepaper"
(arXiv:1806.08342), §3.2.2 and Figures 9-10. The static fold (``bn_folding: fold``) trains the folded kernel
``W·γ/σ`` as one weight, so BN's batch normalisation is gone from QAT. Here the layer keeps the conv weights
``W`` (and bias ``b``) and the BN parameters ``γ, β`` and moving ``μ, σ² `` (``σ = √(σ²+ε)``), and each training
step, until ``freeze_steps`` steps have run:

1. a float pass ``y = conv(x, W) + b`` gives the batch statistics ``μ_B, σ_B²`` per output channel;
2. the weight quantizer fake-quantizes ``W_fold = W·γ/σ`` (moving σ: the kernel inference deploys);
3. ``out = conv(x, Q(W_fold))·(σ/σ_B) + β + γ·(b - μ_B)/σ_B``: the correction ``c = σ/σ_B`` makes the output
   the batch-normalised one while the quantized weights are inference's;
4. the moving statistics move as Keras' BatchNormalization moves them (its momentum; the unbiased batch
   variance where Keras runs the fused kernel: 4-D inputs).

Gradients reach ``W, b, γ, β`` through both passes and the batch statistics, as through BN. After
``freeze_steps`` training steps (None: never) the statistics freeze: ``c = 1``, bias ``β + γ·(b - μ)/σ``, one
conv pass per step. Inference (``training=False``) and calibration always run that frozen form, through
``QuantizeWrapper`` itself with the folded kernel and bias in place of the variables: the integer emulation,
the export trace and the TFLite converter see the static fold's graph (the fold's arithmetic is
``folding.py``'s, on constants once the converter freezes the variables).
"""
from __future__ import annotations

import contextlib

import numpy as np

from qresearch import _autograph
from qresearch._compat import keras, tf
from qresearch.schemes.attrs import get_attr, set_attr
from qresearch.schemes.folding import fold_factor
from qresearch.schemes.layers import layer_spec
from qresearch.schemes.wrappers import QuantizeWrapper, calibrating, latent_value, smart_cond

#: The BN facts the layer needs (from the BatchNormalization it replaces).
BN_KEYS = ("momentum", "epsilon", "center", "scale", "unbiased_variance")


def batch_norm_config(bn) -> dict:
    """The ``batch_norm`` argument of ``BatchStatsFold`` for a built Keras ``BatchNormalization``. Keras' fused
    kernel (4-D inputs) updates the moving variance with the unbiased batch variance, the other path with the
    biased one; both normalise with the biased one."""
    return {"momentum": float(bn.momentum), "epsilon": float(bn.epsilon), "center": bool(bn.center),
            "scale": bool(bn.scale), "unbiased_variance": bool(getattr(bn, "fused", False))}


@keras.utils.register_keras_serializable(package="qresearch")
class BatchStatsFold(QuantizeWrapper):
    """A ``QuantizeWrapper`` around a linear conv/dense (with ``use_bias=True``) that also holds the BN after
    it (``bn_gamma``, ``bn_beta``, ``bn_moving_mean``, ``bn_moving_variance``) and counts its training steps
    (``bn_steps``). See the module doc for the maths; the layer's fold rule is its ``LayerSpec.fold``."""

    def __init__(self, layer, quantize_config, batch_norm=None, freeze_steps=None, **kwargs):
        super().__init__(layer, quantize_config, **kwargs)
        bn = dict(batch_norm or {})
        unknown = set(bn) - set(BN_KEYS)
        if unknown:
            raise ValueError(f"BatchStatsFold: unknown batch_norm keys {sorted(unknown)}; valid: {BN_KEYS}")
        self.batch_norm = {"momentum": 0.99, "epsilon": 1e-3, "center": True, "scale": True,
                           "unbiased_variance": False, **bn}
        if freeze_steps is not None and (isinstance(freeze_steps, bool) or int(freeze_steps) != freeze_steps
                                         or freeze_steps < 0):
            raise ValueError(f"BatchStatsFold: freeze_steps must be an integer >= 0 or None, got {freeze_steps!r}")
        self.freeze_steps = None if freeze_steps is None else int(freeze_steps)
        spec = layer_spec(layer)
        if spec is None or spec.fold is None:
            raise ValueError(f"BatchStatsFold: layer {layer.name!r} ({type(layer).__name__}) has no fold rule "
                             "(register_layer(..., fold=(weight, rule)))")
        object.__setattr__(self, "_fold", spec.fold)  # (weight attr, rule): plain attributes, not tracked
        object.__setattr__(self, "_live_kernel", None)

    def get_config(self):
        return dict(super().get_config(), batch_norm=dict(self.batch_norm), freeze_steps=self.freeze_steps)

    # ------------------------------------------------------------------ weights
    def build(self, input_shape):
        super().build(input_shape)
        channels = int(self.layer.compute_output_shape(input_shape)[-1])
        bn = self.batch_norm
        self.bn_gamma = self.add_weight("bn_gamma", shape=(channels,), initializer="ones", trainable=bn["scale"])
        self.bn_beta = self.add_weight("bn_beta", shape=(channels,), initializer="zeros", trainable=bn["center"])
        self.bn_moving_mean = self.add_weight("bn_moving_mean", shape=(channels,), initializer="zeros",
                                              trainable=False)
        self.bn_moving_variance = self.add_weight("bn_moving_variance", shape=(channels,), initializer="ones",
                                                  trainable=False)
        self.bn_steps = self.add_weight("bn_steps", shape=(), initializer="zeros", dtype=tf.int64, trainable=False)

    def set_batch_norm(self, bn) -> None:
        """Take the parameters and moving statistics of a Keras ``BatchNormalization``."""
        mean = bn.moving_mean.numpy()
        self.bn_gamma.assign(bn.gamma.numpy() if bn.gamma is not None else tf.ones_like(mean))
        self.bn_beta.assign(bn.beta.numpy() if bn.beta is not None else tf.zeros_like(mean))
        self.bn_moving_mean.assign(mean)
        self.bn_moving_variance.assign(bn.moving_variance.numpy())

    @property
    def bn_weights(self):
        """The BN's parameters and moving statistics (layer weights, not quantizer state: transfer.py)."""
        return [self.bn_gamma, self.bn_beta, self.bn_moving_mean, self.bn_moving_variance]

    @property
    def _kernel(self):
        return get_attr(self.layer, self._fold[0])

    def folded(self):
        """``(W·γ/σ, β + (b - μ)·γ/σ)`` from the moving statistics: the static fold's kernel and bias."""
        attr, rule = self._fold
        g = fold_factor(self.bn_gamma, self.bn_moving_variance, self.batch_norm["epsilon"])
        return rule(self._kernel, g), self.bn_beta + (self.layer.bias - self.bn_moving_mean) * g

    def _latent_value(self, weight, quantizer, axes):
        """The quantizer sees ``W·g`` (``g = γ/σ``, moving statistics): its latent value of that, unfolded by
        ``1/g`` (a channel with ``g = 0`` contributes nothing either way and gets 0)."""
        rule = self._fold[1]
        if weight is not self._kernel:
            return latent_value(weight, quantizer, axes)
        g = fold_factor(self.bn_gamma.numpy(), self.bn_moving_variance.numpy(), self.batch_norm["epsilon"])
        latent = quantizer.latent_weights(rule(weight.numpy(), g), axes)
        if latent is None:
            return None
        return rule(latent, np.divide(1.0, g, out=np.zeros_like(g), where=g != 0))

    def _live_weights(self):
        if self._live_kernel is None:
            return self._weight_vars
        return [(self._live_kernel if attr == self._fold[0] else w, q, v)
                for attr, (w, q, v) in zip(self.quantize_config.weights, self._weight_vars)]

    @contextlib.contextmanager
    def _folded(self):
        """The inner layer (and ``_live_weights``) read the folded kernel and bias; the variables come back."""
        attr = self._fold[0]
        kernel_var, bias_var = self._kernel, self.layer.bias
        kernel, bias = self.folded()
        object.__setattr__(self, "_live_kernel", kernel)
        set_attr(self.layer, attr, kernel)
        self.layer.bias = bias
        try:
            yield
        finally:
            object.__setattr__(self, "_live_kernel", None)
            set_attr(self.layer, attr, kernel_var)
            self.layer.bias = bias_var

    # ------------------------------------------------------------------ forward
    @_autograph.static
    def call(self, inputs, training=None, **kwargs):
        if training is None:
            training = keras.backend.learning_phase()
        if calibrating():  # quantizers observe the folded kernel; the layer runs as in inference
            return self._frozen_call(inputs, training, kwargs)
        static = training if isinstance(training, (bool, int)) else tf.get_static_value(training)
        if static is not None:
            return self._training_call(inputs, kwargs) if bool(static) else self._frozen_call(inputs, False, kwargs)
        return smart_cond(training, lambda: self._training_call(inputs, kwargs),
                          lambda: self._frozen_call(inputs, False, kwargs))

    def _frozen_call(self, inputs, training, kwargs):
        """The inference form (QuantizeWrapper's own call, integer emulation included, on the folded weights)."""
        with self._folded():
            return QuantizeWrapper.call(self, inputs, training=training, **kwargs)

    def _training_call(self, inputs, kwargs):
        if self.freeze_steps is None:
            out = self._batch_stats_call(inputs, kwargs)
        else:
            out = tf.cond(self.bn_steps < self.freeze_steps, lambda: self._batch_stats_call(inputs, kwargs),
                          lambda: self._frozen_call(inputs, True, kwargs))
        self.bn_steps.assign_add(1)
        return out

    def _linear(self, inputs, kwargs, kernel, bias):
        """The inner layer's output with ``kernel`` and ``bias`` (None: no bias), without its activation."""
        attr = self._fold[0]
        kernel_var, bias_var, fn = self._kernel, self.layer.bias, self.layer.activation
        set_attr(self.layer, attr, kernel)
        self.layer.bias = tf.zeros_like(bias_var) if bias is None else bias
        self.layer.activation = keras.activations.linear
        try:
            return self._call_layer(inputs, True, kwargs)
        finally:
            set_attr(self.layer, attr, kernel_var)
            self.layer.bias = bias_var
            self.layer.activation = fn

    def _batch_stats_call(self, inputs, kwargs):
        bn, attr, rule = self.batch_norm, self._fold[0], self._fold[1]
        eps, momentum = bn["epsilon"], bn["momentum"]
        kernel, bias = self._kernel, self.layer.bias
        y = self._linear(inputs, kwargs, kernel, bias)  # the float pass: batch statistics of conv(x, W) + b
        axes = list(range(y.shape.rank - 1))
        mean_b, var_b = tf.nn.moments(y, axes)
        sigma_b = tf.sqrt(var_b + eps)
        sigma = tf.sqrt(self.bn_moving_variance + eps)
        w_fold = rule(kernel, fold_factor(self.bn_gamma, self.bn_moving_variance, eps))
        quantized = {a: self._q(q, w_fold if a == attr else w, True, v)
                     for a, (w, q, v) in zip(self.quantize_config.weights, self._weight_vars)}
        z = self._linear(inputs, kwargs, quantized.get(attr, w_fold), None)
        z = z * (sigma / sigma_b) + (self.bn_beta + (bias - mean_b) * (self.bn_gamma / sigma_b))
        fn = self.layer.activation
        built = self._activation_vars.get("activation")
        out = self._quantized_activation(fn, built, True)(z) if built else fn(z)
        self._update_moving(mean_b, var_b, y, momentum, bn["unbiased_variance"])
        if self._output_quantizers:
            out = self._q(self._output_quantizers[0], out, True, self._output_quantizer_vars)
        return out

    def _update_moving(self, mean_b, var_b, y, momentum, unbiased):
        """Keras BatchNormalization's update: ``moving -= (moving - batch)·(1 - momentum)``."""
        if unbiased:
            n = tf.cast(tf.size(y) // tf.shape(y)[-1], var_b.dtype)
            var_b = var_b * n / tf.maximum(n - 1.0, 1.0)
        decay = 1.0 - momentum
        self.bn_moving_mean.assign_sub((self.bn_moving_mean - tf.stop_gradient(mean_b)) * decay)
        self.bn_moving_variance.assign_sub((self.bn_moving_variance - tf.stop_gradient(var_b)) * decay)
