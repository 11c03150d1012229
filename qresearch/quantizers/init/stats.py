"""Per-channel statistics an init rule reads, from one tensor (in the graph) or from every calibration
batch (accumulated in numpy, bounded memory).

A tensor is seen as rows × channels (``as_rows``): channels are the quantizer's channel axes (one
column when per-tensor). Exact running statistics (count, min, max, max|x|, Σ|x|, Σx, Σx²) cover every
value; percentile and MSE read a uniform sample of rows (reservoir sampling, Vitter's algorithm R over
rows), which holds every row while fewer than ``max_rows`` were seen.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from qresearch._compat import tf
from qresearch.quantizers import ops

#: Rows kept for percentile/MSE per quantizer during calibration: 2^18 rows of one channel is 1 MiB.
MAX_SAMPLE_VALUES = 2 ** 18


@dataclasses.dataclass
class Stats:
    """Statistics per channel (shape ``[C]``) and a sample of rows (``[m, C]``), as float32 tensors.

    Non-finite values are left out of the exact statistics and count as 0 in the sample."""

    min: tf.Tensor
    max: tf.Tensor
    max_abs: tf.Tensor
    mean_abs: tf.Tensor
    mean: tf.Tensor
    std: tf.Tensor
    sample: tf.Tensor


def as_rows(x, axes: Optional[Sequence[int]]):
    """``x`` as ``[rows, channels]``: the channel axes last and flattened (one column when per-tensor)."""
    if axes is None:
        return tf.reshape(x, [-1, 1])
    flat, _ = ops.move_channels_last(x, axes)
    channels = 1
    for a in axes:
        channels *= int(x.shape[a])
    return tf.reshape(flat, [-1, channels])


def stats_of(rows) -> Stats:
    """Stats of one ``[rows, C]`` tensor, in TensorFlow ops (usable inside a traced training step)."""
    rows = tf.cast(rows, tf.float32)
    finite = tf.math.is_finite(rows)
    mean = ops.reduce_finite(tf.reduce_mean, rows, [0], empty=0.0)
    centred = tf.where(finite, rows - mean, tf.zeros_like(rows))
    var = ops.reduce_finite(tf.reduce_mean, tf.where(finite, tf.square(centred), rows), [0], empty=0.0)
    return Stats(min=ops.reduce_finite(tf.reduce_min, rows, [0], empty=0.0),
                 max=ops.reduce_finite(tf.reduce_max, rows, [0], empty=0.0),
                 max_abs=ops.reduce_finite(tf.reduce_max, tf.abs(rows), [0], empty=0.0),
                 mean_abs=ops.reduce_finite(tf.reduce_mean, tf.abs(rows), [0], empty=0.0),
                 mean=mean, std=tf.sqrt(var), sample=tf.where(finite, rows, tf.zeros_like(rows)))


class Accumulator:
    """Running statistics over calibration batches (numpy, float64 sums); ``stats()`` at the end."""

    def __init__(self, seed: int = 0, max_values: int = MAX_SAMPLE_VALUES):
        self.rng = np.random.default_rng(seed)
        self.max_values = int(max_values)
        self.seen = 0                  # rows seen
        self.count = self.lo = self.hi = self.max_abs = self.sum_abs = self.total = self.total_sq = None
        self.sample: Optional[np.ndarray] = None

    def update(self, rows) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        finite = np.isfinite(rows)
        clean = np.where(finite, rows, 0.0)
        big = np.finfo(np.float64).max
        batch = (finite.sum(0), np.where(finite, rows, big).min(0), np.where(finite, rows, -big).max(0),
                 np.abs(clean).max(0), np.abs(clean).sum(0), clean.sum(0), np.square(clean).sum(0))
        if self.count is None:
            (self.count, self.lo, self.hi, self.max_abs, self.sum_abs, self.total, self.total_sq) = batch
        else:
            self.count = self.count + batch[0]
            self.lo, self.hi = np.minimum(self.lo, batch[1]), np.maximum(self.hi, batch[2])
            self.max_abs = np.maximum(self.max_abs, batch[3])
            self.sum_abs, self.total, self.total_sq = self.sum_abs + batch[4], self.total + batch[5], \
                self.total_sq + batch[6]
        self._sample(clean.astype(np.float32))

    def _sample(self, rows: np.ndarray) -> None:
        """Reservoir sampling of rows: after n rows, each is in the sample with probability cap/n."""
        cap = max(1, self.max_values // max(1, rows.shape[1]))
        if self.sample is None:
            self.sample = np.empty((0, rows.shape[1]), np.float32)
        room = max(0, cap - len(self.sample))
        if room:
            self.sample = np.concatenate([self.sample, rows[:room]])
        rest = rows[room:]
        if len(rest):
            index = self.seen + room + np.arange(len(rest))          # global row numbers
            slot = (self.rng.random(len(rest)) * (index + 1)).astype(np.int64)
            keep = slot < cap
            self.sample[slot[keep]] = rest[keep]                     # later rows overwrite earlier: as in R
        self.seen += len(rows)

    def stats(self) -> Stats:
        n = np.maximum(self.count, 1)
        none = self.count == 0
        mean = self.total / n
        var = np.maximum(self.total_sq / n - mean ** 2, 0.0)
        f = lambda a: tf.constant(np.where(none, 0.0, a), tf.float32)  # noqa: E731
        return Stats(min=f(self.lo), max=f(self.hi), max_abs=f(self.max_abs), mean_abs=f(self.sum_abs / n),
                     mean=f(mean), std=f(np.sqrt(var)), sample=tf.constant(self.sample, tf.float32))
