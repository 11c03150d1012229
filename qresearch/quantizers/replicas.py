"""Statistics a quantizer writes inside a training step, made equal on every replica.

Under ``tf.distribute`` (``training.strategy=mirrored``) each replica sees its slice of the global batch,
and an ``assign`` in the replica context writes that replica's copy only: min-max ranges tracked from
the batch, or a data init, would silently differ between copies and from one device. These helpers
reduce a statistic over the replicas first (min, max, mean, rows gathered), so every copy gets the value
one device computes on the whole batch. With no strategy, or one replica, they return their input
unchanged (no op is added: the single-device graph is the one it was).

The reductions are synchronisation points: call them outside ``tf.cond`` branches (tf.distribute does not
support a ``merge_call`` inside control flow). Means assume equal slices per replica (a global batch
divisible by the replica count).
"""
from __future__ import annotations

import dataclasses

from qresearch._compat import tf


def context():
    """The replica context when more than one replica runs this step; else None."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def active() -> bool:
    return context() is not None


def _gathered(ctx, x):
    """``[replicas, *x.shape]``: every replica's ``x`` (ReduceOp has no MIN/MAX: gather, then reduce)."""
    return ctx.all_gather(tf.expand_dims(x, 0), axis=0)


def reduce_max(x):
    ctx = context()
    return x if ctx is None else tf.reduce_max(_gathered(ctx, x), axis=0)


def reduce_min(x):
    ctx = context()
    return x if ctx is None else tf.reduce_min(_gathered(ctx, x), axis=0)


def reduce_mean(x):
    ctx = context()
    return x if ctx is None else ctx.all_reduce(tf.distribute.ReduceOp.MEAN, x)


def gather_rows(x):
    """Every replica's rows (axis 0), concatenated in replica order."""
    ctx = context()
    return x if ctx is None else ctx.all_gather(x, axis=0)


def sync_stats(stats):
    """``init.stats.Stats`` of the global batch from each replica's own (exact for min/max/mean/std and
    the sample's values; means assume equal slices)."""
    if context() is None:
        return stats
    mean = reduce_mean(stats.mean)
    second = reduce_mean(tf.square(stats.std) + tf.square(stats.mean))  # E[x^2] per replica, then global
    std = tf.sqrt(tf.maximum(second - tf.square(mean), 0.0))
    return dataclasses.replace(stats, min=reduce_min(stats.min), max=reduce_max(stats.max),
                               max_abs=reduce_max(stats.max_abs), mean_abs=reduce_mean(stats.mean_abs),
                               mean=mean, std=std, sample=gather_rows(stats.sample))
