"""qresearch/_autograph.py: our wrappers run unconverted; code a researcher plugs in (a custom layer's call,
a plugin quantizer) still goes through AutoGraph, so a Python ``if`` on a tensor inside it works under
``tf.function`` (fit, predict) exactly as it does without qresearch."""
import numpy as np
import pytest

import qresearch
from qresearch import _autograph, keras, schemes, tf
from qresearch.quantizers import Quantizer, ops, register
from qresearch.quantizers.registry import QUANTIZERS
from qresearch.schemes.wrappers import QuantizeWrapper


class BranchyStep(Quantizer):
    """A plugin whose step depends on the tensor's values through a Python ``if`` (a tf.cond once converted)."""

    def quantize(self, x, training, weights, axes):
        if tf.reduce_max(tf.abs(x)) > 1.0:
            step = 0.5
        else:
            step = 0.125
        return ops.round_ste(x / step) * step


class Gate(keras.layers.Layer):
    """A custom layer whose call doubles its output when the sum is positive (a Python ``if`` on a tensor)."""

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", (int(input_shape[-1]), 4), initializer="glorot_uniform")

    def call(self, x):
        y = tf.matmul(x, self.kernel)
        if tf.reduce_sum(y) > 0.0:
            y = 2.0 * y
        return y


@pytest.fixture
def branchy():
    register("test_branchy")(BranchyStep)
    schemes.register_layer(Gate, weights=["kernel"], quantize_output=True)
    yield "test_branchy"
    QUANTIZERS._items.pop("test_branchy", None)


def _model(custom: bool):
    keras.utils.set_random_seed(0)
    inp = keras.Input((3,))
    hidden = Gate()(inp) if custom else keras.layers.Dense(4)(inp)
    return keras.Model(inp, keras.layers.Dense(2)(hidden))


@pytest.mark.parametrize("custom_layer, weights", [(True, "minmax"), (False, "test_branchy")],
                         ids=["custom_layer", "plugin_quantizer"])
def test_user_code_converts_inside_our_wrappers(branchy, custom_layer, weights):
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32") * 3.0
    q = qresearch.quantize(_model(custom_layer), {"weights": {"quantizer": weights, "bits": 8},
                                                  "activations": {"quantizer": "minmax", "bits": 8}},
                           calibration_data=x)
    for data in (x, np.abs(x), -np.abs(x)):  # both branches of the tensor ifs, in the graph
        eager = np.asarray(q(data, training=False))  # plain Python semantics, no conversion
        np.testing.assert_array_equal(q.predict(data, verbose=0, batch_size=16), eager)  # tf.function
    q.compile(keras.optimizers.Adam(1e-3), "mse")
    history = q.fit(x, np.zeros((16, 2), "float32"), epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_what_is_ours_is_not_converted():
    assert _autograph.is_library(QuantizeWrapper.call)
    assert _autograph.is_library(keras.layers.Dense(2).call)
    assert _autograph.is_library(tf.nn.relu)
    assert not _autograph.is_library(Gate().call)            # a user's layer, by its class
    assert not _autograph.is_library(BranchyStep().quantize)  # a user's quantizer, by its class
    assert not _autograph.is_library(lambda x: x)
