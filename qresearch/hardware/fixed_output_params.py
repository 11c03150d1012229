"""Fixed-output ops of a converted model stored with the (scale, zero point) their runtime kernel computes in.

LiteRT's int16 LOGISTIC kernel computes onto scale 1/32768, zero point 0, and refuses any other output
quantization ("output->params.scale == 1. / 32768 was not true", tflite/kernels/activations.cc). TF 2.21's
converter gives a QAT model's int16 LOGISTIC output the int8 convention scaled to 16 bits (1/65536, -32768),
then a QUANTIZE onto the grid the simulation's FakeQuant set (1/32768, 0): no 16x8 model with a sigmoid or a
swish deployed (measured on a digits CNN; SOFTMAX and TANH come out right). The op's values do not depend on the
stored parameters (the kernel computes on its one grid), so writing the target's fixed parameters on the output
tensor gives the model the runtime would run. The QUANTIZE after it then maps a grid onto itself and is removed.
"""
from __future__ import annotations

from typing import List, Mapping

import numpy as np

from qresearch.hardware.flatbuffer_edits import edited, op_codes, schema, tensor_name
from qresearch.hardware.runtimes import FIXED_OUTPUT_OPS

_TENSOR_TYPES = {"int8": "INT8", "int16": "INT16"}


def pin_fixed_outputs(tflite_model: bytes, fixed_params: Mapping[str, object], dtype: str) -> tuple:
    """``tflite_model`` with every fixed-output op's ``dtype`` output stored with ``fixed_params[activation name]``
    (a target's ``fixed_output_params``: ``scale``, ``zero_point``); returns it and the re-pinned tensors' names."""
    return edited(tflite_model, lambda model: pin_outputs(model, fixed_params, dtype))


def pin_outputs(model, fixed_params: Mapping[str, object], dtype: str) -> List[str]:
    """``pin_fixed_outputs`` on a flatbuffer's object form (``flatbuffer_edits``); returns the re-pinned tensors."""
    tflite = schema()
    wanted = {getattr(tflite.BuiltinOperator, op): fixed_params[name] for op, name in FIXED_OUTPUT_OPS.items()
              if name in fixed_params and hasattr(tflite.BuiltinOperator, op)}
    tensor_type = getattr(tflite.TensorType, _TENSOR_TYPES[dtype])
    codes = op_codes(model)
    pinned: List[str] = []
    for graph in model.subgraphs:
        for op in graph.operators:
            params = wanted.get(codes[op.opcodeIndex])
            if params is None or not len(op.outputs):
                continue
            tensor = graph.tensors[op.outputs[0]]
            q = tensor.quantization
            if tensor.type != tensor_type or q is None or q.scale is None or len(q.scale) != 1:
                continue
            scale, zero_point = np.float32(params.scale), int(params.zero_point)
            if np.float32(q.scale[0]) == scale and int(q.zeroPoint[0]) == zero_point:
                continue
            q.scale = np.array([scale], dtype=np.float32)
            q.zeroPoint = np.array([zero_point], dtype=np.int64)
            pinned.append(tensor_name(tensor))
            _drop_identity_requantize(graph, op.outputs[0], codes, tflite.BuiltinOperator.QUANTIZE, model)
    return pinned


def _drop_identity_requantize(graph, index: int, codes, quantize_code: int, model) -> None:
    """Remove the QUANTIZE ops that read tensor ``index`` onto its own type and parameters (the converter's
    requantization, now multiplier 1): their readers, the graph's outputs and the signatures read ``index``."""
    src = graph.tensors[index]
    for op in [op for op in graph.operators if codes[op.opcodeIndex] == quantize_code and op.inputs[0] == index]:
        dst_index = op.outputs[0]
        dst = graph.tensors[dst_index]
        if dst.type != src.type or not _same_params(dst.quantization, src.quantization):
            continue
        graph.operators.remove(op)
        for other in graph.operators:
            other.inputs = [index if i == dst_index else i for i in other.inputs]
        graph.outputs = [index if i == dst_index else i for i in graph.outputs]
        for signature in model.signatureDefs or []:
            for t in signature.outputs or []:
                if t.tensorIndex == dst_index:
                    t.tensorIndex = index


def _same_params(a, b) -> bool:
    return a is not None and b is not None and a.scale is not None and b.scale is not None \
        and np.array_equal(np.float32(a.scale), np.float32(b.scale)) and np.array_equal(a.zeroPoint, b.zeroPoint)
