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


def _lsq_bn_kept():
    """lsq at 4 bits with BN kept, as the preset keeps it below 4 bits (its low_bits): the runner's progressive_bits
    builds every width with the run's own width's bn_folding."""
    return dict(qresearch.schemes.get("lsq").to_dict(), bn_folding="no_fold")


def test_layer_weights_move_and_quantizers_are_recalibrated():
    float_model = model()
    x, y = M.data(64)
    lo_spec = qresearch.schemes.SchemeSpec.from_dict(
        dict(qresearch.schemes.get("lsq").to_dict(), weights={"quantizer": "lsq", "bits": 2, "per_channel": True}))
    assert lo_spec.bn_folding == "no_fold"   # lsq keeps BN below 4 bits: the higher-bit model is built alike
    hi = qresearch.quantize(float_model, _lsq_bn_kept(), calibration_data=x)
    for v in hi.trainable_variables:   # stand-in for training: every weight moved
        v.assign(v * 1.5)
    lo = qresearch.quantize(float_model, lo_spec)
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


def test_quantize_weights_from_copies_then_calibrates_at_the_new_width():
    """``quantize(..., weights_from=hi)`` (the runner's progressive widths): the layer weights are hi's and the
    quantizers start from them (the steps of the weights moved x1.5), planned on the same data as hi."""
    float_model = model()
    x = np.abs(M.data(64)[0])   # non-negative: both widths plan the unsigned input grid
    hi = qresearch.quantize(float_model, _lsq_bn_kept(), calibration_data=x)
    for v in hi.trainable_variables:
        if not is_quantizer_variable(v):
            v.assign(v * 1.5)
    lo_scheme = dict(qresearch.schemes.get("lsq").to_dict(), weights={"quantizer": "lsq", "bits": 2, "per_channel": True,
                                                                       "init": "max"})
    lo = qresearch.quantize(float_model, lo_scheme, calibration_data=x, weights_from=hi)
    fresh = qresearch.quantize(float_model, lo_scheme, calibration_data=x)
    assert lo.qresearch_info["unsigned_inputs"] == hi.qresearch_info["unsigned_inputs"] != []
    for a, b in zip(hi.weights, lo.weights):
        if a.name == b.name and not is_quantizer_variable(a) and "optimizer_step" not in a.name:
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    steps = {v.name: v.numpy() for v in lo.weights if v.name.endswith("kernel_step:0")}
    assert steps
    fresh_steps = [v for v in fresh.weights if v.name.endswith("kernel_step:0")]
    assert len(fresh_steps) == len(steps)
    for v, (name, step) in zip(fresh_steps, steps.items()):  # init max: max|w|/Qp of the copied (x1.5) kernels
        np.testing.assert_allclose(step, 1.5 * v.numpy(), rtol=1e-6, err_msg=name)


def test_a_higher_bit_model_with_other_bn_folding_is_refused_naming_the_fix():
    float_model = model()
    hi = qresearch.quantize(float_model, "lsq")   # 4 bits: BN folded
    lo_scheme = dict(qresearch.schemes.get("lsq").to_dict(), weights={"quantizer": "lsq", "bits": 2})
    with pytest.raises(ConfigError, match="bn_folding: fold and this one with bn_folding: no_fold.*low_bits: null"):
        qresearch.quantize(float_model, lo_scheme, weights_from=hi)


def test_a_model_that_has_run_gives_its_weights_whatever_their_order():
    # an inference call through the integer-kernel emulation moves a wrapped layer's kernel after its bias in
    # ``weights`` (the kernel is set on the layer and put back): the copy goes by each weight's path, not by position
    float_model = model()
    x, _ = M.data(16)
    hi = qresearch.quantize(float_model, "tflite_int8", hardware="tflite_int8", calibration_data=x)
    hi(x, training=False)
    lo = qresearch.quantize(float_model, "tflite_int8", hardware="tflite_int8")
    order = [[w.name for w in m.get_layer("quant_logits").layer.weights] for m in (hi, lo)]
    assert order[0] != order[1]   # what made a position-wise copy refuse (or swap same-shaped weights)
    copy_layer_weights(hi, lo)
    for name in ("quant_conv", "quant_logits"):
        for attr in ("kernel", "bias"):
            np.testing.assert_array_equal(getattr(lo.get_layer(name).layer, attr).numpy(),
                                          getattr(hi.get_layer(name).layer, attr).numpy())
