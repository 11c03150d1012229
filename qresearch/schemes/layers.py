"""The one layer registry: for each layer class, everything qresearch knows about it.

A ``LayerSpec`` says which weights (by attribute name) carry a weight quantizer and their
output-channel axes, which activation-function attributes are simulated as separate ops, whether
the layer's output gets a quantizer, the layer's role in the graph rewrite (``kind``), the kind a
hardware target constrains it as (``target_kind``), how a following BatchNormalization folds into it
(``fold``), whether its output is non-negative when its inputs are (``keeps_sign``) and the TFLite
op the integer-kernel emulation reproduces for it (``integer_op``). The roles (``kind``):

- ``compute``: has quantized weights (Conv, Dense, ...); BN can fold into it, a ReLU after it fuses.
- ``activation``: ReLU/ReLU6/linear; fuses into a preceding compute/merge/BN layer (one output quantizer
  after the activation, none between).
- ``merge``: Add, Subtract, Multiply, ... (own output quantizer; a ReLU after it fuses).
- ``concat``: one output quantizer after the concat, producers' output quantizers removed (TFLite SAME rule;
  also Maximum/Minimum, whose kernels compare integers on one grid).
- ``fixed``: softmax/sigmoid/tanh: output range fixed by the scheme's ``fixed_output_ranges``.
- ``bn``: BatchNormalization (folded per the scheme's ``bn_folding``, else float with a quantized output).
- ``output``: float math, quantized output (GlobalAveragePooling → TFLite MEAN, LayerNormalization, ...).
- ``passthrough``: data movement or SAME-scale ops (Reshape, Flatten, Dropout, padding, max/avg pooling):
  no quantizer, the output shares the input's range.

Users teach qresearch a custom layer once with ``register_layer``; the built-ins are registered the
same way (``builtin_layers.py``). A fact not given is inherited from the nearest registered base class
(a ``MyDense(Dense)`` registered with its own weights is still a dense layer for targets, folds BN and
runs as FULLY_CONNECTED), as lookups of unregistered subclasses do.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from qresearch._compat import keras
from qresearch.errors import ConfigError, QResearchError
from qresearch.quantizers.channels import register_channel_axes

KINDS = ("compute", "activation", "merge", "concat", "fixed", "bn", "output", "passthrough")
# What a hardware target constrains per layer kind (weight granularity): conf/hardware/*.yaml's keys.
TARGET_KINDS = ("conv", "conv1d", "conv_transpose", "dense")
FUSABLE_ACTIVATIONS = ("relu", "relu6", "linear")
# Ops whose output range the runtime fixes (the scheme's fixed_output_ranges keys).
FIXED_ACTIVATIONS = ("softmax", "sigmoid", "tanh", "log_softmax")
#: A ReLU that no op before it fuses runs as an op of its own (its producer's output has other readers, or
#: ``LayerSpec.fuses_relu`` is False).
RELU_OPS = {"relu": "RELU", "relu6": "RELU6"}
# Activations a runtime runs as one op of its own, by Keras name: the int8 kernel of each is a table
# (kernels.tflite_ops.LUT_FUNCTIONS), the SOFTMAX, LEAKY_RELU and HARD_SWISH kernels their own arithmetic
# (``hard_swish``: qresearch's, schemes/activations.py).
ACTIVATION_OPS = {"softmax": "SOFTMAX", "sigmoid": "LOGISTIC", "tanh": "TANH", "gelu": "GELU",
                  "leaky_relu": "LEAKY_RELU", "hard_swish": "HARD_SWISH"}
# The arguments of an activation function its op carries (LEAKY_RELU's alpha), by name; a call's own keyword
# (``functools.partial(tf.nn.leaky_relu, alpha=0.1)``) wins over the function's default.
ACTIVATION_ATTRS = {"leaky_relu": ("alpha",)}
# The integer_op of a layer the converter runs as elementwise ops with constant operands (emulation.py)
CONSTANT_OPS = "CONSTANT_OPS"
# Outputs that are >= 0 whatever the input (unsigned activation grids after them).
NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6", "softmax", "sigmoid")
_INHERIT: Any = object()  # a fact not given to register_layer: taken from the nearest registered base


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
    #: SAME-scale op whose float result leaves the input's grid (average pooling, bilinear resizing): re-quantize
    #: the output onto the input's grid, as the int8 kernel does. A callable decides per layer (its config).
    same_grid: Union[bool, Callable] = False
    #: weight attr -> its output-channel axes (per-channel quantizers); unlisted weights use the last axis.
    channel_axes: Mapping[str, Tuple[int, ...]] = dataclasses.field(default_factory=dict)
    #: the layer kind a hardware target constrains ("conv", "conv1d", "conv_transpose", "dense"), or None.
    target_kind: Optional[str] = None
    #: (weight attr, rule): how a BatchNormalization after the layer folds into it (folding.py), or None.
    fold: Optional[Tuple[str, Callable]] = None
    #: output >= 0 when every input is (Add, Maximum, average pooling, ...): unsigned grids stay unsigned.
    keeps_sign: bool = False
    #: the op (a kernel set's handler name, qresearch.kernels) the integer emulation runs this layer as, or
    #: None; a function of the layer where its configuration decides (Activation("softmax") -> SOFTMAX).
    integer_op: Union[None, str, Callable] = None
    #: ``(layer, inputs, **kwargs) -> outputs or None``: how a wrapper runs the layer in place of its own ``call``
    #: where that call hides a quantized weight from the TFLite converter (``layer_calls.py``); None returned, or
    #: no function: the layer's own call.
    call: Optional[Callable] = None
    #: a ``layer_calls.Split``: the layer's call as the two ops the TFLite converter makes of it (Rescaling with an
    #: offset: MUL, ADD), with the tensor between them through a quantizer. Where it applies to a layer whose output
    #: is quantized, that tensor gets the scheme's activation quantizer, so the converter can give both ops integer
    #: kernels.
    split: Optional[Any] = None
    #: the weight whose values the output is made of (an Embedding's table: GATHER keeps its (S, Z)). With every op
    #: quantized and that weight per tensor, the output is on the weight's grid: a ``QuantizeLike`` of the weight's
    #: quantizer, not a quantizer of its own that the converter would reach by a requantizing QUANTIZE.
    output_grid: Optional[str] = None
    #: whether the converter fuses a ReLU / ReLU6 (its activation argument, or a ReLU layer after it) into the op.
    #: TRANSPOSE_CONV does not (TF 2.21, measured): the ReLU is an op of its own, its input a grid of its own.
    fuses_relu: bool = True

    def kind_of(self, layer) -> str:
        return self.kind(layer) if callable(self.kind) else self.kind

    def integer_op_of(self, layer) -> Optional[str]:
        return self.integer_op(layer) if callable(self.integer_op) else self.integer_op

    def same_grid_of(self, layer) -> bool:
        return bool(self.same_grid(layer)) if callable(self.same_grid) else self.same_grid


_LAYERS: Dict[type, LayerSpec] = {}
_DECLARED_KIND: Dict[type, str] = {}  # classes given a target_kind themselves (not inherited from a base)


def register_layer(layer_class: type, weights: Sequence[str] = (), activations: Sequence[str] = (),
                   quantize_output: bool = True, kind: Optional[Union[str, Callable]] = None,
                   quantized_input: Optional[bool] = None, overwrite: bool = True, wrap: bool = True,
                   same_grid: Union[bool, Callable] = False, channel_axes: Mapping[str, Sequence[int]] = _INHERIT,
                   target_kind: Optional[str] = _INHERIT, fold: Optional[Tuple[str, Callable]] = _INHERIT,
                   keeps_sign: bool = _INHERIT, integer_op: Union[None, str, Callable] = _INHERIT,
                   call: Optional[Callable] = _INHERIT, split: Optional[Any] = _INHERIT,
                   output_grid: Optional[str] = _INHERIT, fuses_relu: bool = _INHERIT) -> LayerSpec:
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
      channel_axes: ``{weight attr: axes}`` of the weights' output channels (default: the last axis).
      target_kind: the kind hardware targets constrain it as: one of ``TARGET_KINDS`` or None.
      fold: ``(weight attr, rule)`` to fold a following BatchNormalization (rules in ``folding.py``); the
        folded copy is rebuilt with ``use_bias=True``, so the layer's config must take ``use_bias``.
      keeps_sign: its output is non-negative when every input is.
      integer_op: the op the integer-kernel emulation runs it as: a handler name of ``qresearch.kernels``
        (e.g. "CONV_2D", "ADD"), or a function of the layer returning one; matched in ``emulation.py``.
        ``CONSTANT_OPS``: ADD / SUB / MUL with constant operands (the ``split``'s steps, or a one-op Rescaling).
      call: ``(layer, inputs, **kwargs) -> outputs`` run by the wrapper instead of the layer's ``call`` (None
        returned: the layer's own call), for a call that hides a quantized weight from the TFLite converter
        (``layer_calls.py``).
      split: a ``layer_calls.Split``: the layer's call as the two ops the converter makes of it, with the tensor
        between them quantized where the layer's output is.
      output_grid: the weight whose values the output is made of (gathered, not computed): with every op quantized
        (``quantize_ops: all``) and that weight per tensor, the output keeps the weight's grid.
      fuses_relu: the converter fuses a ReLU / ReLU6 after the layer into its op (default True); where it does not,
        the layer's output before the ReLU gets a quantizer of its own, and the ReLU runs as its own op.
    The last nine default to the nearest registered base class's values (else empty/None/False; fuses_relu True).
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
    base = next((_LAYERS[c] for c in layer_class.__mro__[1:] if c in _LAYERS), LayerSpec())
    facts = {"channel_axes": channel_axes, "target_kind": target_kind, "fold": fold, "keeps_sign": keeps_sign,
             "integer_op": integer_op, "call": call, "split": split, "output_grid": output_grid,
             "fuses_relu": fuses_relu}
    facts = {k: getattr(base, k) if v is _INHERIT else v for k, v in facts.items()}
    if facts["target_kind"] not in TARGET_KINDS + (None,):
        raise ConfigError(f"register_layer: target_kind must be one of {TARGET_KINDS} or None, "
                          f"got {facts['target_kind']!r}")
    facts["channel_axes"] = {w: (tuple(a) if isinstance(a, (list, tuple)) else (int(a),))
                             for w, a in dict(facts["channel_axes"]).items()}
    spec = LayerSpec(tuple(weights), tuple(activations), bool(quantize_output), kind, bool(quantized_input),
                     bool(wrap), same_grid if callable(same_grid) else bool(same_grid), **facts)
    if layer_class in _LAYERS and not overwrite:
        raise QResearchError(f"layer {layer_class.__name__} already has a config; pass overwrite=True")
    _LAYERS[layer_class] = spec
    _DECLARED_KIND.pop(layer_class, None)
    if target_kind is not _INHERIT and target_kind is not None:
        _DECLARED_KIND[layer_class] = target_kind
    for weight, axes in spec.channel_axes.items():  # the quantizers read axes there (they sit below schemes)
        register_channel_axes(layer_class, weight, axes)
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


def own_spec(layer_class: type) -> Optional[LayerSpec]:
    """The spec registered for exactly ``layer_class`` (no lookup along its bases)."""
    return _LAYERS.get(layer_class)


def target_kind(layer) -> Optional[str]:
    """The target layer kind of ``layer`` (a tfmot wrapper counts as its inner layer), or None."""
    spec = layer_spec(getattr(layer, "layer", layer))
    return spec.target_kind if spec is not None else None


def target_kind_of_name(class_name: Any) -> Optional[str]:
    """The target kind of the registered layer class named ``class_name`` (a scheme override's ``match``
    naming a class, or a Keras alias of one such as "Convolution2D"), else None."""
    if not isinstance(class_name, str):
        return None
    alias = getattr(keras.layers, class_name, None)
    for cls, spec in _LAYERS.items():
        if cls.__name__ == class_name or cls is alias:
            return spec.target_kind
    return None


def classes_of_target_kind(kind: str) -> List[str]:
    """Names of the layer classes registered as target kind ``kind`` (declared, not inherited: a subclass
    counts as its base where a class name is matched), in registration order."""
    return [cls.__name__ for cls, k in _DECLARED_KIND.items() if k == kind]


def fused_relu(layer) -> Optional[str]:
    """"relu"/"relu6" for a ReLU or Activation layer that TFLite fuses into the op before it, else None."""
    if isinstance(layer, keras.layers.ReLU):
        max_value = None if layer.max_value is None else float(layer.max_value)
        if float(layer.negative_slope or 0.0) == 0.0 and float(layer.threshold or 0.0) == 0.0 \
                and max_value in (None, 6.0):
            return "relu" if max_value is None else "relu6"
        return None
    if isinstance(layer, keras.layers.Activation):
        name = activation_name(layer.activation)
        return name if name in ("relu", "relu6") else None
    return None


def fused_activation(layer) -> Optional[str]:
    """``fused_relu``, and "linear" for an ``Activation("linear")`` layer (the converter drops it: the op before
    computes onto its output grid; Keras' mixed-precision guide ends a model with one in float32)."""
    if isinstance(layer, keras.layers.Activation) and activation_name(layer.activation) == "linear":
        return "linear"
    return fused_relu(layer)


def op_name(layer) -> Optional[str]:
    """The TF op of a TFOpLambda/SlicingOpLambda layer (``x * 2``, ``tf.nn.relu(x)``, ``x[:, 1:]``)."""
    symbol = getattr(layer, "symbol", None)
    return symbol.split(".")[-1] if isinstance(symbol, str) else None


def activation_name(fn) -> str:
    if fn is None:
        return "linear"
    if isinstance(fn, str):
        return fn
    if isinstance(fn, functools.partial) and activation_name(fn.func) in ACTIVATION_ATTRS:
        return activation_name(fn.func)  # its arguments are read (activation_attrs); other partials stay unknown
    return getattr(fn, "__name__", type(fn).__name__)


def activation_attrs(fn) -> Optional[Dict[str, Any]]:
    """The op attributes (``ACTIVATION_ATTRS``) activation function ``fn`` computes with: a partial's keywords,
    else the function's defaults (``keras.activations.get("leaky_relu")`` is ``tf.nn.leaky_relu``, alpha 0.2);
    None where one cannot be read (the simulation then runs the function in float)."""
    names = ACTIVATION_ATTRS.get(activation_name(fn), ())
    if not names:
        return {}
    if isinstance(fn, str):
        fn = keras.activations.get(fn)
    fixed = dict(fn.keywords) if isinstance(fn, functools.partial) else {}
    try:
        params = inspect.signature(fn.func if isinstance(fn, functools.partial) else fn).parameters
    except (TypeError, ValueError):
        params = {}
    attrs = {}
    for n in names:
        value = fixed.get(n, params[n].default if n in params else inspect.Parameter.empty)
        if value is inspect.Parameter.empty:
            return None
        attrs[n] = float(value)
    return attrs


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


