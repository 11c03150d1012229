"""Checks on input data shared by every entry point: dataset loading and quantizer calibration.

A NaN or infinite input does not reliably stop a run: the loss can stay finite while the
weights or quantizer ranges it reaches become NaN, and the run ends "completed" at chance
accuracy. So data is refused before it is used, with the array, the count and the first sample.
Numpy only (no TensorFlow, no other qresearch module), so ``data`` and ``schemes`` can both import it.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

import numpy as np

from qresearch.errors import QResearchError


class DataError(QResearchError, ValueError):
    """Data a run would train, calibrate or evaluate on is unusable (non-finite values, bad labels)."""


def _nonfinite(a: np.ndarray) -> Tuple[int, Optional[Tuple[int, ...]]]:
    """(count, index of the first) of ``a``'s NaN and infinite values."""
    if a.dtype.kind not in "fc" or a.size == 0:
        return 0, None
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(a.sum()):  # one pass without a mask the size of ``a`` (CIFAR: 0.08 s, the mask: 0.8 s)
            return 0, None
    bad = ~np.isfinite(a)  # the sum can also overflow on finite data: count exactly
    count = int(bad.sum())
    if not count:
        return 0, None
    return count, tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape))


def require_finite(name: str, chunks: Iterable[Any], fix: str) -> None:
    """Raise DataError when ``chunks`` hold a NaN or an infinity.

    ``chunks`` are consecutive pieces of one array along the sample axis (the array itself, or its
    batches), so the index reported is the sample's index in the whole; ``name`` names the array
    in the message, ``fix`` says what to do.
    """
    count = total = offset = 0
    first: Optional[Tuple[int, ...]] = None
    for chunk in chunks:
        a = np.asarray(chunk)
        n, where = _nonfinite(a)
        if n and first is None:
            first = (where[0] + offset,) + where[1:] if where else ()
        count += n
        total += int(a.size)
        offset += len(a) if a.ndim else 1
    if count:
        at = f"sample {first[0]} (element {list(first)})" if first else "its only element"
        raise DataError(
            f"{name} holds {count} non-finite value{'s' if count != 1 else ''} (NaN or infinity) among {total}; "
            f"the first is at {at}. Training or calibrating on it does not fail by itself: the run would end at "
            f"chance accuracy. Fix: {fix}")
