"""Progressive bit reduction: a lower-bit QAT model takes a higher-bit one's layer weights, not its quantizers."""
import numpy as np
import pytest

import qresearch
from qresearch import keras
from qresearch.errors import ConfigError
from qresearch.quantizers.base import is_quantizer_variable
from qresearch.schemes.transfer import copy_layer_weights

from . import models as M

L = keras.layers


def model():
    keras.utils.set_random_seed(0)
    inp = keras.Input(M.SHAPE)
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(M.CLASSES, name="logits")(x))


def test_layer_weights_move_and_quantizers_are_recalibrated():
    float_model = model()
    x, y = M.data(64)
    hi = qresearch.quantize(float_model, "lsq", calibration_data=x)
    for v in hi.trainable_variables:   # stand-in for training: every weight moved
        v.assign(v * 1.5)
    lo = qresearch.quantize(float_model, qresearch.schemes.SchemeSpec.from_dict(
        dict(qresearch.schemes.get("lsq").to_dict(), weights={"quantizer": "lsq", "bits": 2, "per_channel": True})))
    names = copy_layer_weights(hi, lo)
    assert "quant_conv" in names or any("conv" in n for n in names)
    for a, b in zip(hi.weights, lo.weights):
        if a.name == b.name and not is_quantizer_variable(a) and "optimizer_step" not in a.name:
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    steps = [(a, b) for a, b in zip(hi.weights, lo.weights) if a.name == b.name and is_quantizer_variable(a)]
    assert steps and any(not np.array_equal(a.numpy(), b.numpy()) for a, b in steps)  # quantizers left alone


def test_another_model_is_refused_naming_the_layer():
    a = qresearch.quantize(model(), "lsq")
    keras.utils.set_random_seed(0)
    inp = keras.Input(M.SHAPE)
    other = keras.Model(inp, L.Dense(M.CLASSES, name="other")(L.Flatten()(inp)))
    with pytest.raises(ConfigError, match="progressive bits: .*same model and scheme"):
        copy_layer_weights(a, qresearch.quantize(other, "lsq"))
