"""Edits of a converted ``.tflite`` flatbuffer on its object form (TF's ``flatbuffer_utils``): read once, every
edit a runtime needs applied (``bias_widening``, ``fixed_output_params``), written once if one changed it."""
from __future__ import annotations

from typing import Callable, List, Tuple

Edit = Callable[[object], List[str]]   # model object -> names of the tensors it changed


def schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def op_codes(model) -> List[int]:
    """The builtin operator code of each entry of ``model.operatorCodes``."""
    return [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]


def tensor_name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def edited(tflite_model: bytes, *edits: Edit) -> Tuple[bytes, List[str]]:
    """``tflite_model`` after ``edits``, and the names of the tensors they changed (the same bytes if none)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_model))
    changed = [name for edit in edits for name in edit(model)]
    if not changed:
        return tflite_model, changed
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), changed
