"""The kernel sets of TFLite/LiteRT, measured against ai-edge-litert 2.x (TF 2.21) on CONV_2D /
DEPTHWISE_CONV_2D / FULLY_CONNECTED outputs (and the other ops of ``tflite_ops``), bit-exact:

- ``tflite_builtin`` (the interpreter's builtin kernels without delegates, ``verify``'s default):
  SaturatingRoundingDoublingHighMul (half away from zero), then a right shift rounding ties up.
- ``tflite_reference`` (``BUILTIN_REF`` kernels): the same, the shift rounding half away from zero
  (gemmlowp ``RoundingDivideByPOT``; tflite-int8-spec.md §2.2); fully connected rounds once.
- ``xnnpack`` (the interpreter's default delegate): conv / depthwise / fully connected requantize in float32,
  ``round_half_even(float32(acc)·float32(S_in·S_w/S_out))`` (``float32_half_even``); its other ops' own
  arithmetic in ``tflite_ops.xnnpack_ops``.
"""
from qresearch.kernels.fixed_point import (float32_half_even, q8_convert, round_away, round_up,
                                           round_up_in_lanes_of_8, single_rounding)
from qresearch.kernels.runtime import KERNELS, IntegerKernels
from qresearch.kernels.tflite_ops import TFLITE_OPS, xnnpack_ops

BUILTIN = IntegerKernels(
    "tflite_builtin", round_up, round_away, ops=TFLITE_OPS, add_vector=True,
    op_requantize={"TRANSPOSE_CONV": round_up_in_lanes_of_8, "DEPTHWISE_CONV_2D": round_up_in_lanes_of_8,
                   "BATCH_MATMUL": round_away},
    description="LiteRT builtin kernels without delegates (x86-64 build, ai-edge-litert 2.x): conv/FC "
                "requantize with SRDHM then a shift rounding ties up (TRANSPOSE_CONV and DEPTHWISE_CONV_2D in lanes "
                "of 8 channels; the last C % 8 channels, BATCH_MATMUL, MEAN and ADD's output with SRDHM then "
                "RoundingDivideByPOT, half away)")
KERNELS.register("tflite_builtin", BUILTIN)
KERNELS.register("tflite_reference", IntegerKernels(
    "tflite_reference", round_away, round_away, add_vector=False,
    ops={**TFLITE_OPS, "MEAN_KEEPDIMS": TFLITE_OPS["MEAN"]},   # one reference MEAN, keepdims or not (measured)
    op_requantize={"FULLY_CONNECTED": single_rounding},
    description="LiteRT reference kernels (BUILTIN_REF): SRDHM then RoundingDivideByPOT, except fully "
                "connected, which rounds once; MEAN with keepdims as without (measured)"))
KERNELS.register("xnnpack", IntegerKernels(
    "xnnpack", float32_half_even, round_away,
    ops={**TFLITE_OPS, **xnnpack_ops(BUILTIN)},
    op_requantize={"TRANSPOSE_CONV": round_up_in_lanes_of_8, "QUANTIZE": q8_convert},
    description="LiteRT with XNNPACK, its default delegate (measured op by op, tests/kernels/test_xnnpack.py): "
                "conv/depthwise/FC and MUL requantized in float32 rounding half to even; MEAN in float32; ADD/SUB "
                "with 21-bit multipliers, one rounding; LEAKY_RELU 8-bit multipliers; RESIZE_BILINEAR 11-bit "
                "weights; LOGISTIC/TANH tables in double; the builtin kernels where the delegate leaves an op "
                "(TRANSPOSE_CONV with a computed output shape, GELU, AVERAGE_POOL_2D, scales XNNPACK refuses); "
                "int8 -> int8 QUANTIZE (a concatenation's or MAXIMUM's input on another grid) with an 8-bit "
                "multiplier"))
