"""Accuracy of a model on a dataset's test split, streamed batch by batch from its tf.data pipeline.

One path for in-memory and streaming datasets: labels come with the images, so nothing but a
running count is kept (memory stays flat as the test set grows).
"""
from __future__ import annotations

from qresearch._compat import tf


def test_accuracy(model, dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (logits or probabilities) on ``dataset.test_pipeline(batch_size)``."""
    pipeline = dataset.test_pipeline(int(batch_size))

    # traced once, for any batch size (the last batch is smaller): tracing a QAT model takes seconds
    @tf.function(input_signature=list(pipeline.element_spec))
    def count(x, y):
        pred = tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32)
        hits = tf.reduce_sum(tf.cast(tf.equal(pred, tf.cast(tf.reshape(y, [-1]), tf.int32)), tf.int64))
        return tf.stack([hits, tf.cast(tf.shape(pred)[0], tf.int64)])

    # summed as tensors: no wait for each batch, so reading the next one overlaps this one (as predict does)
    total = tf.zeros([2], tf.int64)
    for x, y in pipeline:
        total += count(x, y)
    hits, n = (int(v) for v in total.numpy())
    return hits / n if n else float("nan")
