"""What LiteRT's reference kernels (``verify(kernels="builtin_ref")``) abort the process on, found before they run.

Their int8 SOFTMAX and LOG_SOFTMAX form the multiplier ``beta·S_in·2^26`` when the interpreter prepares them and
check that it is over 1 (``PreprocessSoftmaxScaling``, TFLite's quantization_util.cc); a failed check aborts the
Python process, and every result not yet saved with it. Measured on ai-edge-litert 2.x: an input scale of 1.45e-8
aborts, 1.53e-8 runs (2^-26 = 1.49e-8); the builtin kernels and XNNPACK run both (a lookup table). Such a scale is a
range under 3.8e-6: logits that were constant over the calibration data (a dead range, which the converter gives
1e-6). The converter stores beta 1 (TF's softmax has none; a scaled input stays a MUL)."""
from __future__ import annotations

from typing import List

SOFTMAX_OPS = ("SOFTMAX", "LOG_SOFTMAX")
SMALLEST_SCALE = 2.0 ** -26      # beta·S_in·2^26 must exceed 1, with beta 1


def aborting_ops(interpreter) -> List[str]:
    """The ops of a (not yet allocated) interpreter the reference kernels abort on, each as
    ``"op N SOFTMAX <- <input tensor>: input scale <S>"``."""
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = []
    for i, op in enumerate(interpreter._get_ops_details()):
        if op["op_name"] not in SOFTMAX_OPS:
            continue
        tensor = details[op["inputs"][0]]
        scale, _ = tensor["quantization"]
        if 0.0 < scale <= SMALLEST_SCALE:
            found.append(f"op {i} {op['op_name']} <- {tensor['name']}: input scale {scale:.3g}")
    return found


def failure_message(culprits: List[str]) -> str:
    return (f"LiteRT's reference kernels (kernels='builtin_ref') would abort the process on this model: their int8 "
            f"softmax needs an input scale over 2^-26 (1.5e-8), and these ops have less: {culprits}. A scale that "
            f"small is a range under 3.8e-6: the logits were constant over the calibration data (a dead range). "
            f"Calibrate or train so that they vary, or verify with kernels='builtin_without_default_delegates' "
            f"(the default) or 'builtin', which run it.")
