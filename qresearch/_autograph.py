"""AutoGraph off for our own layer and quantizer code, on for the code a researcher plugs in.

Under ``tf.function`` (``fit``, ``predict``, Keras' functional construction) Keras converts every layer's
``call`` with AutoGraph, and AutoGraph converts, call by call, every function that code reaches: for a
quantized model that is our wrappers, quantizers and kernels, whose Python branches only on static facts
(layer kinds, bit widths, flags), never on tensor values. Their conversion and the per-call dispatch of
converted code cost ~20% of building, calibrating and tracing a model (measured: notes/performance.md,
"third session"). So our wrappers' ``call`` runs unconverted (``static``), and the code we do not own — a wrapped
layer's ``call``, a plugin quantizer — runs through ``user_code``: converted as it would be without the
wrapper, under the AutoGraph status of the wrapper's caller (a Python ``if`` on a tensor in a custom layer
still becomes a ``tf.cond``).
"""
from __future__ import annotations

import functools
import inspect
import threading
from typing import Callable

from qresearch._compat import tf

_LOCAL = threading.local()


def _callers() -> list:
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    return stack


def static(method: Callable) -> Callable:
    """Decorator of a layer's ``call`` whose Python branches on static facts only: run it unconverted,
    remembering the caller's AutoGraph status for ``user_code`` calls made inside it."""
    unconverted = tf.autograph.experimental.do_not_convert(method)

    @functools.wraps(method)
    def call(*args, **kwargs):
        _callers().append(tf.__internal__.autograph.control_status_ctx())
        try:
            return unconverted(*args, **kwargs)
        finally:
            _callers().pop()

    return call


def user_code(fn: Callable) -> Callable:
    """``fn`` (a wrapped layer's ``call``, an activation, a quantizer) as the caller of the enclosing
    ``static`` call would run it: converted by AutoGraph where that caller's status converts. Code of
    qresearch, Keras and TensorFlow runs as it is (its control flow on tensors is explicit: ``smart_cond``,
    ``tf.cond``), as does everything outside a ``static`` call or eagerly."""
    stack = _callers()
    if not stack or tf.executing_eagerly() or is_library(fn):
        return fn
    return tf.__internal__.autograph.tf_convert(fn, stack[-1])


_LIBRARIES = ("qresearch.", "tf_keras.", "keras.", "tensorflow.", "tensorflow_model_optimization.")


def is_library(fn) -> bool:
    """True for qresearch's, Keras' and TensorFlow's own code (static Python: nothing to convert). A bound
    method or a callable object counts by its object's class, so a user's subclass is converted."""
    if inspect.ismethod(fn):
        module = type(fn.__self__).__module__
    elif inspect.isfunction(fn) or inspect.isbuiltin(fn):
        module = fn.__module__
    else:
        module = type(fn).__module__
    return (module or "").startswith(_LIBRARIES)
