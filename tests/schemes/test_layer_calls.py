"""``layer_calls.dense_nd``: Keras Dense on a rank > 2 input, computed without reshaping the kernel, bit for bit
with ``Dense.call`` (forward and gradients). Deployment: tests/hardware/test_deploy.py."""
import numpy as np
import pytest

from qresearch import keras, tf
from qresearch.schemes.layer_calls import dense_nd


@pytest.mark.parametrize("shape", [(4, 6, 5), (3, 4, 6, 5)])
def test_dense_nd_is_dense_call_bit_for_bit(shape):
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(7, activation="relu", bias_initializer="random_normal")
    x = tf.constant(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    layer.build(x.shape)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        mine, theirs = dense_nd(layer, x), layer.call(x)
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert mine.shape == theirs.shape
    wrt = [x, layer.kernel, layer.bias]
    for a, b in zip(tape.gradient(mine, wrt), tape.gradient(theirs, wrt)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_dense_nd_leaves_rank_2_and_unknown_inner_sizes_right():
    layer = keras.layers.Dense(3)
    layer.build((None, 5))
    assert dense_nd(layer, tf.zeros((2, 5))) is None   # rank 2: the layer's own call

    @tf.function(input_signature=[tf.TensorSpec((None, None, 5))])
    def run(x):
        return dense_nd(layer, x)   # a sequence of unknown length: the shape is read at run time

    x = np.random.default_rng(1).normal(size=(2, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(run(x).numpy(), layer.call(tf.constant(x)).numpy())
