"""Accumulator statistics: what the integer accumulators of each layer hold on real data.

Inside ``recording()`` every emulated conv / fully connected op run eagerly records, per layer, the
largest |accumulator| (bias included, before any overflow handling), how many outputs it computed and how
many of them did not fit the kernel set's accumulator width. ``accumulator_stats`` runs a model over data
that way. Graph-mode calls (``predict``, a ``tf.function``) record nothing: the values are read with numpy.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, Optional

import numpy as np

from qresearch._compat import tf

_state = threading.local()


@contextlib.contextmanager
def recording() -> Iterator[Dict[str, Dict[str, Any]]]:
    """Collect accumulator statistics of the ops run eagerly inside; yields ``{layer: stats}``."""
    old = getattr(_state, "stats", None)
    _state.stats = {}
    try:
        yield _state.stats
    finally:
        _state.stats = old


def active() -> bool:
    """True where ``record`` would keep values: inside ``recording()``, running eagerly."""
    return getattr(_state, "stats", None) is not None and tf.executing_eagerly()


def record(layer: Optional[str], acc, bits: int) -> None:
    """Add one batch's accumulators of ``layer`` (called by the kernel sets' ``accumulate``)."""
    stats = getattr(_state, "stats", None)
    if stats is None or layer is None or not tf.executing_eagerly():
        return
    values = np.asarray(acc)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    s = stats.setdefault(layer, {"accumulator_bits": int(bits), "max_abs": 0, "outputs": 0, "overflowing": 0})
    s["max_abs"] = max(s["max_abs"], int(np.abs(values).max(initial=0)))
    s["outputs"] += int(values.size)
    s["overflowing"] += int(np.count_nonzero((values < lo) | (values > hi)))


def summarize(stats: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per layer: the recorded counts plus ``bits_needed`` (the signed width that holds ``max_abs``),
    ``headroom_bits`` (width minus that) and ``overflow_fraction``."""
    out = {}
    for layer, s in stats.items():
        needed = int(s["max_abs"]).bit_length() + 1
        out[layer] = dict(s, bits_needed=needed, headroom_bits=s["accumulator_bits"] - needed,
                          overflow_fraction=s["overflowing"] / s["outputs"] if s["outputs"] else 0.0)
    return out


def accumulator_stats(model, x, batch_size: int = 256) -> Dict[str, Dict[str, Any]]:
    """Run ``model`` over ``x`` in inference, eagerly, and return its layers' accumulator statistics
    (``summarize``); empty when the model emulates no kernel set."""
    with recording() as stats:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size], training=False)
    return summarize(stats)
