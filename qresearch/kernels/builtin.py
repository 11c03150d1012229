"""The kernel sets of TFLite/LiteRT, measured against ai-edge-litert 2.x (TF 2.21) on CONV_2D /
DEPTHWISE_CONV_2D / FULLY_CONNECTED outputs (and the other ops of ``tflite_ops``), bit-exact:

- ``tflite_builtin`` (the interpreter's builtin kernels without delegates, ``verify``'s default):
  SaturatingRoundingDoublingHighMul (half away from zero), then a right shift rounding ties up.
- ``tflite_reference`` (``BUILTIN_REF`` kernels): the same, the shift rounding half away from zero
  (gemmlowp ``RoundingDivideByPOT``; tflite-int8-spec.md §2.2); fully connected rounds once.
- ``xnnpack`` (the interpreter's default delegate): conv / depthwise / transposed conv / fully connected
  requantize in float32, ``round_half_even(float32(acc)·float32(S_in·S_w/S_out))`` (``float32_half_even``).
"""
from qresearch.kernels.fixed_point import float32_half_even, round_away, round_up, round_up_in_lanes_of_8, single_rounding
from qresearch.kernels.runtime import KERNELS, IntegerKernels
from qresearch.kernels.tflite_ops import TFLITE_OPS, XNNPACK_LUT_OPS, XNNPACK_OPS, without

KERNELS.register("tflite_builtin", IntegerKernels(
    "tflite_builtin", round_up, round_away, ops=TFLITE_OPS, add_vector=True,
    op_requantize={"TRANSPOSE_CONV": round_up_in_lanes_of_8},
    description="LiteRT builtin kernels without delegates (x86-64 build, ai-edge-litert 2.x): conv/FC "
                "requantize with SRDHM then a shift rounding ties up (TRANSPOSE_CONV in lanes of 8 channels; "
                "the last C % 8 channels, MEAN and ADD's output with SRDHM then RoundingDivideByPOT, half away)"))
KERNELS.register("tflite_reference", IntegerKernels(
    "tflite_reference", round_away, round_away, ops=without(TFLITE_OPS, "MEAN_KEEPDIMS"), add_vector=False,
    op_requantize={"FULLY_CONNECTED": single_rounding},
    description="LiteRT reference kernels (BUILTIN_REF): SRDHM then RoundingDivideByPOT, except fully "
                "connected, which rounds once (measured)"))
KERNELS.register("xnnpack", IntegerKernels(
    "xnnpack", float32_half_even, round_away,
    ops={**without(TFLITE_OPS, "ADD", "SUB", "MUL", "CONCATENATION", "MAXIMUM", "MINIMUM"),
         **XNNPACK_LUT_OPS, **XNNPACK_OPS},
    op_requantize={"TRANSPOSE_CONV": round_up_in_lanes_of_8},
    description="XNNPACK (LiteRT's default delegate): conv/FC requantized in float32, half to even; LOGISTIC/TANH tables in double, "
                "rounded half to even; MEAN and GELU stay on the builtin kernels; ADD/MUL and a concatenation's "
                "requantized inputs are not emulated"))
