"""When the integer emulation runs: never inside an export trace (the converter must read the plain
FakeQuant graph), and with the kernel set a layer names unless ``emulated_kernels`` overrides it."""
from __future__ import annotations

import contextlib
import threading
from typing import Optional

from qresearch.kernels.runtime import KERNELS, IntegerKernels

_state = threading.local()


def exporting() -> bool:
    """True while layers must build the plain FakeQuant graph (what the TFLite converter reads), not the
    emulation: inside a Keras saving trace, or inside ``export_mode``.

    Every export goes through such a trace: ``model.save`` and ``tf.saved_model.save`` trace each layer's
    call and the serving signature under Keras' call context with ``saving=True``, and TF 2.21's
    ``TFLiteConverter.from_keras_model`` saves the model to a temporary SavedModel (its fallback,
    ``trace_model_call``, sets the same flag). ``predict``/``model(x)`` never run with it, so inference
    keeps the emulation and a SavedModel's graphs (what ``from_saved_model`` reads) are FakeQuant graphs.
    """
    return bool(getattr(_state, "exporting", False)) or in_saving_trace()


def in_saving_trace() -> bool:
    """True while TensorFlow or Keras traces a model for export.

    TF's save context covers all of ``tf.saved_model.save`` (so also ``model.save`` and the converter's
    SavedModel step, and a QAT model nested in another model). Keras' call-context ``saving`` flag covers
    ``trace_model_call``, which the converter falls back to when saving fails: Keras sets it around the model
    call, whose ``__call__`` then opens a fresh context without it, so ``QATModel`` carries it down to its
    layers with ``export_mode``."""
    from tensorflow.python.saved_model import save_context
    from tf_keras.src.engine import base_layer_utils

    return save_context.in_save_context() or bool(base_layer_utils.call_context().saving)


@contextlib.contextmanager
def _state_set(key: str, value):
    old = getattr(_state, key, None)
    setattr(_state, key, value)
    try:
        yield
    finally:
        setattr(_state, key, old)


def export_mode():
    """Layers build the plain FakeQuant graph, not the emulation (entered by ``QATModel`` when a saving trace
    calls it; also usable to trace an export function by hand). A context manager."""
    return _state_set("exporting", True)


def emulated_kernels(name: Optional[str]):
    """Emulate kernel set ``name`` (or none: ``"none"``) instead of each layer's own, e.g. to compare
    with another LiteRT kernel set (``verify(kernels=...)``). Applies to eager calls and new traces.
    A context manager."""
    if name not in (None, "none"):
        KERNELS.get(name)  # an unknown name fails here, with the known ones listed
    return _state_set("override", name)


def trace_key():
    """What a layer's trace reads from this module (the kernel-set override, export mode): a traced
    function is reusable exactly while this key is unchanged."""
    return getattr(_state, "override", None), exporting()


def active_kernels(own: Optional[str]) -> Optional[IntegerKernels]:
    """The kernel set a layer configured with ``own`` emulates now (None: float simulation)."""
    if exporting():
        return None
    name = getattr(_state, "override", None) or own
    if not name or name == "none":
        return None
    return KERNELS.get(name)
