"""Layers a runtime's converter cannot convert from a quantization-aware model, or converts only in float, as data.

Each ``Refusal`` names the layers of a QAT model it matches, what the converter fails on (or makes of them) and the
fix. A runtime lists the refusals that apply to it (``Runtime.refuses``) and the layers its converter leaves as
float ops between a DEQUANTIZE and a QUANTIZE (``Runtime.keeps_float``, names in ``FLOAT_KEPT``: the model deploys
and the simulation runs those ops in float as the interpreter does, but it is not integer-only). ``quantize`` warns
about both before training (``deploy.warn_unconvertible``) and ``convert`` turns the converter's MLIR error, which
names neither the layer nor the fix, into one that does. Every entry was measured on TF 2.21's converter
(tests/hardware/test_unconvertible.py converts a model of each and fails if the converter accepts it, or makes it
integer-only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Tuple

from qresearch.registry import Registry
from qresearch.schemes.graph import SCALAR_OPERAND_SYMBOLS
from qresearch.schemes.builtin_layers import unit_norm_over_last_axis
from qresearch.schemes.layers import activation_name


@dataclass(frozen=True)
class Refusal:
    #: what the converter cannot convert, and its own words
    what: str
    #: whether a layer of the QAT model (inner layers of wrappers included) is refused
    matches: Callable[[object], bool]
    fix: str


REFUSALS: Registry[Refusal] = Registry(
    "converter refusal", how_to_add="qresearch.hardware.unconvertible.REFUSALS.register('NAME', Refusal(...)), "
                                    "then list NAME in the runtime's `refuses`")


def _is(*class_names: str) -> Callable[[object], bool]:
    def matches(layer) -> bool:
        from qresearch._compat import keras

        kinds = tuple(getattr(keras.layers, n) for n in class_names if hasattr(keras.layers, n))
        return isinstance(layer, kinds)
    return matches


def _activation(*names: str) -> Callable[[object], bool]:
    """A layer computing one of the activation functions ``names`` (an Activation layer, a conv's activation)."""
    return lambda layer: activation_name(getattr(layer, "activation", None)) in names


def _constant_operand(layer) -> bool:
    """A layer that runs with a constant operand: a Rescaling or Normalization, or a TF op of a tensor and a number
    that stayed a TF op (``c - x``, ``c / x``; the other forms became a Rescaling, ``schemes.graph``)."""
    if _is("Rescaling", "Normalization")(layer):
        return True
    if type(layer).__name__ != "TFOpLambda" or getattr(layer, "symbol", None) not in SCALAR_OPERAND_SYMBOLS:
        return False
    from qresearch._compat import tf

    for node in getattr(layer, "_inbound_nodes", []):
        if any(_is_constant(a) for a in tf.nest.flatten(node.call_args)):
            return True
    return False


def _thresholded(layer) -> bool:
    """A ReLU with a threshold (``ReLU(threshold=...)``, ``ThresholdedReLU``): its comparison is a float GREATER."""
    if _is("ThresholdedReLU")(layer):
        return True
    return _is("ReLU")(layer) and float(getattr(layer, "threshold", 0.0) or 0.0) != 0.0


def _clipped_relu(layer) -> bool:
    """A ReLU layer with a ``max_value`` other than 6 and no threshold: tf.keras clips it with float ops."""
    if not _is("ReLU")(layer) or _thresholded(layer) or layer.max_value is None:
        return False
    return float(layer.max_value) != 6.0 or float(layer.negative_slope or 0.0) != 0.0


def _is_constant(value) -> bool:
    """A number, array or eager tensor (a call's constant argument), not a symbolic Keras tensor."""
    import numpy as np

    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float, np.number, np.ndarray)) or type(value).__name__ == "EagerTensor"


_TO_INT8 = "deploy on tflite_int8 (the same layers convert there)"

REFUSALS.register("recurrent", Refusal(
    "quantization-aware recurrent layers (the converter fails on their loop; with a fixed batch size, an LSTM "
    "fails on the fake-quantized kernels' types). TFLite's integer LSTM comes from post-training quantization "
    "of the float model only",
    _is("RNN", "Bidirectional"),
    "train and compare without a deploying target (hardware=None, or a simulated one such as 'academic'); deploy "
    "the float model with TF's own flow (TFLiteConverter, a representative dataset, a fixed batch size)"))
REFUSALS.register("int16_concatenation", Refusal(
    "CONCATENATION of int16 tensors ('tfl.concatenation' op operand #0 must be ... QI8 ..., not i16)",
    _is("Concatenate"),
    f"{_TO_INT8}, or join the branches otherwise (an Add of convolutions)"))
REFUSALS.register("int16_gelu", Refusal(
    "GELU on int16 tensors ('tfl.gelu' op operand #0 must be ... QI8 type or QUI8 type values)",
    _activation("gelu"),
    f"{_TO_INT8}, or use another activation (swish and tanh convert in 16x8)"))
REFUSALS.register("int16_selu", Refusal(
    "SELU on int16 tensors ('tfl.greater' op failed to verify that comparison op operands have same element type)",
    _activation("selu"),
    f"{_TO_INT8} (in float ops there: FLOAT_KEPT), or use another activation (LeakyReLU, swish and tanh convert "
    "in 16x8)"))
REFUSALS.register("int16_hard_swish", Refusal(
    "HARD_SWISH on int16 tensors ('tfl.hard_swish' op operand #0 must be ... QUI8 type or QI8 type values): "
    "qresearch.hard_swish, and x * relu6(x + 3) / 6, which the converter fuses into that op",
    _activation("hard_swish"),
    f"{_TO_INT8}, or use swish (LOGISTIC and MUL convert in 16x8)"))
REFUSALS.register("int16_prelu", Refusal(
    "PRELU with int16 inputs ('tfl.prelu' op failed to verify that binary op operands have same element type: "
    "its alpha is stored int8)",
    _is("PReLU"),
    f"{_TO_INT8}, or use LeakyReLU (one slope; it converts in 16x8)"))
REFUSALS.register("int16_threshold", Refusal(
    "a ReLU's threshold compared on int16 tensors ('tfl.greater' op failed to verify that comparison op operands "
    "have same element type): ReLU(threshold=...) without a negative slope, ThresholdedReLU",
    lambda layer: _thresholded(layer) and not float(getattr(layer, "negative_slope", 0.0) or 0.0),
    f"{_TO_INT8} (in float ops there: FLOAT_KEPT), or use a plain ReLU"))
REFUSALS.register("int16_l2_normalization", Refusal(
    "L2_NORMALIZATION with an int16 output (UnitNormalization): the converter writes it, and LiteRT's kernel "
    "refuses it when the model is loaded (l2norm.cc: output float32, uint8 or int8)",
    lambda layer: _is("UnitNormalization")(layer) and unit_norm_over_last_axis(layer),
    f"{_TO_INT8}, or normalise outside the model (after its output)"))
REFUSALS.register("int16_constant_operand", Refusal(
    "ADD/SUB/MUL/DIV of an int16 tensor and a constant ('binary op operands have same element type': the constant "
    "is stored int8): Rescaling, Normalization, Average (its 1/n) and TF ops of a tensor and a number",
    _constant_operand,
    f"{_TO_INT8}, or apply the preprocessing outside the model (before its input) and fold constant scales into "
    "the next layer's weights"))


FLOAT_KEPT: Registry[Refusal] = Registry(
    "float-kept layer", how_to_add="qresearch.hardware.unconvertible.FLOAT_KEPT.register('NAME', Refusal(...)), "
                                   "then list NAME in the runtime's `keeps_float`")
# TFLite has no op of these activations: the converter writes the float ops of TF's graph, whose inner tensors have
# no quantization ranges. An integer-only fix is a function of ops TFLite quantizes (its own op or a lowering).
_SWISH = "use swish (LOGISTIC and MUL: integer-only and emulated bit for bit) or another activation TFLite quantizes"
FLOAT_KEPT.register("hard_sigmoid", Refusal(
    "hard_sigmoid (clip(0.2·x + 0.5, 0, 1)) runs as float MUL, ADD, MINIMUM and RELU",
    _activation("hard_sigmoid"),
    "write MobileNetV3's hard sigmoid, keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0) (ADD, RELU6, MUL: "
    "integer-only), or use sigmoid (LOGISTIC)"))
FLOAT_KEPT.register("elu", Refusal(
    "ELU is kept float (the converter does not quantize TFLite's ELU op)",
    lambda layer, elu=_activation("elu"), elu_layer=_is("ELU"): elu(layer) or elu_layer(layer),
    "use LeakyReLU (LEAKY_RELU: integer-only and emulated bit for bit) or swish"))
FLOAT_KEPT.register("selu", Refusal(
    "selu runs as float EXP, SUB, MUL, GREATER and SELECT_V2", _activation("selu"),
    "use LeakyReLU (LEAKY_RELU: integer-only and emulated bit for bit) or swish"))
FLOAT_KEPT.register("softplus", Refusal("softplus runs as float EXP, ADD and LOG", _activation("softplus"), _SWISH))
FLOAT_KEPT.register("softsign", Refusal("softsign runs as float ABS, ADD and DIV", _activation("softsign"), _SWISH))
FLOAT_KEPT.register("mish", Refusal("mish runs as float EXP, ADD, LOG, TANH and MUL", _activation("mish"), _SWISH))
# Layers: the converter quantizes the ops around them, not theirs. Measured on a conv followed by each (TF 2.21).
FLOAT_KEPT.register("layer_normalization", Refusal(
    "LayerNormalization runs as float MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, SUB and ADD", _is("LayerNormalization"),
    "keep it (the simulation computes it in float, as deployed) or, where the model allows, use BatchNormalization "
    "after a conv or dense layer (folded into it: integer-only)"))
FLOAT_KEPT.register("multi_head_attention", Refusal(
    "MultiHeadAttention runs as float FULLY_CONNECTED, BATCH_MATMUL, SOFTMAX, MUL and TRANSPOSE: only its four "
    "projection kernels are stored in int8 (DEQUANTIZE before each)", _is("MultiHeadAttention"),
    "keep it (the simulation computes the attention in float, as deployed); an integer-only attention needs its "
    "scores and softmax quantized by a QuantizeConfig of your own (qresearch.schemes.register_layer)"))
FLOAT_KEPT.register("unit_normalization_axes", Refusal(
    "a UnitNormalization over other axes than the last runs as float SQUARE, SUM, MAXIMUM, RSQRT and MUL (over the "
    "last axis it is one L2_NORMALIZATION: integer-only, emulated bit for bit)",
    lambda layer: _is("UnitNormalization")(layer) and not unit_norm_over_last_axis(layer),
    "normalise over the last axis (move the axis there with a Permute before it)"))
FLOAT_KEPT.register("clipped_relu", Refusal(
    "a ReLU with a max_value other than 6 (or a max_value and a negative slope) runs as float RELU and MINIMUM "
    "(with a slope, also NEG, MUL and SUB)", _clipped_relu,
    "use ReLU() or ReLU(6.0) (fused into the op before it), or LeakyReLU for a slope"))
FLOAT_KEPT.register("thresholded_relu", Refusal(
    "a ReLU with a threshold runs as GREATER on int8 tensors, then float CAST and MUL. LiteRT's int8 GREATER "
    "compares both sides rescaled to steps of 1/256 (the real value times 2^8, rounded: tensorflow/lite/kernels/"
    "internal/reference/comparisons.h, "
    "ComparisonWithScaling), where the simulation compares floats: a value within 1/256 above the threshold is "
    "zeroed on the device and kept in the simulation (measured: 18 LSB at a dense output)",
    _thresholded, "use a plain ReLU, or ReLU6"))


def refused_layers(model, runtime) -> List[Tuple[Refusal, List[str]]]:
    """(refusal, ['name (Class)', ...]) for every refusal of ``runtime`` that a layer of ``model`` meets."""
    return _matching(model, REFUSALS, runtime.refuses)


def float_kept_layers(model, runtime, refused=None) -> List[Tuple[Refusal, List[str]]]:
    """(entry, ['name (Class)', ...]) for every ``FLOAT_KEPT`` entry of ``runtime`` that a layer of ``model`` meets,
    leaving out the layers ``runtime`` refuses (those do not deploy at all; ``refused``: ``refused_layers``' answer
    where the caller has it)."""
    refused = {layer for _, layers in (refused_layers(model, runtime) if refused is None else refused)
               for layer in layers}
    kept = [(entry, [layer for layer in layers if layer not in refused])
            for entry, layers in _matching(model, FLOAT_KEPT, runtime.keeps_float)]
    return [(entry, layers) for entry, layers in kept if layers]


def _matching(model, registry: Registry[Refusal], names) -> List[Tuple[Refusal, List[str]]]:
    layers = list(model._flatten_layers(include_self=False))
    found = []
    for name in names:
        refusal = registry.get(name)
        hit = [f"{layer.name!r} ({type(layer).__name__})" for layer in layers if refusal.matches(layer)]
        if hit:
            found.append((refusal, hit))
    return found


def describe(found: List[Tuple[Refusal, List[str]]]) -> str:
    """One sentence per refusal: the layers, what fails, the fix."""
    return " ".join(f"{', '.join(layers)}: {refusal.what}. Fix: {refusal.fix}." for refusal, layers in found)
