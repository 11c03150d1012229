"""``layer_calls.dense_nd``: Keras Dense on a rank > 2 input, computed without reshaping the kernel, bit for bit
with ``Dense.call`` (forward and gradients); ``dilated_conv``: a dilated conv as one op, equal to the layer's own
call. Deployment: tests/hardware/test_deploy.py."""
import numpy as np
import pytest

from qresearch import keras, tf
from qresearch.schemes.layer_calls import dense_nd, dilated_conv


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


DILATED = {
    "conv2d": (lambda: keras.layers.Conv2D(5, 3, padding="same", dilation_rate=(2, 3), activation="relu"),
               (2, 9, 9, 3)),
    "conv2d_valid": (lambda: keras.layers.Conv2D(4, 2, dilation_rate=2), (2, 7, 8, 3)),
    "depthwise": (lambda: keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, depth_multiplier=2),
                  (2, 8, 8, 3)),
    "conv1d_causal": (lambda: keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=4, activation="relu"),
                      (2, 16, 3)),
    "conv1d_same": (lambda: keras.layers.Conv1D(4, 3, padding="same", dilation_rate=2), (2, 11, 3)),
    "depthwise1d": (lambda: keras.layers.DepthwiseConv1D(3, padding="same", dilation_rate=3, activation="relu"),
                    (2, 13, 3)),
}


@pytest.mark.parametrize("kind", sorted(DILATED))
def test_dilated_conv_is_the_layers_call_as_one_op(kind):
    keras.utils.set_random_seed(0)
    make, shape = DILATED[kind]
    layer = make()
    x = tf.constant(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    layer.build(x.shape)
    weights = layer.weights
    for w in weights:   # a bias that is not zero
        w.assign(np.random.default_rng(1).normal(size=w.shape).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        mine, theirs = dilated_conv(layer, x), layer.call(x)
    assert mine.shape == theirs.shape
    # the same sums in another order: equal to float32 rounding
    np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(tape.gradient(mine, [x] + weights), tape.gradient(theirs, [x] + weights)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    graph = tf.function(lambda t: dilated_conv(layer, t)).get_concrete_function(x).graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"SpaceToBatchND", "BatchToSpaceND"}, ops   # what the converter could not fuse back


@pytest.mark.parametrize("layer", [keras.layers.Conv2D(3, 3), keras.layers.Conv2D(4, 3, dilation_rate=2, groups=2),
                                   keras.layers.Conv2DTranspose(3, 3, dilation_rate=2)])
def test_dilated_conv_leaves_other_convs_to_their_own_call(layer):
    layer.build((None, 8, 8, 4))
    assert dilated_conv(layer, tf.zeros((1, 8, 8, 4))) is None
