"""``qresearch.fold_for_deployment``: a QAT model trained with BN kept (``bn_folding: no_fold``) deployed on
TFLite int8 as the folded model, with the trained integers.

The reference for the integers is numpy on the trained model's own variables: LSQ's step per channel and the BN's
``γ/√(σ²+ε)``; the deployed flatbuffer must hold ``round(Q(W)/s)·sign(g)`` on scales ``s·|g|``, and the TFLite
interpreter must give the folded model's emulated outputs bit for bit.
"""
import numpy as np
import pytest

import qresearch
from qresearch import hardware as hw
from qresearch._compat import keras
from qresearch.hardware.deploy import make_interpreter
from qresearch.kernels import emulated_kernels
from qresearch.schemes import QuantizeWrapper

from deploy_models import SCHEMES, mobilenet_like, train

#: LSQ per channel (narrow range) at its paper init: steps several times coarser than min-max, so the trained
#: integers are not the float model's min-max ones and a slip in the fold shows.
LSQ = dict(SCHEMES["lsq"], bn_folding="no_fold")
_TRAINED = {}


def _copy_with_negative_gammas(model):
    """The float model's copy with γ negated in a third of the channels (a fold must flip their integers)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma = layer.gamma.numpy()
            gamma[::3] *= -1.0
            layer.gamma.assign(gamma)
    return copy


def _trained_no_fold(float_models, data):
    """(float model, its no_fold LSQ model for tflite_int8 after one epoch of QAT), built once."""
    if "lsq" not in _TRAINED:
        xtr, ytr, _, _ = data
        keras.utils.set_random_seed(0)
        m = _copy_with_negative_gammas(float_models["mobilenet_like"])
        q = qresearch.quantize(m, LSQ, hardware="tflite_int8", calibration_data=xtr[:256])
        _TRAINED["lsq"] = (m, train(q, xtr, ytr, epochs=1, lr=1e-3))
    return _TRAINED["lsq"]


def _filters(tflite_model):
    """The per-channel int8 weight tensors of a flatbuffer: [(int8 values with the channel axis first, scales)]."""
    interp = make_interpreter(tflite_model)
    interp.allocate_tensors()
    out = []
    for d in interp.get_tensor_details():
        q = d["quantization_parameters"]
        if d["dtype"] == np.int8 and len(q["scales"]) > 1 and len(d["shape"]) == 4:
            out.append((np.moveaxis(interp.get_tensor(d["index"]), q["quantized_dimension"], 0), q["scales"]))
    return out


def test_the_target_keeps_no_fold_and_the_twin_deploys_the_trained_integers(float_models, data):
    m, q = _trained_no_fold(float_models, data)
    assert q.qresearch_info["scheme"]["bn_folding"] == "no_fold"
    assert any("'no_fold' kept" in c for c in q.qresearch_info["coercions"])
    twin = qresearch.fold_for_deployment(q, m)
    report = twin.qresearch_info["deploy_fold"]
    assert report["folded"] == {n: f"{n}_bn" for n in ("stem", "dw0", "pw0", "dw1", "pw1", "expand")}
    assert report["requantized"] == [] and max(report["steps_moved"].values()) < 1e-3, report
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in twin.layers)

    r = hw.verify(twin, "tflite_int8", data[2], data[3], return_model=True)
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert r["max_abs_diff_lsb"] < 1e-3 and r["argmax_agreement"] == 1.0, r   # the emulation is the deployed model

    # numpy reference: the trained integers round(Q(W)/s), negated where γ < 0, on scales s·|g|
    deployed = _filters(r["tflite_model"])
    trained = {getattr(w, "layer", w).name: w for w in q.layers}
    for name, bn_name in report["folded"].items():
        wrapper, bn = trained[name], getattr(trained[bn_name], "layer", trained[bn_name])  # pw*_bn: wrapped
        weight, quantizer, qvars = wrapper._weight_vars[0]
        step = qvars["step"].numpy()   # per output channel, shaped to broadcast against the kernel's last axes
        ints = np.round(quantizer(weight, False, weights=qvars).numpy() / step)
        g = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        assert (g < 0).any() and np.abs(ints).max() <= 127
        flipped = ints * np.sign(g).reshape(step.shape)
        step = step.reshape(-1)
        want = flipped.reshape(-1, step.size).T   # output channels first, as TFLite stores them
        hits = [s for values, s in deployed if values.size == want.size
                and np.array_equal(values.reshape(want.shape[0], -1), want.reshape(want.shape[0], -1))]
        assert len(hits) == 1, name
        np.testing.assert_allclose(hits[0], step * np.abs(g), rtol=2e-6)

    # the trained model's own (float fake-quant) outputs: the fold changes nothing but float rounding
    x = data[2]
    with emulated_kernels("none"):
        before, after = np.asarray(q(x, training=False)), np.asarray(twin(x, training=False))
    assert np.mean(before.argmax(1) == after.argmax(1)) >= 0.99
    assert np.abs(before - after).max() <= 2 * r["output_quantization"][0] + 1e-6


def test_a_per_tensor_grid_is_refit_and_reported(float_models, data):
    # Q(W)·g is on no one grid when the trained grid is per tensor: the folded kernel gets its own min-max range,
    # the report names the layers whose integers moved, and the twin still deploys as it simulates
    xtr, ytr, xte, yte = data
    spec = dict(LSQ, weights=dict(LSQ["weights"], per_channel=False))
    m = float_models["mobilenet_like"]
    # (tflite_int8 would set fold for training here: tests/hardware/test_constrain.py); no target keeps BN
    q = qresearch.quantize(m, spec, calibration_data=xtr[:256])
    twin = qresearch.fold_for_deployment(q, m, hardware="tflite_int8")
    report = twin.qresearch_info["deploy_fold"]
    assert report["requantized"] and set(report["requantized"]) <= set(report["folded"]), report
    r = hw.verify(twin, "tflite_int8", xte, yte)
    assert r["max_abs_diff_lsb"] < 1e-3, r


def test_an_asymmetric_grid_folds_exactly_with_its_ends_swapped_where_gamma_is_negative(float_models, data):
    # per-channel min-max with a free zero point (no TFLite target takes it; a simulated one may): where g < 0 the
    # range's ends swap and integer q maps to qmin + qmax - q, still on the grid
    xtr, _, xte, _ = data
    m = _copy_with_negative_gammas(float_models["mobilenet_like"])
    weights = {"quantizer": "minmax", "bits": 4, "per_channel": True, "symmetric": False, "narrow_range": False}
    q = qresearch.quantize(m, dict(SCHEMES["minmax"], weights=weights, bn_folding="no_fold"),
                           calibration_data=xtr[:256])
    twin = qresearch.fold_for_deployment(q, m)
    report = twin.qresearch_info["deploy_fold"]
    assert len(report["folded"]) == 6 and report["requantized"] == [], report
    before, after = np.asarray(q(xte, training=False)), np.asarray(twin(xte, training=False))
    assert np.mean(before.argmax(1) == after.argmax(1)) >= 0.99


def _bn_after_relu():
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    h = L.ReLU(name="relu")(h)
    h = L.BatchNormalization(name="late_bn")(h)   # after a ReLU: nothing to fold into
    h = L.Conv2D(8, 3, strides=2, use_bias=False, name="conv2")(h)
    h = L.BatchNormalization(name="conv2_bn")(h)
    h = L.ReLU(name="relu2")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(10, name="logits")(h))


def test_a_bn_no_layer_absorbs_deploys_as_an_integer_affine(data):
    xtr, ytr, xte, yte = data
    keras.utils.set_random_seed(1)
    m = train(_bn_after_relu(), xtr, ytr, epochs=2)
    q = qresearch.quantize(m, dict(SCHEMES["minmax"], bn_folding="no_fold"), hardware="tflite_int8",
                           calibration_data=xtr[:256])
    train(q, xtr, ytr, epochs=1, lr=1e-3)
    twin = qresearch.fold_for_deployment(q, m)
    report = twin.qresearch_info["deploy_fold"]
    assert report["folded"] == {"conv2": "conv2_bn"} and report["affine"] == ["late_bn"], report
    assert report["steps_moved"]["late_bn"] < 1e-3   # one value per channel: its own per-channel range holds it
    r = hw.verify(twin, "tflite_int8", xte, yte)
    assert r["integer_only"] and r["max_abs_diff_lsb"] < 1e-3, r


def test_verify_says_when_a_model_with_bn_kept_is_converted_as_it_is(float_models, data, caplog):
    m, q = _trained_no_fold(float_models, data)
    x, y = data[2][:64], data[3][:64]
    with caplog.at_level("WARNING", logger="qresearch.hardware.deploy"):
        hw.verify(q, "tflite_int8", x, y)
    assert any("Fix: deploy qresearch.fold_for_deployment" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="qresearch.hardware.deploy"):
        hw.verify(qresearch.fold_for_deployment(q, m), "tflite_int8", x, y)
    assert not any("fold_for_deployment" in r.getMessage() for r in caplog.records)


def test_refusals_name_the_problem(float_models, data):
    m, q = _trained_no_fold(float_models, data)
    with pytest.raises(qresearch.ConfigError, match="made by qresearch.quantize"):
        qresearch.fold_for_deployment(m, m)
    folded = qresearch.quantize(m, dict(LSQ, bn_folding="fold"), hardware="tflite_int8")
    with pytest.raises(qresearch.ConfigError, match="deploys as it is; only a no_fold model"):
        qresearch.fold_for_deployment(folded, m)
    with pytest.raises(qresearch.ConfigError, match="another float model|no layer of that name|not qresearch"):
        qresearch.fold_for_deployment(q, float_models["concat_softmax"])
