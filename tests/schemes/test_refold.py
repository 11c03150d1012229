"""``schemes.refold`` through ``qresearch.fold_for_deployment``: a no_fold model's folded twin computes what the
trained model computes, on the scheme tests' models (a split SeparableConv, convs with and without bias, first/last
layers at 8 bits, non-narrow 4-bit grids) with non-trivial BN statistics. Deployment:
tests/hardware/test_deploy_fold.py.
"""
import numpy as np
import pytest

import qresearch
from qresearch import keras, schemes

from . import models as M
from .helpers import randomize_bn

X, _ = M.data(64)


def _no_fold(preset: str, bits: int = 4):
    spec = dict(schemes.get(preset).to_dict(), bn_folding="no_fold")
    spec["weights"] = dict(spec["weights"], bits=bits)
    spec["activations"] = dict(spec["activations"], bits=bits)
    return spec


@pytest.mark.parametrize("model", ["sequential", "resnet_like", "mobilenet_like"])
def test_the_twin_computes_what_the_trained_model_computes(model):
    # lsq's grids are per channel and not narrow ([-8, 7] at 4 bits): the twin's min-max quantizer takes the trained
    # width and range (a narrow default would clip every -8), so the folded model gives the same outputs
    keras.utils.set_random_seed(0)
    m = randomize_bn(getattr(M, model)())
    q = qresearch.quantize(m, _no_fold("lsq"), calibration_data=X)
    twin = qresearch.fold_for_deployment(q, m)
    report = twin.qresearch_info["deploy_fold"]
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in m.layers)
    assert len(report["folded"]) == n_bn and report["requantized"] == [], report
    assert not any(isinstance(getattr(layer, "layer", layer), keras.layers.BatchNormalization) for layer in twin.layers)
    np.testing.assert_allclose(np.asarray(twin(X, training=False)), np.asarray(q(X, training=False)), atol=1e-5)


def test_the_twin_keeps_the_trained_input_grid_and_every_quantizer_state():
    m = randomize_bn(M.mobilenet_like())
    q = qresearch.quantize(m, _no_fold("pact_lsq", bits=3), calibration_data=X)
    assert q.qresearch_info["unsigned_inputs"] == []   # M.data is signed: the twin must not pick a grid of its own
    twin = qresearch.fold_for_deployment(q, m)
    assert twin.qresearch_info["unsigned_inputs"] == []
    folded = twin.qresearch_info["deploy_fold"]["folded"]
    skip = set(folded) | {f"quant_{n}" for n in folded}   # the folded layers: tested above through the outputs
    trained = {v.name: v.numpy() for v in q.weights}
    checked = 0
    for v in twin.weights:
        if v.name.split("/")[0] in skip:
            continue
        np.testing.assert_array_equal(v.numpy(), trained[v.name], err_msg=v.name)
        checked += 1
    assert checked >= 10
