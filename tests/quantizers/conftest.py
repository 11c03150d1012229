"""Shared fixtures: seeds, a small QuantizeConfig and tiny tf_keras models for tfmot."""
from __future__ import annotations

import numpy as np
import pytest

from qresearch._compat import keras, tf, tfmot
from qresearch.quantizers import create, get, names

QuantizeConfig = tfmot.quantization.keras.QuantizeConfig



def built_in_quantizers():
    """The quantizers qresearch itself registers (its own modules), without any plugin a test adds:
    tests that cover every built-in take their list from the registry, so a new built-in needs no edit."""
    return [n for n in names() if get(n).__module__.startswith("qresearch.quantizers.")]


#: The weight each test layer quantizes.
KERNEL_ATTR = {keras.layers.DepthwiseConv2D: "depthwise_kernel"}


@pytest.fixture(autouse=True)
def seeded():
    """Same random numbers in every test, whatever ran before."""
    keras.utils.set_random_seed(1234)
    yield


@keras.utils.register_keras_serializable(package="qresearch_tests")
class KernelActivationConfig(QuantizeConfig):
    """Quantize a layer's kernel with one quantizer and its activation with another."""

    def __init__(self, weight_quantizer=None, activation_quantizer=None, kernel_attr="kernel"):
        self.weight_quantizer = weight_quantizer
        self.activation_quantizer = activation_quantizer
        self.kernel_attr = kernel_attr

    def get_weights_and_quantizers(self, layer):
        if self.weight_quantizer is None:
            return []
        return [(getattr(layer, self.kernel_attr), self.weight_quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        if self.weight_quantizer is not None:
            setattr(layer, self.kernel_attr, quantize_weights[0])

    def get_activations_and_quantizers(self, layer):
        if self.activation_quantizer is None:
            return []
        return [(layer.activation, self.activation_quantizer)]

    def set_quantize_activations(self, layer, quantize_activations):
        if self.activation_quantizer is not None:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        # Plain specs: they survive every save format (h5's legacy loader does not
        # resolve Keras registered names of nested objects).
        return {
            "weight_quantizer": None if self.weight_quantizer is None else self.weight_quantizer.to_spec(),
            "activation_quantizer": None if self.activation_quantizer is None else self.activation_quantizer.to_spec(),
            "kernel_attr": self.kernel_attr,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("weight_quantizer", "activation_quantizer"):
            if config.get(key) is not None:
                config[key] = create(config[key])
        return cls(**config)


def small_cnn(transpose=False):
    """Conv2D → DepthwiseConv2D → (Conv2DTranspose) → Conv1D → Dense; a few hundred weights."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw")(x)
    if transpose:
        x = keras.layers.Conv2DTranspose(3, 2, activation="relu", name="convt")(x)
    x = keras.layers.Reshape((-1, x.shape[-1]))(x)
    x = keras.layers.Conv1D(4, 2, activation="relu", name="conv1d")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs)


def quantize_model(model, weight_spec, activation_spec, **create_kwargs):
    """Annotate every layer with a kernel through tfmot with fresh quantizers, then apply."""
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def annotate_layer(layer):
        if not hasattr(layer, "kernel") and not hasattr(layer, "depthwise_kernel"):
            return layer
        wq = create(weight_spec, role="weights") if weight_spec is not None else None
        # Activation quantizers after ReLU only: role "activations" means unsigned grids for
        # several algorithms, which would cut the (signed) logits.
        relu = getattr(layer, "activation", None) is keras.activations.relu
        aq = create(activation_spec, role="activations") if activation_spec is not None and relu else None
        attr = KERNEL_ATTR.get(type(layer), "kernel")
        return annotate(layer, quantize_config=KernelActivationConfig(wq, aq, attr))

    annotated = keras.models.clone_model(model, clone_function=annotate_layer)
    with tfmot.quantization.keras.quantize_scope({"KernelActivationConfig": KernelActivationConfig}):
        return tfmot.quantization.keras.quantize_apply(annotated)


def toy_data(n=64, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 6, 6, 2).astype("float32")
    w = rng.randn(6 * 6 * 2, 3).astype("float32")
    y = np.argmax(x.reshape(n, -1) @ w, axis=1)
    return x, y


BITS = (2, 3, 4, 8)


def build(quantizer, shape=None, layer=None, name="kernel"):
    """Build ``quantizer``'s variables on ``layer`` (a bare layer by default).

    ``shape=None`` is how tfmot builds activation quantizers.
    """
    layer = layer if layer is not None else keras.layers.Layer()
    return quantizer.build(None if shape is None else tf.TensorShape(shape), name, layer)


def run(quantizer, x, weights, training=True):
    return quantizer(tf.constant(x), training, weights).numpy()


def grads(quantizer, x, weights, upstream, variables, training=True):
    """Gradients of Σ upstream·q(x) w.r.t. ``x`` and each of ``variables``."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = quantizer(xt, training, weights)
        loss = tf.reduce_sum(y * upstream)
    out = tape.gradient(loss, [xt] + list(variables))
    return [None if g is None else g.numpy() for g in out]


def assert_grid_close(actual, expected, step, rtol=1e-5):
    """Equal up to float32 round-off of the grid values."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=float(np.max(step)) * 1e-4)


def load_qat_model(path):
    """Plain ``load_model`` in tfmot's scope: nothing qresearch-specific is needed."""
    with tfmot.quantization.keras.quantize_scope({"KernelActivationConfig": KernelActivationConfig}):
        return keras.models.load_model(path, compile=False)
