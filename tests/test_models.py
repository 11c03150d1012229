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


# ------------------------------------------------------------------ ImageNet-class models
@pytest.mark.parametrize("name, trainable", [("resnet18", 11_689_512), ("resnet50", 25_557_032),
                                             ("mobilenet_v2", 3_504_872)])
def test_imagenet_models_have_the_published_parameter_counts(name, trainable):
    m = models.build_model({"name": name}, (224, 224, 3), 1000)
    assert sum(int(np.prod(w.shape)) for w in m.trainable_weights) == trainable
    assert m.layers[-1].name == "logits" and m.output_shape == (None, 1000)
    # ImageNet stem at 224 (stride 2 first), CIFAR stem at 32 (stride 1): the same model runs on both
    assert m.get_layer("stem_conv").strides == (2, 2)
    small = models.build_model({"name": name}, (32, 32, 3), 10)
    assert small.get_layer("stem_conv").strides == (1, 1) and small.output_shape == (None, 10)
    with pytest.raises(ConfigError, match="stem must be one of"):
        models.build_model({"name": name, "stem": "big"}, (32, 32, 3), 10)


TINY = {"resnet18": {"width": 8}, "resnet50": {"width": 4}, "mobilenet_v2": {"width_multiplier": 0.25}}


def _quantize_tiny(name, preset):
    m = models.build_model({"name": name, **TINY[name]}, (32, 32, 3), 10)
    x = np.random.default_rng(0).random((8, 32, 32, 3)).astype(np.float32)
    q = qresearch.quantize(m, preset, calibration_data=x)
    assert q(x).shape == (8, 10)
    report = qresearch.schemes.describe(q)
    convs = [l for l in report["layers"] if l["class"] in ("Conv2D", "DepthwiseConv2D")]
    n_convs = sum(isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) for l in m.layers)
    assert len(convs) == n_convs and all(l["weights"] for l in convs)  # every conv quantized
    assert all(f["class"] not in ("Conv2D", "DepthwiseConv2D", "Dense") for f in report["float_layers"])


def test_imagenet_models_quantize():
    _quantize_tiny("resnet18", "lsq")  # the others (and every preset): the slow matrix below


@pytest.mark.slow
@pytest.mark.parametrize("preset", qresearch.schemes.names())
@pytest.mark.parametrize("name", sorted(TINY))
def test_imagenet_models_quantize_with_every_preset(name, preset):
    _quantize_tiny(name, preset)
