"""Small real models and data for the deployment tests (digits 8x8, sklearn)."""
from __future__ import annotations

import numpy as np

from qresearch._compat import keras


def digits(seed: int = 0):
    """sklearn's digits as (x_train, y_train, x_test, y_test), x in [0, 1] shaped (n, 8, 8, 1)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    idx = np.random.RandomState(seed).permutation(len(x))
    x, y = x[idx], y[idx]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def mobilenet_like(classes: int = 10, width: int = 16):
    """Conv-BN-ReLU6, depthwise-separable blocks with a residual Add, global pool, Dense."""
    bn = dict(momentum=0.9)
    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(inp)
    h = keras.layers.BatchNormalization(**bn, name="stem_bn")(h)
    h = keras.layers.ReLU(6.0, name="stem_relu")(h)
    for i in range(2):
        r = h
        h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(h)
        h = keras.layers.BatchNormalization(**bn, name=f"dw{i}_bn")(h)
        h = keras.layers.ReLU(6.0, name=f"dw{i}_relu")(h)
        h = keras.layers.Conv2D(width, 1, use_bias=False, name=f"pw{i}")(h)
        h = keras.layers.BatchNormalization(**bn, name=f"pw{i}_bn")(h)
        h = keras.layers.Add(name=f"add{i}")([r, h])
    h = keras.layers.Conv2D(2 * width, 1, strides=2, use_bias=False, name="expand")(h)
    h = keras.layers.BatchNormalization(**bn, name="expand_bn")(h)
    h = keras.layers.ReLU(6.0, name="expand_relu")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    out = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(inp, out, name="mobilenet_like")


def concat_softmax(classes: int = 10):
    """Two conv branches joined by Concatenate, max pooling, Flatten, Dense and a Softmax output."""
    inp = keras.Input((8, 8, 1), name="image")
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="branch_a")(inp)
    b = keras.layers.Conv2D(8, 1, padding="same", activation="relu", name="branch_b")(inp)
    h = keras.layers.Concatenate(name="concat")([a, b])
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(32, activation="relu", name="hidden")(h)
    h = keras.layers.Dense(classes, name="logits")(h)
    out = keras.layers.Softmax(name="probs")(h)
    return keras.Model(inp, out, name="concat_softmax")


def train(model, x, y, epochs: int, lr: float = 3e-3, from_logits: bool = True, batch_size: int = 64):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits), metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    return model
