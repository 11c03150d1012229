"""Why LiteRT's XNNPACK delegate (``verify(kernels="builtin")``) can fail to build a model that the builtin kernels
run: its int8 conv / depthwise / fully connected operators take a requantization scale ``S_in·S_w/S_out`` in
``[2^-32, 256)`` only, and the delegate does not check that before building its runtime, so one such op fails the
whole model (measured on ai-edge-litert 2.x: a dead ReLU branch, whose range the converter collapses to 1e-6, gave a
next conv a scale of 1557). The bounds are XNNPACK's operator checks (its ``create_convolution2d_nhwc`` family)."""
from __future__ import annotations

from typing import List

import numpy as np

from qresearch.kernels.tflite_ops import CONV_OPS

SCALE_RANGE = (2.0 ** -32, 256.0)


def refused_ops(interpreter) -> List[str]:
    """The conv / dense ops of an allocated (builtin-kernel) interpreter whose requantization scale XNNPACK refuses,
    each as ``"op N CONV_2D -> <output tensor>: S_in·S_w/S_out from <min> to <max>"``."""
    details = {t["index"]: t for t in interpreter.get_tensor_details()}

    def scales(index):
        return np.asarray(details[index]["quantization_parameters"]["scales"], np.float32)

    found = []
    for i, op in enumerate(interpreter._get_ops_details()):
        if op["op_name"] not in CONV_OPS:
            continue
        x, w = (op["inputs"][2], op["inputs"][1]) if op["op_name"] == "TRANSPOSE_CONV" else op["inputs"][:2]
        out = op["outputs"][0]
        if not all(len(scales(t)) for t in (x, w, out)):
            continue   # a float op (a float island): XNNPACK runs it in float
        ratio = scales(x)[0] * scales(w) / scales(out)[0]
        if (ratio < SCALE_RANGE[0]).any() or (ratio >= SCALE_RANGE[1]).any():
            found.append(f"op {i} {op['op_name']} -> {details[out]['name']}: S_in·S_w/S_out from "
                         f"{ratio.min():.3g} to {ratio.max():.3g}")
    return found


def failure_message(interpreter, error: Exception) -> str:
    """What to tell a user whose model the XNNPACK delegate failed to prepare (``interpreter``: the same model on
    the builtin kernels, allocated)."""
    culprits = refused_ops(interpreter)
    why = (f"XNNPACK takes a conv/dense requantization scale S_in·S_w/S_out in [2^-32, 256), and these ops are "
           f"outside it: {culprits}. A tensor of scale ~4e-9 is one that was 0 throughout calibration (a dead "
           f"activation: the converter gives it a 1e-6 range); a range that is not collapsed (other calibration "
           f"data, or a model without that branch) lets XNNPACK build it. " if culprits else "")
    return (f"LiteRT's XNNPACK delegate (kernels='builtin') could not prepare this model ({error}). {why}The "
            f"model runs on LiteRT's builtin kernels: verify it with kernels='builtin_without_default_delegates' "
            f"(the default) or 'builtin_ref'.")
