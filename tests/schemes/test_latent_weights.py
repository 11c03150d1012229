"""Weight quantizers that train a latent weight (``Quantizer.latent_weights``; DoReFa's ``latent_init: inverse``):
``schemes.build`` starts each wrapped weight from it, so the QAT model computes the float model's function."""
import logging

import numpy as np
import pytest

import qresearch
from qresearch import schemes
from qresearch._compat import keras

from .helpers import randomize_bn, wrappers
from .models import data, mobilenet_like


def _dorefa(latent_init, bn_folding="fold"):
    """DoReFa weights at 8 bits, every layer, activations at 16 bits: what is left of the error is the weights'."""
    d = schemes.get("dorefa").to_dict()
    return dict(d, bn_folding=bn_folding, first_last_bits=None,
                weights=dict(d["weights"], bits=8, latent_init=latent_init),
                activations=dict(d["activations"], bits=16))


@pytest.fixture(scope="module")
def float_model():
    model = randomize_bn(mobilenet_like(), seed=3)
    for layer in model.layers:   # kernels up to ~3: where the tanh compresses (a BN-folded kernel's range)
        if layer.weights and "kernel" in layer.weights[0].name:
            layer.weights[0].assign(layer.weights[0] * 6.0)
    return model


def _relative_error(float_model, scheme, x, **kw):
    q = qresearch.quantize(float_model, scheme, calibration_data=x, **kw)
    want = float_model(x).numpy()
    return np.linalg.norm(q(x, training=False).numpy() - want) / np.linalg.norm(want), q


@pytest.mark.parametrize("bn_folding", ["fold", "fold_batch_stats", "no_fold"])
def test_inverse_latent_weights_keep_the_float_function(float_model, bn_folding):
    x, _ = data(32)
    before = [w.numpy() for w in float_model.weights]
    inverse, _ = _relative_error(float_model, _dorefa("inverse", bn_folding), x)
    as_float, _ = _relative_error(float_model, _dorefa("float", bn_folding), x)
    assert inverse < 0.02                       # an 8-bit linear grid's error
    assert inverse < 0.5 * as_float             # the float weights through the tanh: compressed
    for w, b in zip(float_model.weights, before):   # the float model itself is untouched
        np.testing.assert_array_equal(w.numpy(), b)


def test_a_qat_models_own_weights_are_not_mapped_again(float_model):
    """``weights_from`` (progressive bit reduction) copies latent weights: they go in as they are."""
    x, _ = data(32)
    _, first = _relative_error(float_model, _dorefa("inverse"), x)
    second = qresearch.quantize(float_model, _dorefa("inverse"), calibration_data=x, weights_from=first)
    kernels = {name: w.layer.kernel.numpy() for name, w in wrappers(first).items() if hasattr(w.layer, "kernel")}
    assert kernels
    for name, w in wrappers(second).items():
        if name in kernels:
            np.testing.assert_array_equal(w.layer.kernel.numpy(), kernels[name])


class _Unclonable(keras.layers.Dense):
    """A Dense whose config cannot rebuild it: the QAT model reuses (shares) the float model's layer."""

    def __init__(self, units, tag, **kwargs):
        super().__init__(units, **kwargs)
        self.tag = tag


def test_a_shared_layer_keeps_its_float_weights_and_says_why(caplog):
    inp = keras.Input((6,))
    out = _Unclonable(3, "mine", name="shared")(inp)
    model = keras.Model(inp, out)
    model.layers[-1].kernel.assign(np.linspace(-2, 2, 18).reshape(6, 3))
    before = model.layers[-1].kernel.numpy()
    with caplog.at_level(logging.WARNING):
        qresearch.quantize(model, _dorefa("inverse"), calibration_data=np.ones((4, 6), "float32"))
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(), before)
    assert any("shares its weights with the float model" in r.getMessage() and "get_config" in r.getMessage()
               for r in caplog.records)


def test_a_users_quantize_config_gets_the_latent_weight_too():
    """tfmot's annotate flow: a user's QuantizeConfig that uses qresearch's DoReFa quantizer (ConfigWrapper)."""
    from qresearch import tfmot
    from qresearch.quantizers import create

    from .test_annotate import KernelOnlyConfig, _model, _quantize

    dorefa = create({"name": "dorefa", "bits": 8, "weight_scale": "max", "latent_init": "inverse"}, role="weights")
    model = _model(KernelOnlyConfig(dorefa))
    annotated = next(l for l in model.layers if getattr(getattr(l, "layer", None), "name", None) == "a")
    kernel = annotated.layer.kernel   # tfmot's annotation wraps Dense "a" (its own name counts up per process)
    kernel.assign(kernel * 8.0)   # up to ~5: in the tanh's flat part
    w = kernel.numpy()
    q = _quantize(model)
    wrapper = next(l for l in q.layers if isinstance(l, tfmot.quantization.keras.QuantizeWrapperV2)
                   and l.layer.name == "a")
    np.testing.assert_allclose(wrapper.layer.kernel.numpy(), dorefa.latent_weights(w, None), rtol=1e-6)
    assert np.abs(wrapper.layer.kernel.numpy() - w).max() > 0.1   # mapped, not the float weight
    np.testing.assert_array_equal(kernel.numpy(), w)              # the float model's own kernel is untouched
