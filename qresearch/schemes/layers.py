"""Layer configs: for each layer class, what quantizes.

A ``LayerSpec`` says which weights (by attribute name) carry a weight
quantizer, which activation-function attributes are simulated as separate
ops, whether the layer's output gets a quantizer, and the layer's role in the
graph rewrite (``kind``):

- ``compute``: has quantized weights (Conv, Dense, ...); BN can fold into it, a ReLU after it fuses.
- ``activation``: ReLU/ReLU6/linear; fuses into a preceding compute/merge/BN layer (one output quantizer
  after the activation, none between).
- ``merge``: Add, Subtract, Multiply, ... (own output quantizer; a ReLU after it fuses).
- ``concat``: one output quantizer after the concat, producers' output quantizers removed (TFLite SAME rule).
- ``fixed``: softmax/sigmoid/tanh: output range fixed by the scheme's ``fixed_output_ranges``.
- ``bn``: BatchNormalization (folded per the scheme's ``bn_folding``, else float with a quantized output).
- ``output``: float math, quantized output (GlobalAveragePooling → TFLite MEAN, LayerNormalization, ...).
- ``passthrough``: data movement or SAME-scale ops (Reshape, Flatten, Dropout, padding, max/avg pooling):
  no quantizer, the output shares the input's range.

Users teach qresearch a custom layer once with ``register_layer``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from qresearch._compat import keras
from qresearch.errors import ConfigError, QResearchError

KINDS = ("compute", "activation", "merge", "concat", "fixed", "bn", "output", "passthrough")
FUSABLE_ACTIVATIONS = ("relu", "relu6", "linear")
FIXED_ACTIVATIONS = ("softmax", "sigmoid", "tanh", "log_softmax")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    weights: Tuple[str, ...] = ()
    activations: Tuple[str, ...] = ()
    quantize_output: bool = True
    kind: Union[str, Callable] = "output"
    #: Whether a float input must be quantized before this layer (compute layers read int8 tensors).
    quantized_input: bool = False
    #: False for layers tfmot's wrapper cannot call (TF op layers): their output quantizer is a
    #: separate layer after them.
    wrap: bool = True
    #: SAME-scale op whose float result leaves the input's grid (average pooling): re-quantize the output
    #: onto the input's grid, as the int8 kernel does.
    same_grid: bool = False

    def kind_of(self, layer) -> str:
        return self.kind(layer) if callable(self.kind) else self.kind


_LAYERS: Dict[type, LayerSpec] = {}


def register_layer(layer_class: type, weights: Sequence[str] = (), activations: Sequence[str] = (),
                   quantize_output: bool = True, kind: Optional[Union[str, Callable]] = None,
                   quantized_input: Optional[bool] = None, overwrite: bool = True, wrap: bool = True,
                   same_grid: bool = False) -> LayerSpec:
    """Teach qresearch how ``layer_class`` quantizes.

    Args:
      weights: attribute names of the weights to fake-quantize (e.g. ``["kernel"]``); the layer's ``call``
        must read them through those attributes.
      activations: attribute names holding activation functions (e.g. ``["activation"]``). A ReLU/ReLU6/
        linear activation is fused (the output quantizer covers it); any other function is simulated as
        TFLite runs it, as a separate op: its input is quantized, and its output by the output quantizer
        (or by a fixed range for softmax/sigmoid/tanh).
      quantize_output: put a quantizer on the layer's output.
      kind: graph role (see module doc); default "compute" with weights, else "output" or "passthrough".
      quantized_input: insert an input quantizer when the input is float (default: true with weights).
    """
    if not isinstance(layer_class, type) or not issubclass(layer_class, keras.layers.Layer):
        raise QResearchError(f"register_layer: {layer_class!r} must be a tf_keras Layer class "
                             "(build it with `import tf_keras as keras`)")
    if isinstance(weights, str):
        weights = [weights]
    if isinstance(activations, str):
        activations = [activations]
    if kind is None:
        kind = "compute" if weights else ("output" if quantize_output else "passthrough")
    if isinstance(kind, str) and kind not in KINDS:
        raise ConfigError(f"register_layer: kind must be one of {KINDS}, got {kind!r}")
    if quantized_input is None:
        quantized_input = bool(weights)
    if not wrap and weights:
        raise ConfigError("register_layer: a layer with quantized weights must be wrapped (wrap=True)")
    spec = LayerSpec(tuple(weights), tuple(activations), bool(quantize_output), kind, bool(quantized_input),
                     bool(wrap), bool(same_grid))
    if layer_class in _LAYERS and not overwrite:
        raise QResearchError(f"layer {layer_class.__name__} already has a config; pass overwrite=True")
    _LAYERS[layer_class] = spec
    make_loadable(layer_class)
    return spec


# A user's layer class is saved under the Keras name "qresearch>layer:<ClassName>" (quantizer plugins under
# "qresearch>quantizer:<name>"), so a load that misses it can say which class and how to get it.
LAYER_KEY_PACKAGE, LAYER_KEY_PREFIX = "qresearch", "layer:"


def make_loadable(layer_class: type) -> None:
    """Register a user's layer class as Keras-serializable, so saved models containing it load with
    ``keras.models.load_model`` and ``qresearch.load_model`` (Keras finds unregistered classes only in its own
    modules). Keras' own layers, and a class the user already registered under their own name, are left as
    they are: their saved name stays what it was."""
    if layer_class.__module__.split(".")[0] == "tf_keras":
        return
    if ">" in keras.utils.get_registered_name(layer_class):  # registered names are "package>name"
        return
    keras.utils.register_keras_serializable(package=LAYER_KEY_PACKAGE,
                                            name=LAYER_KEY_PREFIX + layer_class.__name__)(layer_class)


def layer_spec(layer) -> Optional[LayerSpec]:
    """The config for ``layer`` (an instance or a class), looked up along its class hierarchy."""
    cls = layer if isinstance(layer, type) else type(layer)
    for base in cls.__mro__:
        if base in _LAYERS:
            return _LAYERS[base]
    return None


def registered_layers():
    return sorted(c.__name__ for c in _LAYERS)


def op_name(layer) -> Optional[str]:
    """The TF op of a TFOpLambda/SlicingOpLambda layer (``x * 2``, ``tf.nn.relu(x)``, ``x[:, 1:]``)."""
    symbol = getattr(layer, "symbol", None)
    return symbol.split(".")[-1] if isinstance(symbol, str) else None


def activation_name(fn) -> str:
    if fn is None:
        return "linear"
    if isinstance(fn, str):
        return fn
    return getattr(fn, "__name__", type(fn).__name__)


def _weight_attrs(layer):
    """Attributes of ``layer`` holding its own float weight variables (kernel-like first)."""
    from qresearch._compat import tf

    found = []
    for name, value in vars(layer).items():
        if name.startswith("_") or not isinstance(value, tf.Variable) or not value.trainable:
            continue
        if value.dtype.is_floating and len(value.shape) >= 2 and "bias" not in name:
            found.append(name)
    if not found:  # weights held by sublayers (MultiHeadAttention's dense projections): dotted paths
        for name, value in vars(layer).items():
            if isinstance(value, keras.layers.Layer) and name not in ("_self_unconditional_checkpoint_dependencies",):
                found += [f"{name}.{w}" for w in _weight_attrs(value)]
    return found


def _activation_attrs(layer):
    import types

    return [name for name, value in vars(layer).items()
            if not name.startswith("_") and isinstance(value, types.FunctionType)
            and getattr(value, "__module__", "").endswith("activations")]


def register_fix(layer) -> str:
    """The one-line fix printed when a layer has no config (its weight/activation attributes filled in)."""
    cls = type(layer).__name__
    weights = _weight_attrs(layer) if getattr(layer, "built", False) else ["kernel"]
    acts = _activation_attrs(layer)
    args = [cls, f"weights={weights!r}"]
    if acts:
        args.append(f"activations={acts!r}")
    args.append("quantize_output=True")
    return (f"qresearch.schemes.register_layer({', '.join(args)})  "
            f"(list the attributes holding the weights to quantize and activation functions); "
            f"or add {layer.name!r} to the scheme's skip list to keep it in float")


# ----------------------------------------------------------------- built-ins
L = keras.layers


def _activation_layer_kind(layer) -> str:
    name = activation_name(getattr(layer, "activation", None))
    if name in FUSABLE_ACTIVATIONS:
        return "activation"
    if name in FIXED_ACTIVATIONS:
        return "fixed"
    return "output"


def _relu_kind(layer) -> str:
    max_value = getattr(layer, "max_value", None)
    slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
    threshold = float(getattr(layer, "threshold", 0.0) or 0.0)
    if slope == 0.0 and threshold == 0.0 and (max_value is None or float(max_value) in (6.0,)):
        return "activation"
    return "output"


_OP_KINDS = {
    "passthrough": ("reshape", "transpose", "squeeze", "expand_dims", "getitem", "strided_slice", "slice",
                    "gather", "gather_nd", "pad", "identity", "split", "unstack", "tile", "reverse",
                    "depth_to_space", "space_to_depth", "reduce_max", "reduce_min", "flatten", "max_pool2d",
                    "cast", "stop_gradient", "broadcast_to", "ensure_shape"),
    "concat": ("concat", "stack"),
    "activation": ("relu", "relu6"),
    "fixed": ("softmax", "sigmoid", "tanh", "log_softmax"),
    "merge": ("add", "add_v2", "multiply", "subtract", "truediv", "divide", "maximum", "minimum", "matmul",
              "add_n", "multiply_no_nan", "squared_difference"),
}


def _op_kind(layer) -> str:
    name = op_name(layer)
    for kind, ops in _OP_KINDS.items():
        if name in ops:
            return kind
    return "output"


_COMPUTE = {
    L.Dense: ("kernel",),
    L.Conv1D: ("kernel",),
    L.Conv2D: ("kernel",),
    L.Conv3D: ("kernel",),
    L.Conv1DTranspose: ("kernel",),
    L.Conv2DTranspose: ("kernel",),
    L.Conv3DTranspose: ("kernel",),
    L.DepthwiseConv2D: ("depthwise_kernel",),
    L.DepthwiseConv1D: ("depthwise_kernel",),
    L.SeparableConv1D: ("depthwise_kernel", "pointwise_kernel"),
    L.SeparableConv2D: ("depthwise_kernel", "pointwise_kernel"),
}
for _cls, _w in _COMPUTE.items():
    register_layer(_cls, weights=_w, activations=["activation"], kind="compute")

# Recurrent layers: the cell's kernels are quantized (dotted paths); gate math stays float (TFLite's
# fully-int8 LSTM kernel, with a 16-bit cell state, is not simulated).
_RNN_WEIGHTS = ["cell.kernel", "cell.recurrent_kernel"]
for _cls in (L.LSTM, L.GRU, L.SimpleRNN, getattr(L, "ConvLSTM2D", None)):
    if _cls is not None:
        register_layer(_cls, weights=_RNN_WEIGHTS, kind="compute")
register_layer(L.Bidirectional, weights=[f"{d}_layer.{w}" for d in ("forward", "backward") for w in _RNN_WEIGHTS],
               kind="compute")
register_layer(L.Embedding, weights=["embeddings"], quantize_output=False, kind="compute", quantized_input=False)
register_layer(L.BatchNormalization, kind="bn")
register_layer(L.ReLU, kind=_relu_kind)
register_layer(L.Activation, kind=_activation_layer_kind)
register_layer(L.Softmax, kind="fixed")
for _cls in (L.LeakyReLU, L.PReLU, L.ELU, L.ThresholdedReLU, L.LayerNormalization, L.Rescaling,
             L.Normalization, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
             L.UnitNormalization):
    register_layer(_cls, kind="output")
for _cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Dot):
    register_layer(_cls, kind="merge")
register_layer(L.Concatenate, kind="concat")
for _name in ("Identity", "Resizing", "CenterCrop", "RandomFlip", "RandomRotation", "RandomZoom",
              "RandomTranslation", "RandomContrast", "RandomCrop", "RandomBrightness", "RandomHeight",
              "RandomWidth"):
    if hasattr(L, _name):  # preprocessing/augmentation: data movement or identity at inference
        register_layer(getattr(L, _name), quantize_output=False, kind="passthrough")
# TF ops applied to Keras tensors (x * 2, tf.nn.relu(x), x[:, 1:], tf.concat): classified by op name.
try:
    from tf_keras.src.layers.core.tf_op_layer import SlicingOpLambda, TFOpLambda
    register_layer(TFOpLambda, kind=_op_kind, wrap=False)
    register_layer(SlicingOpLambda, kind=_op_kind, wrap=False)
except ImportError:  # pragma: no cover - tf_keras layout differs
    pass
try:
    register_layer(L.EinsumDense, weights=["kernel"], activations=["activation"], kind="compute")
except AttributeError:  # pragma: no cover
    pass
for _cls in (L.Flatten, L.Reshape, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
             L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
             L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
             L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
             L.AveragePooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
             L.Permute, L.RepeatVector, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.Masking):
    register_layer(_cls, quantize_output=False, kind="passthrough",
                   same_grid=_cls in (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D))
