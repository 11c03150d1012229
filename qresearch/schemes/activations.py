"""Activation functions qresearch defines, where Keras has none for an op a runtime runs as one kernel."""
from __future__ import annotations

from qresearch._compat import keras, tf

#: hard swish's constants (Howard et al. 2019, "Searching for MobileNetV3", §5.2: ``x · ReLU6(x + 3) / 6``)
HARD_SWISH_SHIFT = 3.0
HARD_SWISH_DIVISOR = 6.0


@keras.utils.register_keras_serializable(package="qresearch")
def hard_swish(x):
    """``x · relu6(x + 3) / 6`` in the operand order the TFLite converter fuses into one HARD_SWISH op, a 16-bit
    fixed-point kernel the integer emulation runs (``kernels.hard_swish``). ``Activation(qresearch.hard_swish)``
    or a conv's ``activation=qresearch.hard_swish``; the same chain written with Keras layers or TF ops becomes
    this (``graph.fuse_hard_swish``)."""
    return x * tf.nn.relu6(x + HARD_SWISH_SHIFT) * (1.0 / HARD_SWISH_DIVISOR)
