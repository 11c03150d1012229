"""Conv biases of a converted 16x8 model stored as int64, as LiteRT's 16x8 kernels read them.

The 16x8 spec stores a conv's bias as int64 (``tflite-int8-spec.md``; TFLite's 16x8 reference kernels, TF pull
request 36129). TF 2.21 converts a QAT model's conv biases to int32 in the 16x8 op set: DEPTHWISE_CONV_2D then
refuses to run ("bias->type != kTfLiteInt64") and CONV_2D gives wrong outputs (``runtimes.py``; measured on the
digits MobileNet-like with only the depthwise biases widened: 8% deployed against 73% simulated). The converter's
option for an int64 bias is refused without full-integer post-training quantization, and with a representative
dataset it recalibrates the already quantized graph and fails. The integers themselves are right (the bias scale
is input scale x weight scale either way), so widening each int32 value to int64 in the flatbuffer gives the
spec's model: 73.0% deployed against 72.9% simulated, 99.8% argmax agreement, at most 2 output LSB.
"""
from __future__ import annotations

from typing import Iterable, List, Tuple

import numpy as np

from qresearch.hardware.flatbuffer_edits import edited, op_codes, schema, tensor_name

#: TFLite ops whose bias the 16x8 kernels read as int64: (op name, bias input index).
CONV_BIAS_INPUTS = (("CONV_2D", 2), ("DEPTHWISE_CONV_2D", 2))


def widen_conv_biases(tflite_model: bytes, ops: Iterable[Tuple[str, int]] = CONV_BIAS_INPUTS
                      ) -> Tuple[bytes, List[str]]:
    """``tflite_model`` with every int32 bias of ``ops`` stored as int64; returns it and the widened tensors' names."""
    return edited(tflite_model, lambda model: widen_biases(model, ops))


def widen_biases(model, ops: Iterable[Tuple[str, int]] = CONV_BIAS_INPUTS) -> List[str]:
    """``widen_conv_biases`` on a flatbuffer's object form (``flatbuffer_edits``); returns the widened tensors."""
    tflite = schema()
    wanted = {getattr(tflite.BuiltinOperator, name): index for name, index in ops}
    codes = op_codes(model)
    widened: List[str] = []
    done = set()   # buffers already widened (the converter may share one between tensors)
    for graph in model.subgraphs:
        for op in graph.operators:
            index = wanted.get(codes[op.opcodeIndex])
            if index is None or len(op.inputs) <= index or op.inputs[index] < 0:
                continue
            tensor = graph.tensors[op.inputs[index]]
            buffer = model.buffers[tensor.buffer]
            if tensor.type != tflite.TensorType.INT32 or buffer.data is None:
                continue
            if tensor.buffer not in done:
                values = np.frombuffer(bytes(bytearray(buffer.data)), dtype="<i4").astype("<i8")
                buffer.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
                done.add(tensor.buffer)
            tensor.type = tflite.TensorType.INT64
            widened.append(tensor_name(tensor))
    return widened
