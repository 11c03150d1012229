"""Small real models and data for the deployment tests (digits 8x8, sklearn)."""
from __future__ import annotations

import numpy as np

import qresearch
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


DENSE_PER_TENSOR = [{"match": "Dense", "weights": {"per_channel": False}}]
#: The tflite_int8 schemes of the parity tests (test_deploy, test_integer_parity).
SCHEMES = {
    "minmax": {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True},
               "activations": {"quantizer": "minmax", "bits": 8}, "overrides": DENSE_PER_TENSOR},
    # LSQ at the paper's init (2·mean|x|/sqrt(Qp)): steps several times coarser than min-max at 8 bits,
    # where a float simulation drifts from the deployed model (97.5% argmax agreement on mobilenet_like
    # before the integer-kernel emulation); the emulation makes it exact.
    "lsq": {"weights": {"quantizer": "lsq", "bits": 8, "per_channel": True, "narrow_range": True},
            "activations": {"quantizer": "lsq", "bits": 8}, "overrides": DENSE_PER_TENSOR},
    "pact": {"weights": {"quantizer": "lsq", "bits": 8, "per_channel": True, "narrow_range": True},
             "activations": {"quantizer": "pact", "bits": 8}, "overrides": DENSE_PER_TENSOR},
}
#: model name -> (builder, whether it outputs logits)
BUILDERS = {"mobilenet_like": (mobilenet_like, True), "concat_softmax": (concat_softmax, False)}


def train_float_models(data):
    """Each of BUILDERS trained 6 epochs on digits (seed 0)."""
    xtr, ytr, _, _ = data
    out = {}
    for name, (builder, logits) in BUILDERS.items():
        keras.utils.set_random_seed(0)
        out[name] = train(builder(), xtr, ytr, epochs=6, from_logits=logits)
    return out


_QAT = {}


def qat_model(float_models, data, model_name, quantizer, epochs=2):
    """QAT model for (model, quantizer) on tflite_int8, fine-tuned ``epochs`` epochs; built once per test
    session and shared by the test files (a test that changes it restores it)."""
    key = (model_name, quantizer, epochs)
    if key not in _QAT:
        xtr, ytr, _, _ = data
        keras.utils.set_random_seed(0)
        q = qresearch.quantize(float_models[model_name], SCHEMES[quantizer], hardware="tflite_int8",
                               calibration_data=xtr[:256])
        _QAT[key] = train(q, xtr, ytr, epochs=epochs, lr=1e-3, from_logits=BUILDERS[model_name][1])
    return _QAT[key]
