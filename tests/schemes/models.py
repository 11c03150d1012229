"""Tiny real tf_keras models for the scheme tests (8x8x3 inputs, 4 classes)."""
from __future__ import annotations

import numpy as np

from qresearch._compat import keras, tf

L = keras.layers
SHAPE = (8, 8, 3)
CLASSES = 4


def mobilenet_like():
    """Conv-BN-ReLU6, depthwise-BN-ReLU6, pointwise, residual Add, global pooling, Dense."""
    inp = keras.Input(SHAPE, name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = L.BatchNormalization(momentum=0.9, name="dw_bn")(y)
    y = L.ReLU(6.0, name="dw_relu")(y)
    y = L.Conv2D(8, 1, use_bias=False, name="pw")(y)
    y = L.BatchNormalization(momentum=0.9, name="pw_bn")(y)
    x = L.Add(name="residual")([x, y])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(CLASSES, name="logits")(x)
    return keras.Model(inp, out, name="mobilenet_like")


def resnet_like():
    """Two residual blocks (Conv→BN→ReLU, Conv(activation=relu), Add→ReLU), max pooling, Dense."""
    inp = keras.Input(SHAPE)
    x = L.Conv2D(8, 3, padding="same", name="conv0")(inp)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.Activation("relu")(x)
    for i in range(2):
        y = L.Conv2D(8, 3, padding="same", activation="relu", name=f"block{i}_a")(x)
        y = L.Conv2D(8, 3, padding="same", name=f"block{i}_b")(y)
        y = L.BatchNormalization(momentum=0.9)(y)
        x = L.Add()([x, y])
        x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dropout(0.1)(x)
    out = L.Dense(CLASSES, name="logits")(x)
    return keras.Model(inp, out, name="resnet_like")


def concat_multiply():
    """Two branches concatenated; a sigmoid gate multiplied in (squeeze-excite style); Conv1D head."""
    inp = keras.Input(SHAPE)
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="branch_a")(inp)
    b = L.Conv2D(4, 1, padding="same", name="branch_b")(inp)
    b = L.ReLU()(b)
    x = L.Concatenate(name="concat")([a, b])
    g = L.GlobalAveragePooling2D()(x)
    g = L.Dense(8, activation="sigmoid", name="gate")(g)
    g = L.Reshape((1, 1, 8))(g)
    x = L.Multiply(name="scale")([x, g])
    x = L.Subtract(name="sub")([x, L.Conv2D(8, 1, name="skip")(inp)])
    x = L.Reshape((64, 8))(x)
    x = L.Conv1D(8, 3, padding="same", name="conv1d")(x)
    x = L.GlobalMaxPooling1D()(x)
    out = L.Dense(CLASSES, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="concat_multiply")


def sequential():
    return keras.Sequential([
        keras.Input(SHAPE),
        L.Conv2D(8, 3, padding="same", name="c1"),
        L.ReLU(name="r1"),
        L.SeparableConv2D(8, 3, padding="same", name="sep"),
        L.BatchNormalization(momentum=0.9, name="sep_bn"),
        L.ReLU(6.0, name="r2"),
        L.Conv2DTranspose(4, 3, strides=2, padding="same", name="up"),
        L.AveragePooling2D(),
        L.ZeroPadding2D(1),
        L.Flatten(),
        L.Dense(16, name="d1"),
        L.ReLU(name="r3"),
        L.Dense(CLASSES, name="logits"),
    ], name="sequential")


def nested():
    """A functional backbone and a Sequential head used as layers inside a functional model."""
    binp = keras.Input(SHAPE)
    b = L.Conv2D(8, 3, padding="same", name="bb_conv")(binp)
    b = L.BatchNormalization(momentum=0.9, name="bb_bn")(b)
    b = L.ReLU(name="bb_relu")(b)
    backbone = keras.Model(binp, b, name="backbone")
    head = keras.Sequential([L.GlobalAveragePooling2D(), L.Dense(CLASSES, name="head_dense")], name="head")
    inp = keras.Input(SHAPE)
    x = backbone(inp)
    x = L.Conv2D(8, 1, activation="relu", name="mid")(x)
    out = head(x)
    return keras.Model(inp, out, name="nested")


@keras.utils.register_keras_serializable(package="qresearch_tests")
class ScaledDense(L.Layer):
    """A custom layer: y = activation(x @ kernel * scale + bias), with a trainable per-unit scale."""

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer="glorot_uniform")
        self.scale = self.add_weight("scale", shape=(self.units,), initializer="ones")
        self.bias = self.add_weight("bias", shape=(self.units,), initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        return self.activation(tf.matmul(x, self.kernel) * self.scale + self.bias)

    def get_config(self):
        return dict(super().get_config(), units=self.units,
                    activation=keras.activations.serialize(self.activation))


def custom_layer_model():
    inp = keras.Input(SHAPE)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.GlobalAveragePooling2D()(x)
    x = ScaledDense(16, activation="relu", name="scaled")(x)
    out = ScaledDense(CLASSES, name="scaled_logits")(x)
    return keras.Model(inp, out, name="custom")


def tf_ops():
    """TF ops on Keras tensors (TFOpLambda / SlicingOpLambda layers), which tfmot leaves unsupported."""
    inp = keras.Input(SHAPE)
    x = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = tf.nn.relu(x)
    y = L.Conv2D(8, 1, name="conv_y")(x) * 0.5 + 0.1
    x = tf.concat([x, tf.nn.sigmoid(y)], axis=-1)
    x = x[:, 1:, 1:, :]
    x = tf.reshape(x, (-1, 7 * 7 * 16))
    out = L.Dense(CLASSES, name="logits")(x)
    return keras.Model(inp, out, name="tf_ops")


BUILDERS = {
    "mobilenet_like": mobilenet_like,
    "resnet_like": resnet_like,
    "concat_multiply": concat_multiply,
    "sequential": sequential,
    "nested": nested,
    "custom": custom_layer_model,
    "tf_ops": tf_ops,
}


def data(n=64, seed=0):
    """A learnable toy task: the class is the quadrant with the brightest mean."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n,) + SHAPE).astype("float32")
    y = rng.integers(0, CLASSES, n)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, r * 4:(r + 1) * 4, col * 4:(col + 1) * 4, :] += 1.5
    return x, y.astype("int32")


def compile_model(model, lr=1e-2, from_logits=True):
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                  metrics=["accuracy"])
    return model
