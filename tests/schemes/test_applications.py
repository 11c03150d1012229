"""keras.applications models (random weights): quantized without any registration, and at 16 bits the QAT
model reproduces the float model. Slow (about a minute on 2 cores): run with -m slow."""
import numpy as np
import pytest

import qresearch
from qresearch import keras, schemes

A = keras.applications
HI_RES = {"weights": {"quantizer": "minmax", "bits": 16, "per_channel": True},
          "activations": {"quantizer": "minmax", "bits": 16}}
BUILDERS = {
    "MobileNetV2": lambda: A.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4),
    "MobileNetV3Small": lambda: A.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4),
    "EfficientNetB0": lambda: A.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=4),
    "ResNet50": lambda: A.ResNet50(input_shape=(32, 32, 3), weights=None, classes=4),
    "DenseNet121": lambda: A.DenseNet121(input_shape=(32, 32, 3), weights=None, classes=4),
    # LayerScale (registered in builtin_layers), LayerNormalization, GELU, Dense on rank-4 inputs, preprocessing
    "ConvNeXtTiny": lambda: A.ConvNeXtTiny(input_shape=(32, 32, 3), weights=None, classes=4),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_application_quantizes_and_matches_float_at_16_bits(name):
    keras.utils.set_random_seed(0)
    model = BUILDERS[name]()
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    q = qresearch.quantize(model, HI_RES, calibration_data=x)
    np.testing.assert_allclose(q(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-2)
    q4 = qresearch.quantize(model, "pact_lsq", calibration_data=x)
    assert schemes.describe(q4)["memory"]["ratio"] < 0.3
