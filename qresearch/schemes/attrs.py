"""Weights of sublayers are named by dotted attribute paths ("cell.kernel"): read, write and test them."""
from __future__ import annotations


def get_attr(layer, path: str):
    """``layer.a.b`` for ``path`` "a.b"."""
    obj = layer
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_attr(layer, path: str, value) -> None:
    head, _, last = path.rpartition(".")
    setattr(get_attr(layer, head) if head else layer, last, value)


def has_attrs(layer, attrs) -> bool:
    """Whether every (dotted) attribute in ``attrs`` is set on ``layer`` (weights built)."""
    try:
        return all(get_attr(layer, a) is not None for a in attrs)
    except AttributeError:
        return False
