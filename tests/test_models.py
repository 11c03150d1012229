"""The model zoo, plugin builders via _target_, and their quantizability."""
import numpy as np
import pytest

import qresearch
from qresearch import keras, models
from qresearch.errors import ConfigError


def _classes(model):
    return [type(l).__name__ for l in model.layers]


@pytest.mark.parametrize("name,shape", [("mlp", (8, 8, 1)), ("lenet5", (28, 28, 1)),
                                        ("mobilenet_tiny", (32, 32, 3)), ("resnet20", (32, 32, 3))])
def test_zoo_builds_logits(name, shape):
    m = models.build_model({"name": name}, shape, 10)
    assert isinstance(m, keras.Model) and m.output_shape == (None, 10)
    assert m.layers[-1].name == "logits"
    out = m(np.zeros((2,) + shape, np.float32))
    assert out.shape == (2, 10)


def test_mobilenet_tiny_parts():
    m = models.build_model({"name": "mobilenet_tiny"}, (32, 32, 3), 10)
    cls = _classes(m)
    assert "DepthwiseConv2D" in cls and "Add" in cls
    assert all(l.momentum == 0.9 for l in m.layers if isinstance(l, keras.layers.BatchNormalization))
    assert any(isinstance(l, keras.layers.ReLU) and float(l.max_value) == 6.0 for l in m.layers)


def test_resnet20_is_he_et_al():
    m = models.build_model({"name": "resnet20"}, (32, 32, 3), 10)
    convs = [l for l in m.layers if isinstance(l, keras.layers.Conv2D)]
    three = [l for l in convs if l.kernel_size == (3, 3)]
    assert len(three) == 19  # 1 stem + 3 stages x 3 blocks x 2; + the dense layer = 20 weight layers
    assert [l.filters for l in three][-1] == 64
    assert 0.26e6 < m.count_params() < 0.29e6
    with pytest.raises(ConfigError, match="6n\\+2"):
        models.build_model({"name": "resnet20", "depth": 21}, (32, 32, 3), 10)


def test_target_builder_and_errors():
    m = models.build_model({"_target_": "qresearch.models.small_cnn", "filters": 4}, (8, 8, 1), 3)
    assert m.output_shape == (None, 3)
    with pytest.raises(ConfigError, match="cannot be imported"):
        models.build_model({"_target_": "nope.module.fn"}, (8, 8, 1), 3)
    with pytest.raises(ConfigError, match="bad options"):
        models.build_model({"name": "mlp", "widht": 3}, (8, 8, 1), 3)
    with pytest.raises(KeyError, match="lenet5"):
        models.build_model({"name": "lenet"}, (8, 8, 1), 3)


@pytest.mark.parametrize("name,shape", [("mlp", (8, 8, 1)), ("lenet5", (8, 8, 1)), ("mobilenet_tiny", (16, 16, 3))])
def test_zoo_quantizes(name, shape):
    m = models.build_model({"name": name}, shape, 10)
    x = np.random.default_rng(0).random((8,) + shape).astype(np.float32)
    q = qresearch.quantize(m, "lsq", hardware="academic", adapt=True, calibration_data=x)
    assert q(x).shape == (8, 10)
