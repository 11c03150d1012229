"""Calibration-time collection: statistics over every calibration batch, variables set once at the end.

``schemes.calibrate`` runs the model inside ``collecting()``. Each activation quantizer whose init reads
data adds its input batch to an ``Accumulator`` and passes the batch through unquantized, so every
quantizer sees the float model's activations (as in post-training calibration), not ones distorted by
upstream quantizers whose parameters are not set yet. ``Collector.apply()`` then evaluates each
quantizer's rule on its accumulated statistics and writes the variables. Weight quantizers do not
collect: their tensor is the same in every batch, and they initialise from it in the graph.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Dict, Optional

from qresearch._compat import tf
from qresearch.errors import QResearchError
from qresearch.quantizers.init.stats import Accumulator, as_rows

_state = threading.local()


def current() -> Optional["Collector"]:
    return getattr(_state, "collector", None)


class Collector:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self._entries: Dict[int, tuple] = {}   # id(flag variable) -> (quantizer, weights, accumulator)

    def observe(self, quantizer, x, weights, axes) -> None:
        if not tf.executing_eagerly():
            raise QResearchError("calibration collects statistics eagerly: call the model directly "
                                 "(model(x)), not inside a tf.function")
        key = id(weights[quantizer.init_flag])
        if key not in self._entries:
            self._entries[key] = (quantizer, weights, Accumulator(seed=self.seed + len(self._entries)))
        self._entries[key][2].update(as_rows(tf.convert_to_tensor(x), axes).numpy())

    def apply(self) -> int:
        """Set every observed quantizer's variables from all its batches; returns how many."""
        for quantizer, weights, acc in self._entries.values():
            quantizer.assign_init(weights, acc.stats())
        return len(self._entries)


@contextlib.contextmanager
def collecting(seed: int = 0):
    """Collect init statistics while the block runs; ``apply()`` the result yourself at the end."""
    old = current()
    _state.collector = Collector(seed)
    try:
        yield _state.collector
    finally:
        _state.collector = old
