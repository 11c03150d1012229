"""The QUANTIZE a converted model needs where its input feeds a layer on another grid, restored.

A model input that a conv reads and a Concatenate reads too (a U-Net's or a DenseNet's skip of the raw input) is
quantized twice in the QAT graph: onto the input quantizer's grid, and from there onto the concatenation's. TF
2.21's converter turns both into QUANTIZE ops of the float input; with int8 (or int16) I/O it then removes the
input's QUANTIZE ops, makes one of their outputs the model's input and leaves the others with no producer: the
interpreter stops with "Input tensor N lacks data" (measured on a conv + Concatenate([conv, input]) net). The model
the simulation computes has the input on the input quantizer's grid and a requantization onto the other grid, the
QUANTIZE the converter puts before any concatenation input on another grid. This edit writes that model: the
tensor on the input quantizer's grid becomes the input, and each orphaned tensor is computed from it by a QUANTIZE.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from qresearch.hardware.flatbuffer_edits import op_codes, schema, tensor_name

# the version TFLite's quantize tool writes for a QUANTIZE with an int8 output; the op versioning gives an int16
# output version 2 as well (tensorflow/lite/tools/versioning/op_version.cc)
QUANTIZE_VERSION = 2


def orphaned_tensors(graph, buffers) -> List[int]:
    """Tensors an op reads that no op writes and that are neither graph inputs nor constants."""
    written = {int(i) for op in graph.operators for i in op.outputs}
    inputs = {int(i) for i in graph.inputs}
    read = sorted({int(i) for op in graph.operators for i in op.inputs if int(i) >= 0})
    return [i for i in read if i not in written and i not in inputs and not _constant(graph.tensors[i], buffers)]


def restore_input_quantizes(model, input_grid: Optional[Tuple[float, int]]) -> List[str]:
    """Edit (``flatbuffer_edits``): where the converter left tensors of the same type and shape as the input with no
    producer, make the one on ``input_grid`` ((scale, zero point) of the model input's quantizer) the input and
    compute the others from it with a QUANTIZE. Returns the restored tensors' names; raises ``ValueError`` where the
    orphans are not of that kind (the model cannot run, and nothing here can say how to mend it)."""
    graph = model.subgraphs[0]
    orphans = orphaned_tensors(graph, model.buffers)
    if not orphans:
        return []
    if len(graph.inputs) != 1 or input_grid is None:
        raise ValueError(_unrepaired(graph, orphans, "the model has more than one input or no input quantizer"))
    current = int(graph.inputs[0])
    like = graph.tensors[current]
    group = [current] + orphans
    if any(graph.tensors[i].type != like.type or list(graph.tensors[i].shape) != list(like.shape) for i in group):
        raise ValueError(_unrepaired(graph, orphans, "they are not copies of the input on other grids"))
    on_grid = [i for i in group if _on_grid(graph.tensors[i], input_grid)]
    if len(on_grid) != 1:
        raise ValueError(_unrepaired(graph, orphans, f"{len(on_grid)} of them are on the input quantizer's grid"))
    source = on_grid[0]
    code = _quantize_code(model)
    tflite = schema()
    # the input first, then one QUANTIZE per other copy, ahead of every op (the operators run in this order)
    requantizes = []
    for target in group:
        if target == source:
            continue
        op = tflite.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, [source], [target]
        op.builtinOptionsType = tflite.BuiltinOptions.QuantizeOptions
        op.builtinOptions = tflite.QuantizeOptionsT()
        requantizes.append(op)
    graph.operators = requantizes + list(graph.operators)
    graph.inputs = [source]
    for signature in model.signatureDefs or []:
        for t in signature.inputs or []:
            if t.tensorIndex == current:
                t.tensorIndex = source
    return [tensor_name(graph.tensors[i]) for i in group if i != source]


def _on_grid(tensor, grid: Tuple[float, int]) -> bool:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        return False
    return np.float32(q.scale[0]) == np.float32(grid[0]) and int(q.zeroPoint[0]) == int(grid[1])


def _constant(tensor, buffers) -> bool:
    data = buffers[tensor.buffer].data if 0 <= tensor.buffer < len(buffers) else None
    return data is not None and len(data) > 0


def _quantize_code(model) -> int:
    """The index of a QUANTIZE operator code in ``model``, added where the converter left none."""
    tflite = schema()
    quantize = tflite.BuiltinOperator.QUANTIZE
    for index, code in enumerate(op_codes(model)):
        if code == quantize:
            return index
    entry = tflite.OperatorCodeT()
    entry.builtinCode = quantize
    entry.deprecatedBuiltinCode = min(quantize, tflite.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    entry.version = QUANTIZE_VERSION
    model.operatorCodes.append(entry)
    return len(model.operatorCodes) - 1


def _unrepaired(graph, orphans, why: str) -> str:
    names = ", ".join(tensor_name(graph.tensors[i]) for i in orphans)
    return (f"the converted model reads tensors no op computes ({names}): the TFLite converter dropped the QUANTIZE "
            f"ops that make them, and they cannot be restored here ({why})")
