"""The tfmot pieces a quantized model is made of.

- ``LayerQuantizeConfig``: a tfmot ``QuantizeConfig`` built from a ``LayerSpec`` and quantizer
  instances (weights by attribute name, activation functions, output).
- ``QuantizeWrapper``: tfmot's ``QuantizeWrapperV2`` with two changes: activation functions are
  simulated by our own code (tfmot's ``QuantizeAwareActivation`` rejects relu6, elu, hard-swish and
  custom functions), and a calibration switch runs quantizers in training mode while the wrapped
  layer (BatchNormalization, Dropout) stays in inference mode.
- ``QuantizeInput``: tfmot's ``QuantizeLayer`` with the same calibration switch.
- ``FixedRangeQuantizer``: the fixed output range of softmax/sigmoid/tanh (TFLite's fixed (S, Z)).

All are registered as Keras-serializable, so saved models load without ``quantize_scope``.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from typing import Any, Dict, Optional

from qresearch import _autograph
from qresearch._compat import keras, tf, tfmot
from qresearch.quantizers import ops
from qresearch.quantizers.base import Quantizer
from qresearch import kernels as K
from qresearch.schemes.attrs import get_attr, has_attrs, set_attr  # noqa: F401  (re-exported)
from qresearch.schemes.emulation import IntegerEmulation
from qresearch.schemes.layers import fused_relu, layer_spec
from qresearch.schemes.lowered_activations import lowered
from qresearch.quantizers.registry import register as register_quantizer

# tfmot's public API exports neither QuantizeLayer nor smart_cond; both live at these paths in 0.8.
from tensorflow_model_optimization.python.core.keras.utils import smart_cond  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (  # noqa: E402
    QuantizeLayer as _QL)

_QW = tfmot.quantization.keras.QuantizeWrapperV2
_log = logging.getLogger(__name__)

_state = threading.local()


def calibrating() -> bool:
    return getattr(_state, "calibrating", False)


@contextlib.contextmanager
def calibration_mode():
    """Quantizers observe data (training mode); the layers themselves run in inference mode."""
    old = calibrating()
    _state.calibrating = True
    try:
        yield
    finally:
        _state.calibrating = old


def _ser(q):
    return None if q is None else keras.utils.legacy.serialize_keras_object(q)


def _de(c):
    return None if c is None else keras.utils.legacy.deserialize_keras_object(c)


@register_quantizer("fixed_range")
class FixedRangeQuantizer(Quantizer):
    """Fake-quantize onto a fixed real range ``[range_min, range_max]`` (no learned parameters).

    At 8 bits with [0, 255/256] this is TFLite's softmax/logistic output (S=1/256, Z=-128),
    with [-1, 127/128] its tanh output (S=1/128, Z=0).
    """

    supports_pot_scales = False

    def __init__(self, bits=8, symmetric=False, narrow_range=False, per_channel=False, axis=None,
                 signed=True, scale_format="float32", range_min=0.0, range_max=0.99609375):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        self.range_min = float(range_min)
        self.range_max = float(range_max)

    def quantize(self, x, training, weights, axes):
        return ops.fake_quant(x, self.range_min, self.range_max, self.bits, self.narrow_range)


@keras.utils.register_keras_serializable(package="qresearch")
class LayerQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Which tensors of one layer quantize, and with which quantizers.

    Args:
      weights: ``{attribute name: Quantizer}``.
      activations: ``{attribute name: {"pre": Quantizer|None, "post": Quantizer|None}}``: quantizers on
        the input and output of the activation function held in that attribute, and ``"inner"`` where the
        runtime runs that function as several ops (``lowered_activations.py``: swish's sigmoid grid).
      output: the output quantizer, or None.
      info: plain-data notes for reports (kind, folded BN, bit widths).
      inner: the quantizer of the tensor between the two ops the converter makes of the layer's call
        (``LayerSpec.split``: Rescaling with an offset), or None.
    """

    def __init__(self, weights: Optional[Dict[str, Any]] = None, activations: Optional[Dict[str, Any]] = None,
                 output=None, info: Optional[Dict[str, Any]] = None, inner=None):
        self.weights = dict(weights or {})
        self.activations = {k: dict(v) for k, v in (activations or {}).items()}
        self.output = output
        self.info = dict(info or {})
        self.inner = inner

    # tfmot API
    def get_weights_and_quantizers(self, layer):
        return [(get_attr(layer, attr), q) for attr, q in self.weights.items()]

    def set_quantize_weights(self, layer, quantize_weights):
        for attr, w in zip(self.weights, quantize_weights):
            set_attr(layer, attr, w)

    def get_activations_and_quantizers(self, layer):
        return []  # simulated by QuantizeWrapper itself

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [self.output] if self.output is not None else []

    def get_config(self):
        return {
            "weights": {k: _ser(q) for k, q in self.weights.items()},
            "activations": {k: {where: _ser(q) for where, q in v.items()} for k, v in self.activations.items()},
            "output": _ser(self.output),
            "info": self.info,
            **({"inner": _ser(self.inner)} if self.inner is not None else {}),
        }

    @classmethod
    def from_config(cls, config):
        return cls(
            weights={k: _de(c) for k, c in config.get("weights", {}).items()},
            activations={k: {where: _de(c) for where, c in v.items()}
                         for k, v in config.get("activations", {}).items()},
            output=_de(config.get("output")),
            info=config.get("info"),
            inner=_de(config.get("inner")),
        )

    def __eq__(self, other):
        return isinstance(other, LayerQuantizeConfig) and self.get_config() == other.get_config()


@keras.utils.register_keras_serializable(package="qresearch")
class QuantizeWrapper(IntegerEmulation, _QW):
    """tfmot ``QuantizeWrapperV2`` driven by a ``LayerQuantizeConfig``; in inference, layers whose target
    names a kernel set run as that set's integer kernel (``IntegerEmulation``, emulation.py)."""

    def __call__(self, inputs, *args, **kwargs):
        if not self.built and not has_attrs(self.layer, self.quantize_config.weights):
            # a layer that creates its weights on its first call (MultiHeadAttention): build it with the real
            # arguments, which build(input_shape) alone cannot (also when a saved model is rebuilt)
            self.layer(inputs, *args, **{k: v for k, v in kwargs.items() if k != "training"})
        if getattr(self, "_input_source", None) is None and hasattr(inputs, "_keras_history"):
            # the grid and shape of this layer's input, for the integer-kernel emulation
            object.__setattr__(self, "_input_source", _range_source(inputs) or False)
            object.__setattr__(self, "_input_shape", tuple(inputs.shape))
        elif getattr(self, "_input_sources", None) is None and isinstance(inputs, (list, tuple)) \
                and all(hasattr(t, "_keras_history") for t in inputs):
            object.__setattr__(self, "_input_sources", [_range_source(t) for t in inputs])
            object.__setattr__(self, "_input_shapes", [tuple(t.shape[1:]) for t in inputs])
        return super().__call__(inputs, *args, **kwargs)

    def finalize_state(self):
        # Keras calls this on the model's layers after loading weights; a preprocessing layer (Normalization)
        # recomputes its constants from its adapted weights here, and Keras does not reach a wrapped one
        self.layer.finalize_state()

    def build(self, input_shape):
        self._trainable_weights.extend(self.layer.trainable_weights)  # QuantizeWrapperV2's weight order
        keras.layers.Wrapper.build(self, input_shape)
        self.optimizer_step = self.add_weight(
            "optimizer_step", initializer=keras.initializers.Constant(-1), dtype=tf.int32, trainable=False)
        cfg = self.quantize_config
        self._weight_vars = []
        for attr, quantizer in cfg.weights.items():
            weight = get_attr(self.layer, attr)
            qvars = quantizer.build(weight.shape, attr.replace(".", "_"), self)
            self._weight_vars.append((weight, quantizer, qvars))
            self._trainable_weights.append(weight)
        self._activation_vars = {}
        for attr, qs in cfg.activations.items():
            built = {}
            for where in ("pre", "inner", "post"):
                q = qs.get(where)
                if q is not None:
                    built[where] = (q, q.build(None, f"{attr}_{where}", self))
            self._activation_vars[attr] = built
        self._quantize_activations = []
        self._output_quantizers = cfg.get_output_quantizers(self.layer)
        if self._output_quantizers:
            self._output_quantizer_vars = self._output_quantizers[0].build(None, "output", self)
        if cfg.inner is not None:
            self._inner_quantizer_vars = cfg.inner.build(None, "inner", self)
        self.built = True

    @staticmethod
    def _q(quantizer, x, training, qvars):
        if not isinstance(quantizer, Quantizer):  # a tfmot quantizer of the user's: converted as before
            quantizer = _autograph.user_code(quantizer)
        return smart_cond(training, lambda: quantizer(x, True, weights=qvars),
                          lambda: quantizer(x, False, weights=qvars))

    @_autograph.static  # the layer's own call and plugin quantizers still convert (_autograph.user_code)
    def call(self, inputs, training=None, **kwargs):
        if training is None:
            training = keras.backend.learning_phase()
        kernels = None if calibrating() else K.active_kernels(self.quantize_config.info.get("kernels"))
        plan = self._integer_plan() if kernels is not None else None
        static = training if isinstance(training, (bool, int)) else tf.get_static_value(training)
        if kernels is not None and static is not None and not bool(static) and self._output_quantizers \
                and K.fused_upstream(*self._output_source()) and K.pure_fake_quant(*self._output_source()):
            return inputs  # a ReLU the integer kernel before computed (emulation.Plan.consumer_fused)
        if plan is not None:
            if static is not None and not bool(static):
                return self._integer_call(inputs, kwargs, kernels, plan)
            if static is None:
                return smart_cond(training, lambda: self._float_call(inputs, training, kwargs),
                                  lambda: self._integer_call(inputs, kwargs, kernels, plan))
        return self._float_call(inputs, training, kwargs)

    def _float_call(self, inputs, training, kwargs):
        layer_training = training
        if calibrating():
            training, layer_training = True, False
        quantized = [self._q(q, w, training, v) for w, q, v in self._live_weights()]
        self.quantize_config.set_quantize_weights(self.layer, quantized)
        weight_attrs = {attr: w for attr, (w, _, _) in zip(self.quantize_config.weights, self._weight_vars)}

        originals = {}
        for attr, built in self._activation_vars.items():
            fn = getattr(self.layer, attr)
            originals[attr] = fn
            setattr(self.layer, attr, self._quantized_activation(fn, built, training))
        try:
            if self.quantize_config.inner is not None:   # the converter's two ops, the tensor between quantized
                inner, inner_vars = self.quantize_config.inner, self._inner_quantizer_vars
                outputs = layer_spec(self.layer).split.run(self.layer, inputs,
                                                           lambda t: self._q(inner, t, training, inner_vars))
            else:
                outputs = self._call_layer(inputs, layer_training, kwargs)
        finally:
            # Put the variables and functions back: the wrapped layer stays a normal layer between calls
            # (its weights list, get_weights and get_config unchanged).
            for attr, fn in originals.items():
                setattr(self.layer, attr, fn)
            for attr, var in weight_attrs.items():
                set_attr(self.layer, attr, var)

        if not self._output_quantizers:
            return outputs
        if isinstance(outputs, (list, tuple)):
            raise RuntimeError(f"layer {self.layer.name!r} returns several tensors; give it "
                               "quantize_output=False in register_layer")
        return self._q(self._output_quantizers[0], outputs, training, self._output_quantizer_vars)

    def output_grid_source(self):
        """(quantizer, variables, name) of the per-tensor weight quantizer whose grid the layer's output keeps
        (``LayerSpec.output_grid``: an Embedding's gathered table), or None."""
        attr = getattr(layer_spec(self.layer), "output_grid", None)
        for (w_attr, (_, quantizer, qvars)) in zip(self.quantize_config.weights, getattr(self, "_weight_vars", ())):
            # a range read from the tensor itself (pot's mse choice) would be re-chosen from the gathered rows
            if w_attr == attr and not quantizer.per_channel and not quantizer.range_from_input():
                return quantizer, qvars, self.name
        return None

    def _live_weights(self):
        """``(weight, quantizer, its variables)`` per quantized weight, as this call quantizes it: the weight
        variables themselves here; ``BatchStatsFold`` gives its BN-folded kernel instead."""
        return self._weight_vars

    def _call_layer(self, inputs, training, kwargs):
        """The wrapped layer's own ``call`` (not ``__call__``: no new node, no autocast), or its registered
        ``LayerSpec.call`` where that call would hide a quantized weight from the converter."""
        custom = getattr(layer_spec(self.layer), "call", None)
        if custom is not None:
            outputs = custom(self.layer, inputs, **kwargs)
            if outputs is not None:
                return outputs
        call = _autograph.user_code(self.layer.call)
        if "training" in inspect.signature(self.layer.call).parameters:
            return call(inputs, training=training, **kwargs)
        return call(inputs, **kwargs)

    def _quantized_activation(self, fn, built, training):
        if "inner" in built:
            q, v = built["inner"]
            fn = lowered(fn, lambda t: self._q(q, t, training, v))

        def activation(x, *args, **kwargs):
            if "pre" in built:
                q, v = built["pre"]
                x = self._q(q, x, training, v)
            x = _autograph.user_code(fn)(x, *args, **kwargs)
            if "post" in built:
                q, v = built["post"]
                x = self._q(q, x, training, v)
            return x

        return activation

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        quantize_config = keras.utils.legacy.deserialize_keras_object(config.pop("quantize_config"))
        layer = keras.layers.deserialize(config.pop("layer"))
        return cls(layer=layer, quantize_config=quantize_config, **config)


@keras.utils.register_keras_serializable(package="qresearch")
class QuantizeInput(_QL):
    """Quantizes a float tensor entering quantized layers (model inputs, outputs of float layers)."""

    def __init__(self, quantizer, kernels=None, **kwargs):
        super().__init__(quantizer, **kwargs)
        self.kernels = kernels  # integer kernel set emulated in inference (qresearch.kernels)

    def add_weight(self, *args, trainable=None, **kwargs):
        # Built non-trainable (a model input's quantizer under ``train_input_quantizers: false``, or
        # ``below_8_bits`` at 8 bits): its parameters are not trainable variables, so a gradient tape does not even
        # record the path to them.
        return super().add_weight(*args, trainable=(trainable is None or bool(trainable)) and self.trainable,
                                  **kwargs)

    @_autograph.static
    def call(self, inputs, training=None):
        if calibrating():
            training = True
        if training is None:
            training = keras.backend.learning_phase()
        kernels = None if training is True or not self.quantizer else K.active_kernels(self.kernels)
        handler = kernels.handler("QUANTIZE") if kernels is not None else None
        if handler is None:
            return super().call(inputs, training=training)
        return smart_cond(training, lambda: super(QuantizeInput, self).call(inputs, training=True),
                          lambda: self._quantize_op(inputs, kernels, handler))

    def _quantize_op(self, inputs, kernels, handler):
        """TFLite QUANTIZE's rounding (half away from zero on x / S), where FakeQuant rounds half up."""
        rng = K.fake_quant_range(self.quantizer, self.quantizer_vars, inputs)
        if rng is None or not inputs.dtype.is_floating:
            return super().call(inputs, training=False)
        g = K.grid_of(*rng)
        y = handler(kernels, K.OpCall([tf.cast(inputs, tf.float32)], [], g))
        out = tf.cast(self.quantizer(y, False, weights=self.quantizer_vars), inputs.dtype)
        return K.hand_on(y, out, self.quantizer, self.quantizer_vars) if out.dtype == tf.float32 else out

    def get_config(self):
        return dict(super().get_config(), kernels=self.kernels)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        quantizer = keras.utils.legacy.deserialize_keras_object(config.pop("quantizer"))
        return cls(quantizer=quantizer, **config)


def latent_value(weight, quantizer, axes):
    """The new value of ``weight`` (None: unchanged): ``quantizer``'s latent weight of it."""
    return quantizer.latent_weights(weight.numpy(), axes)


def start_latent_weights(wrapper, shared: bool = False) -> None:
    """Set each weight ``wrapper`` quantizes (ours, or tfmot's wrapper with a user's ``QuantizeConfig``) to its
    quantizer's ``latent_weights`` of the float weight, where it has one: once, by ``schemes.build``, after the
    float model's weights are copied in. ``shared``: the wrapped layer is the float model's own (a custom layer its
    config cannot rebuild), whose weights stay as they are."""
    latent_of = getattr(wrapper, "_latent_value", latent_value)   # BatchStatsFold: through its fold
    for weight, quantizer, qvars in getattr(wrapper, "_weight_vars", ()):
        if not isinstance(quantizer, Quantizer) or type(quantizer).latent_weights is Quantizer.latent_weights:
            continue   # no latent rule (a tfmot quantizer, most of ours): no copy of the weight
        latent = latent_of(weight, quantizer, qvars.get("channel_axes"))
        if latent is None:
            continue
        if shared:
            _log.warning("layer %r shares its weights with the float model, so its %s starts from the float weight, "
                         "not from %s's latent weight (latent_init). Fix: give %s a get_config() that returns every "
                         "__init__ argument, so the QAT model gets its own copy.", wrapper.layer.name,
                         weight.name.split("/")[-1].split(":")[0], quantizer.registry_name,
                         type(wrapper.layer).__name__)
            continue
        weight.assign(latent)


def _range_source(tensor, depth: int = 8):
    """(quantizer, variables, layer name) of the quantizer that produced ``tensor`` (a KerasTensor), looking
    back through single-input layers without quantizers (max pooling, reshape, ...)."""
    for _ in range(depth):
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer = history.layer
        if isinstance(layer, QuantizeWrapper):
            if layer._output_quantizers:
                return layer._output_quantizers[0], layer._output_quantizer_vars, layer.name
            return layer.output_grid_source()
        if isinstance(layer, QuantizeInput):
            return (layer.quantizer, layer.quantizer_vars, layer.name) if layer.quantizer else None
        if isinstance(layer, QuantizeLike):
            return layer._source
        if isinstance(layer, _QW):  # a wrapper with a user's QuantizeConfig (annotate.py): its grid is unknown
            return None
        if fused_relu(layer) is not None:
            # a ReLU with no quantizer of its own after a quantized tensor (a transposed conv's, which no op fuses)
            # shares a concatenation's range: its RELU op requantizes onto that grid, not its input's
            return None
        node = layer._inbound_nodes[history.node_index]
        inputs = node.keras_inputs
        if len(inputs) != 1:
            return None
        tensor = inputs[0]
    return None


@keras.utils.register_keras_serializable(package="qresearch")
class QuantizeLike(keras.layers.Layer):
    """Re-quantizes a tensor onto its input's grid (same scale and zero point, shared variables).

    After ops whose int8 kernel keeps the input's (S, Z) but whose float result leaves the grid
    (AVERAGE_POOL_2D, bilinear resize), so the simulation rounds where TFLite rounds. The range is
    the producer's: read, never updated here. After a layer whose output is made of a weight's values
    (an Embedding: ``LayerSpec.output_grid``), the grid is that weight's.
    """

    def __init__(self, kernels=None, **kwargs):
        super().__init__(**kwargs)
        self._source = None
        self.kernels = kernels  # integer kernel set emulated in inference (qresearch.kernels)

    def get_config(self):
        return dict(super().get_config(), kernels=self.kernels)

    def __call__(self, inputs, *args, **kwargs):
        # [output, the op's input] after a bilinear resize: the emulation recomputes RESIZE_BILINEAR from the input
        first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        if self._source is None and hasattr(first, "_keras_history"):
            layer = first._keras_history.layer
            node = layer._inbound_nodes[first._keras_history.node_index] if layer._inbound_nodes else None
            weight_grid = layer.output_grid_source() if isinstance(layer, QuantizeWrapper) else None
            if weight_grid is not None:
                self._source = weight_grid   # the output is made of the weight's values
            elif node is not None and len(node.keras_inputs) == 1:
                self._source = _range_source(node.keras_inputs[0])
                shape = node.keras_inputs[0].shape
                if isinstance(layer, keras.layers.AveragePooling2D) and layer.data_format == "channels_last" \
                        and shape.rank == 4 and None not in (shape[1], shape[2]):
                    object.__setattr__(self, "_pool_counts", K.average_pool_counts(
                        int(shape[1]), int(shape[2]), layer.pool_size, layer.strides, layer.padding))
                elif isinstance(layer, keras.layers.AveragePooling1D) and layer.data_format == "channels_last" \
                        and shape.rank == 3 and shape[1] is not None:   # AVERAGE_POOL_2D over (1, L)
                    counts = K.average_pool_counts(1, int(shape[1]), (1,) + tuple(layer.pool_size),
                                                   (1,) + tuple(layer.strides), layer.padding)
                    object.__setattr__(self, "_pool_counts", counts[0])
                if isinstance(inputs, (list, tuple)) and first.shape.rank == 4 and None not in first.shape[1:3]:
                    object.__setattr__(self, "_resize_size", (int(first.shape[1]), int(first.shape[2])))
        return super().__call__(inputs, *args, **kwargs)

    @property
    def source_name(self):
        return self._source[2] if self._source else None

    @property
    def source_quantizer(self):
        """The quantizer whose grid this layer re-quantizes onto, or None."""
        return self._source[0] if self._source else None

    def call(self, inputs):
        resize_input = None
        if isinstance(inputs, (list, tuple)):
            inputs, resize_input = inputs
        if self._source is None:
            return inputs
        quantizer, qvars, _ = self._source
        size = getattr(self, "_resize_size", None)
        if resize_input is not None and size is not None:
            kernels = K.active_kernels(self.kernels)
            handler = kernels.handler("RESIZE_BILINEAR") if kernels is not None else None
            g = K.grid_of_quantizer(quantizer, qvars) if handler is not None else None
            if g is not None:   # RESIZE_BILINEAR's 10-bit weights and its rounding
                y = handler(kernels, K.OpCall([resize_input], [g], g, attrs={"size": size}))
                return quantizer(y, False, weights=qvars)
        counts = getattr(self, "_pool_counts", None)
        kernels = K.active_kernels(self.kernels) if counts is not None else None
        handler = kernels.handler("AVERAGE_POOL_2D") if kernels is not None else None
        if handler is not None:
            g = K.grid_of_quantizer(quantizer, qvars)
            if g is not None:  # AVERAGE_POOL_2D's own rounding (half away from raw 0)
                y = handler(kernels, K.OpCall([inputs], [g], g, attrs={"counts": counts}))
                return quantizer(y, False, weights=qvars)
        return quantizer(inputs, False, weights=qvars)


@keras.utils.register_keras_serializable(package="qresearch")
class ChannelAffine(keras.layers.DepthwiseConv2D):
    """``y = x·k[c] + b[c]`` on the last axis: a BatchNormalization that cannot be folded, in the form
    TFLite runs in int8 (a 1x1 DEPTHWISE_CONV_2D with per-channel weights, tflite-int8-spec.md §5).

    Inputs of rank 2 to 5 (channels last); ranks other than 4 are reshaped to 4-D around the depthwise
    conv (RESHAPE keeps (S, Z)). The weights are ``depthwise_kernel`` (1, 1, C, 1) = γ/√(σ²+ε) and
    ``bias`` (C,) = β - μ·γ/√(σ²+ε), so a weight quantizer sees what TFLite deploys.
    """

    def __init__(self, kernel_size=1, **kwargs):
        kwargs.pop("depth_multiplier", None)
        super().__init__(kernel_size=1, depth_multiplier=1, **kwargs)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, max_ndim=5)

    def build(self, input_shape):
        shape = tf.TensorShape(input_shape)
        if shape.rank is None or shape.rank < 2 or shape.rank > 5 or shape[-1] is None:
            raise ValueError(f"ChannelAffine needs a rank 2-5 input with a known last axis, got {shape}")
        super().build(tf.TensorShape([None, 1, 1, shape[-1]]))
        self.input_spec = keras.layers.InputSpec(min_ndim=2, max_ndim=5, axes={-1: shape[-1]})

    def call(self, inputs):
        rank = inputs.shape.rank
        if rank == 4:
            return super().call(inputs)
        channels = inputs.shape[-1]
        if rank == 2:
            x = tf.reshape(inputs, [-1, 1, 1, channels])
        elif rank == 3:
            x = tf.expand_dims(inputs, 2)
        else:  # (N, D, H, W, C) -> (N, D·H, W, C)
            s = tf.shape(inputs)
            x = tf.reshape(inputs, [-1, s[1] * s[2], s[3], channels])
        y = super().call(x)
        if rank == 2:
            return tf.reshape(y, [-1, channels])
        if rank == 3:
            return tf.squeeze(y, 2)
        return tf.reshape(y, tf.shape(inputs))

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)


CUSTOM_OBJECTS = {
    "qresearch>ChannelAffine": ChannelAffine,
    "qresearch>QuantizeWrapper": QuantizeWrapper,
    "qresearch>QuantizeInput": QuantizeInput,
    "qresearch>QuantizeLike": QuantizeLike,
    "qresearch>LayerQuantizeConfig": LayerQuantizeConfig,
}
