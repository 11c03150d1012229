"""A BatchNormalization that cannot be folded (after a non-linearity, a pooling, at the input) deploys
integer-only: it becomes a per-channel affine (``ChannelAffine``, a 1x1 depthwise conv with kernel
γ/√(σ²+ε) and bias β-μ·γ/√(σ²+ε)) whose weights and output are quantized, which TFLite runs as an
int8 DEPTHWISE_CONV_2D instead of float MUL/ADD."""
import numpy as np
import pytest

import qresearch
from qresearch import hardware as hw
from qresearch._compat import keras
from qresearch.schemes import ChannelAffine, QuantizeWrapper

from deploy_models import digits

L = keras.layers


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.3, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, n).astype("float32"))
    return model


def _image_model():  # BN after a ReLU (4-D), after a pooling, and after Flatten (2-D)
    i = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(i)
    x = L.BatchNormalization(name="bn_after_relu")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.BatchNormalization(name="bn_after_pool")(x)
    x = L.Flatten()(x)
    x = L.BatchNormalization(name="bn_flat")(x)
    return keras.Model(i, L.Dense(10, name="logits")(x))


def _sequence_model():  # BN at the input (2-D) and after a Conv1D + ReLU (3-D)
    i = keras.Input((8, 8))
    x = L.BatchNormalization(name="bn_input")(i)
    x = L.Conv1D(8, 3, activation="relu", name="conv1d")(x)
    x = L.BatchNormalization(name="bn_seq")(x)
    x = L.Flatten()(x)  # (GlobalAveragePooling1D's MEAN rounds twice in TFLite: not what this test is about)
    return keras.Model(i, L.Dense(10, name="logits")(x))


@pytest.mark.parametrize("builder,scheme", [
    (_image_model, "tflite_int8"),
    (_sequence_model, "tflite_int8"),
    (_image_model, {"weights": {"quantizer": "lsq", "bits": 8, "per_channel": True, "narrow_range": True},
                    "activations": {"quantizer": "pact", "bits": 8}}),
])
def test_unfoldable_bn_deploys_integer_only(builder, scheme):
    xtr, _, xte, yte = digits()
    if builder is _sequence_model:
        xtr, xte = xtr[..., 0], xte[..., 0]
    keras.utils.set_random_seed(0)
    model = _randomize_bn(builder())
    q = qresearch.quantize(model, scheme, hardware="tflite_int8", adapt=True, calibration_data=xtr[:256])
    bns = [l for l in model.layers if isinstance(l, L.BatchNormalization)]
    inner = {l.layer.name: l for l in q.layers if isinstance(l, QuantizeWrapper)}
    for bn in bns:  # every BN is an affine with a quantized kernel and output, computing what the BN computes
        w = inner[bn.name]
        assert isinstance(w.layer, ChannelAffine) and w.quantize_config.info.get("bn_affine")
        assert set(w.quantize_config.weights) == {"depthwise_kernel"} and w.quantize_config.output is not None
        x = np.random.default_rng(1).normal(size=(4,) + tuple(bn.input_shape[1:])).astype("float32")
        np.testing.assert_allclose(w.layer(x).numpy(), bn(x, training=False).numpy(), rtol=1e-4, atol=1e-5)
    # float (calibrated) parity: the simulation is close to the float model before any training
    sim, ref = q.predict(xte, verbose=0), model.predict(xte, verbose=0)
    assert np.mean(np.argmax(sim, 1) == np.argmax(ref, 1)) > 0.95
    r = hw.verify(q, "tflite_int8", xte, yte)
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert r["ops"].get("DEPTHWISE_CONV_2D", 0) == len(bns)
    assert not {"MUL", "ADD", "DEQUANTIZE", "QUANTIZE"} & set(r["ops"]), r["ops"]
    assert r["argmax_agreement"] >= 0.995
    assert abs(r["deployed_accuracy"] - r["simulated_accuracy"]) <= 0.002


def test_bn_affine_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = _randomize_bn(_image_model())
    xtr = digits()[0]
    q = qresearch.quantize(model, "tflite_int8", hardware="tflite_int8", calibration_data=xtr[:128])
    q.save(str(tmp_path / "qat"))
    again = qresearch.load_model(str(tmp_path / "qat"))
    np.testing.assert_allclose(again.predict(xtr[:32], verbose=0), q.predict(xtr[:32], verbose=0), atol=1e-6)
    assert "per-channel affine" in str(qresearch.schemes.describe(q))


def test_foldable_bn_still_folds_and_no_fold_keeps_bn():
    i = keras.Input((8, 8, 1))
    x = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(i)))
    model = keras.Model(i, L.Dense(10)(L.Flatten()(x)))
    q = qresearch.quantize(model, "tflite_int8")
    assert "bn" not in [l.name for l in q.layers] and not any(isinstance(l, ChannelAffine) for l in q.layers)
    acad = qresearch.quantize(model, {"weights": {"quantizer": "lsq", "bits": 4}, "activations": {"quantizer": "lsq",
                                      "bits": 4}, "bn_folding": "no_fold"})
    assert not any(isinstance(getattr(l, "layer", l), ChannelAffine) for l in acad.layers)
