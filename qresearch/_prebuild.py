"""Create a compiled model's training variables at compile time, so ``fit`` traces its step once.

Keras creates the optimizer's variables (slots, iteration count) on its first ``apply_gradients`` and the
compiled metrics' (totals, counts) on their first update, both inside the first trace of the training
step; a ``tf.function`` that creates variables is traced a second time, without creating them. Created
before, the step is traced once: measured on the deployment tests' MobileNet-like with LSQ (no metrics),
the first ``fit`` of 3 steps 9.0 -> 5.5 s and a second model's 5.4 -> 2.6 s. The variables start as Keras
would start them (zeros), so training gives the same numbers (tests/test_prebuild.py).
"""
from __future__ import annotations

import numpy as np

from qresearch._compat import keras, tf


def build_optimizer(model) -> None:
    """Create ``model.optimizer``'s variables for ``model.trainable_variables``, under the model's
    distribution strategy. Optimizers of other kinds (legacy, loss-scaled) are left to build themselves.
    Settings read at build time (``exclude_from_weight_decay``) must be made before."""
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, keras.optimizers.Optimizer) or \
            isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        return
    with model.distribute_strategy.scope():
        optimizer.build(model.trainable_variables)


def build_metrics(model, y_true) -> None:
    """Create the compiled loss's and metrics' variables for labels like ``y_true`` (a batch of arrays or
    tensors, or ``tf.TensorSpec``s: the shapes after the first axis, dtypes and structure are read, not the
    values) and the model's outputs. Keras picks a metric's variant (``"accuracy"``: sparse or not) from
    these shapes, as it would in ``fit``."""
    if getattr(model, "compiled_loss", None) is None or getattr(model, "outputs", None) is None:
        return
    y_pred = tf.nest.pack_sequence_as(
        model.output, [tf.zeros([1, *t.shape[1:]], t.dtype) for t in tf.nest.flatten(model.output)])
    y_true = tf.nest.map_structure(_one_zero_example, y_true)
    with model.distribute_strategy.scope():
        if not model.compiled_loss.built:
            model.compiled_loss.build(y_pred)
        if model.compiled_metrics is not None and not model.compiled_metrics.built:
            model.compiled_metrics.build(y_pred, y_true)


def build_metrics_for(model, x, y) -> None:
    """``build_metrics`` for the labels ``fit(x, y)``/``evaluate(x, y)`` will see, where they are known
    before iterating: ``y``, or the second element of a ``tf.data.Dataset``'s elements (not for a
    generator or a Sequence: Keras then creates the variables in the first trace, as it would)."""
    labels = _labels_of(x, y)
    # dense labels only (a ragged or sparse spec: left to Keras)
    if labels is not None and all(isinstance(leaf, tf.TensorSpec) or
                                  (not isinstance(leaf, tf.TypeSpec) and hasattr(leaf, "shape"))
                                  for leaf in tf.nest.flatten(labels)):
        build_metrics(model, labels)


def _labels_of(x, y):
    if isinstance(y, (list, tuple)) and y and np.isscalar(y[0]):
        return np.asarray(y)   # a plain list of labels, not one array per output
    if y is not None:
        return y
    if isinstance(x, tf.data.Dataset) and isinstance(x.element_spec, tuple) and len(x.element_spec) >= 2:
        return x.element_spec[1]
    return None


def _one_zero_example(y):
    spec = y if isinstance(y, tf.TensorSpec) else tf.TensorSpec.from_tensor(tf.convert_to_tensor(y[:1]))
    return tf.zeros([1, *spec.shape[1:]], spec.dtype)
