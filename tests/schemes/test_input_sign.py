"""A model input's grid follows its calibration data (``input_sign: data``): unsigned where every value is
>= 0, as after a ReLU; forced either way by ``input_sign: signed|unsigned``; a spec's own ``signed`` wins."""
import numpy as np
import pytest

import qresearch
from qresearch._compat import keras
from qresearch.errors import ConfigError

from .helpers import input_quantizers

LSQ2 = {"weights": {"quantizer": "lsq", "bits": 2}, "activations": {"quantizer": "lsq", "bits": 2, "init": "max"}}


def _model():
    inp = keras.Input((6, 6, 1), name="pixels")
    x = keras.layers.Flatten()(inp)  # keeps the sign: the Dense's input quantizer reads the model input's values
    out = keras.layers.Dense(3)(x)
    return keras.Model(inp, out)


def _two_inputs():
    a, b = keras.Input((4,), name="counts"), keras.Input((4,), name="offsets")
    x = keras.layers.Concatenate()([keras.layers.Dense(3)(a), keras.layers.Dense(3)(b)])
    return keras.Model([a, b], keras.layers.Dense(2)(x))


def _pixels(n=64, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, 6, 6, 1)).astype("float32")


def _input_signs(q):
    return [layer.quantizer.signed for layer in input_quantizers(q)]


def test_non_negative_calibration_data_gives_the_unsigned_grid_with_all_its_levels():
    x = _pixels()
    q = qresearch.quantize(_model(), LSQ2, calibration_data=x)
    assert _input_signs(q) == [False]
    assert q.qresearch_info["unsigned_inputs"] == ["pixels"]
    layer, = input_quantizers(q)
    step = float(layer.quantizer_vars["step"].numpy())
    np.testing.assert_allclose(step, x.max() / 3, rtol=1e-6)  # init max: max|x| / Qp, Qp = 2^2 - 1
    got = layer(x, training=False).numpy()
    want = np.clip(np.round(x / step), 0, 3) * step  # LSQ eq. 1 on the unsigned grid [0, 3]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert len(np.unique(got)) == 4  # a signed 2-bit grid keeps only {0, 1} of its levels for x >= 0


def test_signed_data_or_no_data_keeps_the_signed_grid():
    x = _pixels() - 0.5
    q = qresearch.quantize(_model(), LSQ2, calibration_data=x)
    assert _input_signs(q) == [True] and q.qresearch_info["unsigned_inputs"] == []
    q = qresearch.quantize(_model(), LSQ2)  # nothing read: signed clips nothing at 0
    assert _input_signs(q) == [True]


def test_one_negative_value_in_a_later_batch_keeps_the_input_signed():
    x = _pixels(96)
    x[-1, 0, 0, 0] = -1e-3  # in the third batch of 32
    q = qresearch.quantize(_model(), LSQ2, calibration_data=x)
    assert _input_signs(q) == [True]


@pytest.mark.parametrize("input_sign,data_offset,want", [("signed", 0.0, True), ("unsigned", -0.5, False),
                                                        ("unsigned", None, False)])
def test_input_sign_forces_the_grid(input_sign, data_offset, want):
    data = None if data_offset is None else _pixels() + data_offset
    q = qresearch.quantize(_model(), dict(LSQ2, input_sign=input_sign), calibration_data=data)
    assert _input_signs(q) == [want]


def test_a_spec_that_sets_signed_keeps_it():
    scheme = {"weights": LSQ2["weights"], "activations": dict(LSQ2["activations"], signed=True)}
    q = qresearch.quantize(_model(), scheme, calibration_data=_pixels())
    assert _input_signs(q) == [True]


def test_a_target_that_stores_signed_grids_keeps_the_input_signed():
    scheme = {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True},
              "activations": {"quantizer": "minmax", "bits": 8, "symmetric": True, "narrow_range": True}}
    q = qresearch.quantize(_model(), scheme, hardware="tensorrt", adapt=True, calibration_data=_pixels())
    assert _input_signs(q) == [True]


def test_each_input_of_a_multi_input_model_is_read_on_its_own():
    rng = np.random.default_rng(0)
    counts, offsets = rng.poisson(3.0, (64, 4)).astype("float32"), rng.normal(size=(64, 4)).astype("float32")
    q = qresearch.quantize(_two_inputs(), LSQ2, calibration_data=[counts, offsets])
    assert q.qresearch_info["unsigned_inputs"] == ["counts"]
    signs = {layer.name: layer.quantizer.signed for layer in input_quantizers(q)}
    assert sorted(signs.values()) == [False, True], signs


def test_an_unknown_input_sign_names_the_choices():
    with pytest.raises(ConfigError, match=r"input_sign.*data.*signed.*unsigned"):
        qresearch.quantize(_model(), dict(LSQ2, input_sign="positive"))


def test_the_unsigned_input_grid_deploys_on_tflite_int8():
    """An unsigned LSQ input (zero point at the grid's bottom) converts to an int8 input the interpreter
    agrees with."""
    hardware = pytest.importorskip("qresearch.hardware")
    x = _pixels()
    scheme = {"weights": {"quantizer": "lsq", "bits": 8, "per_channel": True},
              "activations": {"quantizer": "lsq", "bits": 8}}
    q = qresearch.quantize(_model(), scheme, hardware="tflite_int8", adapt=True, calibration_data=x)
    assert _input_signs(q) == [False]
    r = hardware.verify(q, "tflite_int8", x, np.zeros(len(x), "int32"))
    assert r["integer_only"] and not r["structural_issues"], r
    assert r["max_abs_diff_lsb"] < 1e-3, r
