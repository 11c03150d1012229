"""What the emulation may take as fixed within one model call (``QATModel.__call__`` opens ``one_call``).

No quantizer variable changes during a forward pass, so inside one call:
- each quantizer's grid is derived once (``kernels.grid``: a tensor's grid is asked for as one layer's
  output and again as the next layer's input; each derivation is ~40 scalar graph ops per call);
- a kernel that computed the following ReLU layer's output says so (``mark_fused``), and that layer passes
  its values on (``fused_upstream``);
- a kernel hands its integer offsets to the next kernel (``note_offsets`` / ``offsets_of``), as TFLite hands
  the int8 tensor on.

Entries are per graph being built (a ``tf.cond`` branch is its own graph, whose tensors another branch
cannot use) and hold the objects they are keyed by, so no ``id`` is reused while the call lasts. Outside
``one_call`` (a plain Keras call of the layers) nothing is remembered: the layers compute everything.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional, Tuple

from qresearch._compat import tf

_state = threading.local()


@contextlib.contextmanager
def one_call() -> Iterator[None]:
    """Scope of one model call; a model called inside another's call shares the outer scope."""
    if getattr(_state, "tables", None) is not None:
        yield
        return
    _state.tables = {}
    try:
        yield
    finally:
        _state.tables = None


def _key(objects: Tuple[Any, ...]):
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    held = tuple(objects) + (graph,)
    return tuple(id(o) for o in held), held


def remember(table: str, objects: Tuple[Any, ...], value: Any) -> None:
    """Keep ``value`` for ``objects`` (in this call and graph) in ``table``; nothing outside ``one_call``."""
    tables = getattr(_state, "tables", None)
    if tables is not None:
        key, held = _key(objects)
        tables.setdefault(table, {})[key] = (held, value)


def recall(table: str, objects: Tuple[Any, ...]) -> Optional[Any]:
    """What ``remember`` kept for ``objects`` in this call and graph, or None."""
    entries = (getattr(_state, "tables", None) or {}).get(table)
    if not entries:
        return None
    key, held = _key(objects)
    hit = entries.get(key)
    return hit[1] if hit is not None and all(a is b for a, b in zip(hit[0], held)) else None


def mark_fused(quantizer, qvars) -> None:
    """An integer kernel computed the output of the ReLU layer whose output quantizer this is (TFLite fuses
    that ReLU into the kernel before it)."""
    remember("fused", (quantizer, qvars), True)


def fused_upstream(quantizer, qvars) -> bool:
    """True if the kernel before computed this ReLU layer's output in this call: its values are clamped onto
    this quantizer's grid already, which a ReLU and a FakeQuant on that grid keep as they are (the deployed
    model has no op there either)."""
    return bool(recall("fused", (quantizer, qvars)))


def note_offsets(y, offsets, source: Optional[Tuple] = None) -> None:
    """The integer offsets ``q - Z`` (float32) a kernel computed the tensor ``y`` from, on the grid of
    ``source`` (its ``(quantizer, variables)``; None: the kernel's own output grid)."""
    remember("offsets", (y,) + tuple(source or (None, None)), offsets)


def offsets_of(y, source: Optional[Tuple] = None):
    """The offsets ``note_offsets`` recorded for the tensor ``y`` on the grid of ``source``, or None."""
    return recall("offsets", (y,) + tuple(source or (None, None)))
