"""``model(x, training=False)`` as a graph function, traced once per model and emulation state.

An eager call of a model that emulates integer kernels runs the emulation op by op, with Python
re-deriving grids and multipliers per call (``verify``'s simulation was ~30-50x a graph call). A graph
function cannot serve every state: the emulation is chosen while tracing (``modes.active_kernels``), so
there is one trace per ``modes.trace_key()``. Graph and eager calls give the same bits
(``benchmarks/identity.py`` checks ``deploy.simulate`` against outputs saved from eager calls).
"""
from __future__ import annotations

import weakref

from qresearch._compat import tf
from qresearch.kernels import modes

# model -> {trace key -> tf.function}; the functions hold the model weakly, so a model is not kept alive
_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def inference_function(model, sample_shape, dtype=tf.float32):
    """A tf.function computing ``model(x, training=False)`` for ``x`` of shape ``(any batch,) + sample_shape``."""
    key = (modes.trace_key(), tuple(sample_shape), tf.as_dtype(dtype).name)
    per_model = _FUNCTIONS.setdefault(model, {})
    if key not in per_model:
        ref = weakref.ref(model)
        spec = tf.TensorSpec((None,) + tuple(sample_shape), dtype)
        per_model[key] = tf.function(lambda x: ref()(x, training=False), input_signature=[spec])
    return per_model[key]
