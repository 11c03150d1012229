"""What each deployment runtime is, as data: one ``Runtime`` per ``runtime:`` value of a target.

Deployment (``deploy.convert``) and the structural checks (``structure.inspect_model``) read these facts
instead of comparing runtime names; a new runtime is one ``RUNTIMES.register`` call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from qresearch.registry import Registry


@dataclass(frozen=True)
class Runtime:
    name: str
    #: a converter and interpreter exist here (``verify`` can deploy to it)
    deploys: bool = False
    #: every tensor is integer at deployment (a float layer cannot run)
    integer_only: bool = False
    #: the dtype of activation tensors and of the model's input/output (numpy names)
    activation_dtype: Optional[str] = None
    #: every dtype a tensor of a deployed op may have
    tensor_dtypes: Tuple[str, ...] = ()
    #: the converter's op set (a ``tf.lite.OpsSet`` member), None for its default
    converter_ops: Optional[str] = None
    #: integer activations must have zero point 0 (TFLite 16x8)
    symmetric_activations: bool = False
    #: the dtype conv biases must be stored in (the 16x8 spec: int64), None: not checked
    conv_bias_dtype: Optional[str] = None
    #: the converter may store a fixed-output op's output with other parameters than its kernel computes in
    #: (TF 2.21, int16 LOGISTIC): ``deploy.convert`` writes the target's (fixed_output_params.py)
    pins_fixed_outputs: bool = False
    #: what its converter cannot convert from a QAT model (names in ``unconvertible.REFUSALS``)
    refuses: Tuple[str, ...] = ()
    #: what its converter converts only as float ops, so the model is not integer-only (``unconvertible.FLOAT_KEPT``)
    keeps_float: Tuple[str, ...] = ()


RUNTIMES: Registry[Runtime] = Registry(
    "runtime", how_to_add="qresearch.hardware.runtimes.RUNTIMES.register('NAME', Runtime(...))")
RUNTIMES.register("none", Runtime("none"))
# Measured in TF 2.21 on a conv with each activation (tests/hardware/test_unconvertible.py); 16x8 refuses selu.
_FLOAT_ACTIVATIONS = ("hard_sigmoid", "elu", "selu", "softplus", "softsign", "mish")
# and layers (a conv followed by each, the same tests)
_FLOAT_LAYERS = ("layer_normalization", "multi_head_attention", "unit_normalization_axes", "clipped_relu")
RUNTIMES.register("tflite_int8", Runtime("tflite_int8", deploys=True, integer_only=True, activation_dtype="int8",
                                         tensor_dtypes=("int8", "int32"), refuses=("recurrent",),
                                         keeps_float=_FLOAT_ACTIVATIONS + _FLOAT_LAYERS + ("thresholded_relu",)))
# Measured in TF 2.21: DEPTHWISE_CONV_2D refuses an int32 bias, CONV_2D gives wrong outputs with one; the converter
# stores QAT models' conv biases as int32 in 16x8, so deploy.convert widens them (bias_widening.py). Its refusals:
# measured on digits CNNs with one such layer each (tests/hardware/test_unconvertible.py).
RUNTIMES.register("tflite_int16x8", Runtime(
    "tflite_int16x8", deploys=True, integer_only=True, activation_dtype="int16",
    tensor_dtypes=("int16", "int8", "int32", "int64"),
    converter_ops="EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8", symmetric_activations=True,
    conv_bias_dtype="int64", pins_fixed_outputs=True,
    refuses=("recurrent", "int16_concatenation", "int16_gelu", "int16_prelu", "int16_selu", "int16_constant_operand",
             "int16_threshold", "int16_l2_normalization", "int16_hard_swish"),
    keeps_float=tuple(a for a in _FLOAT_ACTIVATIONS if a != "selu") + _FLOAT_LAYERS + ("thresholded_relu",)))

# TFLite ops whose output (scale, zero_point) the runtime fixes, and the Keras activation name of each
# (the keys of a target's and a scheme's fixed_output_ranges).
FIXED_OUTPUT_OPS = {"SOFTMAX": "softmax", "LOGISTIC": "sigmoid", "TANH": "tanh", "LOG_SOFTMAX": "log_softmax",
                    "L2_NORMALIZATION": "l2_normalization"}
