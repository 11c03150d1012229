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
import threading
from typing import Any, Dict, Optional

from qresearch._compat import keras, tf, tfmot
from qresearch.quantizers import ops
from qresearch.quantizers.base import Quantizer
from qresearch.schemes import integer
from qresearch.schemes.layers import activation_name, fused_relu, layer_spec, own_spec
from qresearch.quantizers.registry import register as register_quantizer

# tfmot's public API exports neither QuantizeLayer nor smart_cond; both live at these paths in 0.8.
from tensorflow_model_optimization.python.core.keras.utils import smart_cond  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (  # noqa: E402
    QuantizeLayer as _QL)

_QW = tfmot.quantization.keras.QuantizeWrapperV2

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


def get_attr(layer, path: str):
    """``layer.a.b`` for ``path`` "a.b": weights of sublayers are named by dotted paths."""
    obj = layer
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_attr(layer, path: str, value) -> None:
    head, _, last = path.rpartition(".")
    setattr(get_attr(layer, head) if head else layer, last, value)


def has_attrs(layer, attrs) -> bool:
    """Whether every (dotted) attribute in ``attrs`` is set on ``layer`` (weights built)."""
    try:
        return all(get_attr(layer, a) is not None for a in attrs)
    except AttributeError:
        return False


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
        the input and output of the activation function held in that attribute.
      output: the output quantizer, or None.
      info: plain-data notes for reports (kind, folded BN, bit widths).
    """

    def __init__(self, weights: Optional[Dict[str, Any]] = None, activations: Optional[Dict[str, Any]] = None,
                 output=None, info: Optional[Dict[str, Any]] = None):
        self.weights = dict(weights or {})
        self.activations = {k: dict(v) for k, v in (activations or {}).items()}
        self.output = output
        self.info = dict(info or {})

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
            "activations": {k: {"pre": _ser(v.get("pre")), "post": _ser(v.get("post"))}
                            for k, v in self.activations.items()},
            "output": _ser(self.output),
            "info": self.info,
        }

    @classmethod
    def from_config(cls, config):
        return cls(
            weights={k: _de(c) for k, c in config.get("weights", {}).items()},
            activations={k: {"pre": _de(v.get("pre")), "post": _de(v.get("post"))}
                         for k, v in config.get("activations", {}).items()},
            output=_de(config.get("output")),
            info=config.get("info"),
        )

    def __eq__(self, other):
        return isinstance(other, LayerQuantizeConfig) and self.get_config() == other.get_config()


@keras.utils.register_keras_serializable(package="qresearch")
class QuantizeWrapper(_QW):
    """tfmot ``QuantizeWrapperV2`` driven by a ``LayerQuantizeConfig``."""

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
            for where in ("pre", "post"):
                q = qs.get(where)
                if q is not None:
                    built[where] = (q, q.build(None, f"{attr}_{where}", self))
            self._activation_vars[attr] = built
        self._quantize_activations = []
        self._output_quantizers = cfg.get_output_quantizers(self.layer)
        if self._output_quantizers:
            self._output_quantizer_vars = self._output_quantizers[0].build(None, "output", self)
        self.built = True

    @staticmethod
    def _q(quantizer, x, training, qvars):
        return smart_cond(training, lambda: quantizer(x, True, weights=qvars),
                          lambda: quantizer(x, False, weights=qvars))

    def call(self, inputs, training=None, **kwargs):
        if training is None:
            training = keras.backend.learning_phase()
        kernels = None if calibrating() else integer.active_kernels(self.quantize_config.info.get("kernels"))
        plan = self._integer_plan() if kernels is not None else None
        if plan is not None:
            static = training if isinstance(training, (bool, int)) else tf.get_static_value(training)
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
        quantized = [self._q(q, w, training, v) for w, q, v in self._weight_vars]
        self.quantize_config.set_quantize_weights(self.layer, quantized)
        weight_attrs = {attr: w for attr, (w, _, _) in zip(self.quantize_config.weights, self._weight_vars)}

        originals = {}
        for attr, built in self._activation_vars.items():
            fn = getattr(self.layer, attr)
            originals[attr] = fn
            setattr(self.layer, attr, self._quantized_activation(fn, built, training))
        try:
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

    # ------------------------------------------------------------------ integer-kernel emulation
    def _integer_plan(self):
        """What the emulation needs (schemes/integer.py), or None where this layer keeps the float
        simulation. Each case is one int8 TFLite kernel:

        - "conv": a conv / depthwise / dense (or unfoldable-BN affine) wrapper with one symmetric weight
          quantizer and a known input grid, with a fusable activation (linear/relu/relu6) before its
          output quantizer, or a quantized pre-activation (a LUT activation such as sigmoid follows);
        - "mean": GlobalAveragePooling1D/2D -> MEAN (keepdims=True: 2-D only, its own kernel);
        - "add"/"subtract"/"multiply": Add/Subtract/Multiply of two same-shape quantized tensors;
        - "softmax": Softmax / Activation("softmax") over the last axis; "leaky_relu": LeakyReLU;
        - a "conv" feeding a Concatenate that quantizes for all its inputs requantizes onto that grid;
        - a "conv" or elementwise layer without an output quantizer followed by a ReLU/ReLU6 layer
          (the converter fuses the two) computes the fused result itself, with the ReLU's output grid;
          the ReLU then leaves those values as they are.
        """
        cached = getattr(self, "_integer_plan_cache", None)
        if cached is not None:
            return cached or None
        plan = None
        out = (self._output_quantizers[0], self._output_quantizer_vars) if self._output_quantizers else None
        fused_consumer = None
        if not out and not self._activation_vars:
            consumer = _sole_consumer(self)
            if isinstance(consumer, QuantizeWrapper) and consumer._output_quantizers \
                    and not consumer._activation_vars and fused_relu(consumer.layer) is not None:
                fused_consumer = ((consumer._output_quantizers[0], consumer._output_quantizer_vars),
                                  fused_relu(consumer.layer))
        if not out and self.quantize_config.info.get("output_shared_with"):
            # an input of a Concatenate that quantizes for all its inputs: TFLite's CONCATENATION keeps
            # that one grid, so this layer's kernel requantizes straight onto it
            consumer = _sole_consumer(self)
            if isinstance(consumer, QuantizeWrapper) and consumer._output_quantizers:
                out = (consumer._output_quantizers[0], consumer._output_quantizer_vars)
        if self._weight_vars:
            base = _integer_conv_base(self)
            acts = self._activation_vars.get("activation", {})
            fused = activation_name(getattr(self.layer, "activation", None))
            if base is not None and set(self.quantize_config.activations) <= {"activation"}:
                if not acts and out and fused in integer.FUSED_ACTIVATIONS:
                    plan = dict(base, out=out, fused=fused)
                elif set(acts) == {"pre"}:
                    plan = dict(base, out=acts["pre"], fused="linear")
                elif fused_consumer is not None and fused == "linear":
                    plan = dict(base, out=fused_consumer[0], fused=fused_consumer[1])
        elif out and not self._activation_vars:
            base = _integer_mean_base(self) or _integer_add_base(self) or _integer_softmax_base(self) \
                or _integer_leaky_base(self)
            if base is not None:
                plan = dict(base, out=out, fused="linear")
        elif fused_consumer is not None and _integer_add_base(self) is not None:
            plan = dict(_integer_add_base(self), out=fused_consumer[0], fused=fused_consumer[1])
        if getattr(self, "_outbound_nodes", None):  # decided once the graph around it is complete
            object.__setattr__(self, "_integer_plan_cache", plan or False)
        return plan

    def _integer_call(self, inputs, kwargs, kernels, plan):
        if plan["op"] in ELEMENTWISE and kernels.add_vector is None:
            return self._float_call(inputs, False, kwargs)
        out_grid = _grid(plan["out"])
        sources = [_grid(src[:2]) for src in plan["sources"]]
        if out_grid is None or None in sources:
            return self._float_call(inputs, False, kwargs)
        out_q, out_v = plan["out"]
        if plan["op"] == "mean":
            if plan["keepdims"] and not kernels.mean_keepdims:
                return self._float_call(inputs, False, kwargs)
            mean = integer.mean_keepdims if plan["keepdims"] else integer.mean
            y = mean(kernels, self.layer.call(inputs), plan["count"], sources[0], out_grid)
            return out_q(y, False, weights=out_v)  # identity on its grid, plus any clip it applies first
        if plan["op"] == "leaky_relu":
            y = integer.leaky_relu(kernels, inputs, plan["alpha"], sources[0], out_grid)
            return out_q(y, False, weights=out_v)
        if plan["op"] == "softmax":
            return out_q(integer.softmax(inputs, sources[0], out_grid), False, weights=out_v)
        if plan["op"] in ELEMENTWISE:
            x1, x2 = inputs
            y = ELEMENTWISE[plan["op"]](kernels, x1, x2, sources[0], sources[1], out_grid, plan["fused"])
            return out_q(y, False, weights=out_v)
        weight, wq, wv = plan["weight"]
        w_range = integer.fake_quant_range(wq, wv, weight)
        if w_range is None:
            return self._float_call(inputs, False, kwargs)
        w_grid = integer.grid_of(*w_range)
        fn = getattr(self.layer, "activation", None)
        y = self._integer_accumulator(inputs, kwargs, plan, sources[0], w_grid)
        y = integer.requantize_accumulator(kernels, y, sources[0], tf.reshape(w_grid.scale, [-1]), out_grid,
                                           plan["fused"], op=plan["tflite_op"])
        # The quantizer's own inference pass: identity on its grid, plus any clip it applies before
        # FakeQuant (signed PACT's max(x, -α), a MAXIMUM op in TFLite).
        y = out_q(y, False, weights=out_v)
        if fn is None or activation_name(fn) in integer.FUSED_ACTIVATIONS:
            return y
        if not self._output_quantizers:
            return fn(y)
        if activation_name(fn) == "softmax" and _softmax_ok(y):
            return self._q(self._output_quantizers[0], integer.softmax(y, _grid(plan["out"]), _grid(
                (self._output_quantizers[0], self._output_quantizer_vars))), False, self._output_quantizer_vars)
        y = fn(y)  # a LUT activation (sigmoid, tanh, ...) on the requantized pre-activation
        return self._q(self._output_quantizers[0], y, False, self._output_quantizer_vars)

    def _call_layer(self, inputs, training, kwargs):
        """The wrapped layer's own ``call`` (not ``__call__``: no new node, no autocast)."""
        if "training" in inspect.signature(self.layer.call).parameters:
            return self.layer.call(inputs, training=training, **kwargs)
        return self.layer.call(inputs, **kwargs)

    def _integer_accumulator(self, inputs, kwargs, plan, in_grid, w_grid):
        """The int32 accumulator (as int64) of this conv / dense layer: the layer run on the integer input
        offsets ``q - Z`` and integer weights (float32 holds these sums exactly below 2^24), plus the bias
        rounded onto ``S_in·S_w`` as the converter stores it."""
        weight, wq, wv = plan["weight"]
        attr = next(iter(self.quantize_config.weights))
        w_scale = tf.cast(w_grid.scale, tf.float32)
        try:
            w_scale = Quantizer.broadcast(w_scale, weight, wv.get("channel_axes"))
        except (ValueError, IndexError):
            w_scale = tf.reshape(w_scale, [-1]) if w_scale.shape.rank else w_scale
        w_int = tf.round(self._q(wq, weight, False, wv) / w_scale)
        x_int = tf.cast(integer.round_half_away(tf.cast(inputs, tf.float32) / tf.cast(in_grid.scale, tf.float32)),
                        inputs.dtype)
        bias = getattr(self.layer, "bias", None) if getattr(self.layer, "use_bias", False) else None
        fn = getattr(self.layer, "activation", None)
        set_attr(self.layer, attr, w_int)
        if bias is not None:
            self.layer.bias = tf.zeros_like(bias)
        if fn is not None:
            self.layer.activation = keras.activations.linear
        try:
            y = self._call_layer(x_int, False, kwargs)
        finally:
            set_attr(self.layer, attr, weight)
            if bias is not None:
                self.layer.bias = bias
            if fn is not None:
                self.layer.activation = fn
        acc = tf.cast(tf.round(y), tf.int64)
        if bias is not None:
            s_bias = in_grid.scale * tf.reshape(w_grid.scale, [-1])
            acc += tf.cast(integer.round_half_away(tf.cast(tf.convert_to_tensor(bias), tf.float64) / s_bias), tf.int64)
        return acc

    def _quantized_activation(self, fn, built, training):
        def activation(x, *args, **kwargs):
            if "pre" in built:
                q, v = built["pre"]
                x = self._q(q, x, training, v)
            x = fn(x, *args, **kwargs)
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
        self.kernels = kernels  # integer kernel set emulated in inference (schemes/integer.py)

    def call(self, inputs, training=None):
        if calibrating():
            training = True
        if training is None:
            training = keras.backend.learning_phase()
        kernels = None if training is True or not self.quantizer else integer.active_kernels(self.kernels)
        if kernels is None:
            return super().call(inputs, training=training)
        return smart_cond(training, lambda: super(QuantizeInput, self).call(inputs, training=True),
                          lambda: self._quantize_op(inputs))

    def _quantize_op(self, inputs):
        """TFLite QUANTIZE's rounding (half away from zero on x / S), where FakeQuant rounds half up."""
        rng = integer.fake_quant_range(self.quantizer, self.quantizer_vars, inputs)
        if rng is None or not inputs.dtype.is_floating:
            return super().call(inputs, training=False)
        y = integer.quantize_input(tf.cast(inputs, tf.float32), integer.grid_of(*rng))
        return tf.cast(self.quantizer(y, False, weights=self.quantizer_vars), inputs.dtype)

    def get_config(self):
        return dict(super().get_config(), kernels=self.kernels)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        quantizer = keras.utils.legacy.deserialize_keras_object(config.pop("quantizer"))
        return cls(quantizer=quantizer, **config)




def _grid(source) -> Optional["integer.Grid"]:
    """The integer grid of a (quantizer, variables) pair, or None if it is not one FakeQuant."""
    rng = integer.fake_quant_range(source[0], source[1], tf.zeros([1]))
    return integer.grid_of(*rng) if rng is not None else None


def _sole_consumer(layer):
    nodes = getattr(layer, "_outbound_nodes", [])
    return nodes[0].outbound_layer if len(nodes) == 1 else None


def _integer_conv_base(wrapper):
    """The "conv" case of ``QuantizeWrapper._integer_plan``: the weight and the input's range source."""
    if wrapper.quantize_config.info.get("kind") != "compute" or len(wrapper._weight_vars) != 1:
        return None
    spec = layer_spec(wrapper.layer)
    tflite_op = spec.integer_op if spec is not None else None
    if tflite_op not in CONV_OPS:
        return None
    weight, quantizer, qvars = wrapper._weight_vars[0]
    source = getattr(wrapper, "_input_source", None)
    if not source or not getattr(quantizer, "symmetric", False):
        return None
    return {"op": "conv", "weight": (weight, quantizer, qvars), "sources": [source],
            "tflite_op": tflite_op}


def _integer_mean_base(wrapper):
    layer = wrapper.layer
    if not isinstance(layer, (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D)) \
            or layer.data_format != "channels_last":
        return None
    keepdims = bool(getattr(layer, "keepdims", False))
    if keepdims and not isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return None  # 3-D keepdims MEAN: not measured
    source = getattr(wrapper, "_input_source", None)
    shape = getattr(wrapper, "_input_shape", None)
    shape = shape[1:-1] if shape else None  # the averaged axes
    if not source or shape is None or None in shape:
        return None
    count = 1
    for d in shape:
        count *= int(d)
    return {"op": "mean", "sources": [source], "count": count, "keepdims": keepdims}


def _softmax_ok(x) -> bool:
    return x.shape.rank is not None and x.shape[-1] is not None and x.shape[-1] <= integer.MAX_SOFTMAX_CLASSES


def _integer_leaky_base(wrapper):
    layer = wrapper.layer
    source = getattr(wrapper, "_input_source", None)
    if type(layer) is not keras.layers.LeakyReLU or not source:
        return None
    return {"op": "leaky_relu", "sources": [source], "alpha": float(layer.alpha)}


def _integer_softmax_base(wrapper):
    """A Softmax layer (or Activation("softmax")) over the last axis of a quantized input -> SOFTMAX."""
    layer = wrapper.layer
    if isinstance(layer, keras.layers.Softmax):
        axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
        rank = len(getattr(wrapper, "_input_shape", ()))
        if axis not in (-1, rank - 1):
            return None
    elif not (isinstance(layer, keras.layers.Activation) and activation_name(layer.activation) == "softmax"):
        return None
    source = getattr(wrapper, "_input_source", None)
    shape = getattr(wrapper, "_input_shape", None)
    classes = shape[-1] if shape else None
    if not source or classes is None or classes > integer.MAX_SOFTMAX_CLASSES:
        return None
    return {"op": "softmax", "sources": [source]}


def _integer_add_base(wrapper):
    """ADD / SUB / MUL of two quantized same-shape tensors (no broadcasting: other kernel paths)."""
    sources = getattr(wrapper, "_input_sources", None)
    shapes = getattr(wrapper, "_input_shapes", None)
    spec = own_spec(type(wrapper.layer))  # the class itself: a subclass may compute something else
    op = ELEMENTWISE_OPS.get(spec.integer_op if spec is not None else None)
    if op is None or not sources or len(sources) != 2 or not all(sources) or shapes is None \
            or shapes[0] != shapes[1]:
        return None
    return {"op": op, "sources": sources}


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
            return None
        if isinstance(layer, QuantizeInput):
            return (layer.quantizer, layer.quantizer_vars, layer.name) if layer.quantizer else None
        if isinstance(layer, QuantizeLike):
            return layer._source
        if isinstance(layer, _QW):  # a wrapper with a user's QuantizeConfig (annotate.py): its grid is unknown
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
    the producer's: read, never updated here.
    """

    def __init__(self, kernels=None, **kwargs):
        super().__init__(**kwargs)
        self._source = None
        self.kernels = kernels  # integer kernel set emulated in inference (schemes/integer.py)

    def get_config(self):
        return dict(super().get_config(), kernels=self.kernels)

    def __call__(self, inputs, *args, **kwargs):
        if self._source is None and hasattr(inputs, "_keras_history"):
            layer = inputs._keras_history.layer
            node = layer._inbound_nodes[inputs._keras_history.node_index] if layer._inbound_nodes else None
            if node is not None and len(node.keras_inputs) == 1:
                self._source = _range_source(node.keras_inputs[0])
                shape = node.keras_inputs[0].shape
                if isinstance(layer, keras.layers.AveragePooling2D) and layer.data_format == "channels_last" \
                        and shape.rank == 4 and None not in (shape[1], shape[2]):
                    object.__setattr__(self, "_pool_counts", integer.average_pool_counts(
                        int(shape[1]), int(shape[2]), layer.pool_size, layer.strides, layer.padding))
        return super().__call__(inputs, *args, **kwargs)

    @property
    def source_name(self):
        return self._source[2] if self._source else None

    def call(self, inputs):
        if self._source is None:
            return inputs
        quantizer, qvars, _ = self._source
        counts = getattr(self, "_pool_counts", None)
        if counts is not None and integer.active_kernels(self.kernels) is not None:
            grid = _grid(self._source[:2])
            if grid is not None:  # AVERAGE_POOL_2D's own rounding (half away from raw 0)
                return quantizer(integer.average_pool(inputs, counts, grid), False, weights=qvars)
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


# TFLite ops (LayerSpec.integer_op, layers.py) whose int8 kernel is the conv / fully-connected inner loop
# the emulation reproduces, and the elementwise ones it emulates
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
ELEMENTWISE_OPS = {"ADD": "add", "SUB": "subtract", "MUL": "multiply"}
ELEMENTWISE = {
    "add": integer.add,
    "subtract": lambda k, x1, x2, g1, g2, go, fused: integer.add(k, x1, x2, g1, g2, go, fused, subtract=True),
    "multiply": integer.multiply,
}

CUSTOM_OBJECTS = {
    "qresearch>ChannelAffine": ChannelAffine,
    "qresearch>QuantizeWrapper": QuantizeWrapper,
    "qresearch>QuantizeInput": QuantizeInput,
    "qresearch>QuantizeLike": QuantizeLike,
    "qresearch>LayerQuantizeConfig": LayerQuantizeConfig,
}
