"""``lowered_activations``: swish runs as TFLite runs it, LOGISTIC onto sigmoid's fixed grid, then MUL. Checked
against numpy (forward and gradient); deployment bit for bit: tests/hardware/test_integer_parity.py."""
import numpy as np
import pytest

import qresearch
from qresearch import keras, tf
from qresearch.schemes import FixedRangeQuantizer
from qresearch.schemes.build import set_kernels
from qresearch.schemes.lowered_activations import lowered, lowering
from qresearch.schemes.wrappers import LayerQuantizeConfig

SIGMOID_8 = FixedRangeQuantizer(bits=8, range_min=0.0, range_max=255 / 256)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _on_sigmoid_grid(s):
    """TF FakeQuant onto [0, 255/256] with 256 levels: round half up to a multiple of 1/256, clipped."""
    return np.clip(np.floor(s * 256 + 0.5), 0, 255) / 256


def _quantize_inner(t):
    return SIGMOID_8(t, False, weights={})


@pytest.mark.parametrize("fn", [keras.activations.swish, tf.nn.silu, "swish"])
def test_swish_rounds_its_sigmoid_onto_the_fixed_grid_before_the_multiply(fn):
    x = np.linspace(-9, 9, 2001).astype(np.float32)
    y = lowered(keras.activations.get(fn), _quantize_inner)(tf.constant(x)).numpy()
    expected = x * _on_sigmoid_grid(_sigmoid(x)).astype(np.float32)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)
    assert np.abs(y - x * _sigmoid(x)).max() > 1e-3   # not the float swish


def test_lowered_swish_gradient_is_the_straight_through_estimate():
    x = tf.constant(np.linspace(-9, 9, 401).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = lowered(keras.activations.swish, lambda t: SIGMOID_8(t, True, weights={}))(x)
    g = tape.gradient(y, x).numpy()
    xs = x.numpy().astype(np.float64)
    s = _sigmoid(xs)
    inside = s <= 255 / 256   # FakeQuant passes the gradient inside its range only
    expected = _on_sigmoid_grid(s) + xs * s * (1 - s) * inside
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-5)


def test_only_swish_is_lowered():
    assert lowering(keras.activations.swish).inner == "sigmoid"
    assert lowering(keras.activations.sigmoid) is None and lowering(keras.activations.relu) is None


def _swish_model():
    L = keras.layers
    inp = keras.Input((6,))
    h = L.Dense(8, name="pre")(inp)
    h = L.Activation("swish", name="swish")(h)
    h = L.Dense(4, activation="swish", name="fused")(h)
    return keras.Model(inp, L.Dense(3, name="out")(h))


@pytest.fixture(scope="module")
def calib():
    return np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)


def _by_name(qat, name):
    return next(l for l in qat.layers if getattr(getattr(l, "layer", None), "name", None) == name)


def test_every_op_scheme_gives_swish_a_fixed_sigmoid_grid_and_the_inputs_scheme_none(calib):
    keras.utils.set_random_seed(0)
    m = _swish_model()
    q = qresearch.quantize(m, "tflite_int8", calibration_data=calib)
    act, fused = _by_name(q, "swish"), _by_name(q, "fused")
    assert set(act.quantize_config.activations["activation"]) == {"pre", "post", "inner"}
    inner = fused.quantize_config.activations["activation"]["inner"]
    assert isinstance(inner, FixedRangeQuantizer) and (inner.range_min, inner.range_max) == (0.0, 255 / 256)
    # lsq quantizes conv/dense inputs only: swish's output is not quantized, so there is no LOGISTIC grid to keep
    r = qresearch.quantize(m, "lsq", calibration_data=calib)
    assert all("inner" not in v for l in r.layers for v in getattr(l, "_activation_vars", {}).values())
    # the config survives serialization, and a config saved before "inner" existed still loads
    cfg = fused.quantize_config
    assert LayerQuantizeConfig.from_config(cfg.get_config()) == cfg
    old = cfg.get_config()
    old["activations"] = {"activation": {"pre": old["activations"]["activation"]["pre"], "post": None}}
    assert set(LayerQuantizeConfig.from_config(old).activations["activation"]) == {"pre", "post"}


def test_simulated_swish_layer_equals_numpy(calib):
    """The Activation("swish") wrapper's inference output: its quantized input times the sigmoid rounded to 1/256,
    then its output quantizer (TF FakeQuant over the wrapper's range)."""
    keras.utils.set_random_seed(0)
    q = qresearch.quantize(_swish_model(), "tflite_int8", calibration_data=calib)
    set_kernels(q, None)   # the float simulation (no integer emulation without a target)
    act = _by_name(q, "swish")
    probe = keras.Model(q.inputs, [act.input, act.output])
    x, y = (t.numpy() for t in probe(calib, training=False))
    out_q, out_v = act._output_quantizers[0], act._output_quantizer_vars
    product = (x * _on_sigmoid_grid(_sigmoid(x)).astype(np.float32)).astype(np.float32)
    expected = out_q(tf.constant(product), False, weights=out_v).numpy()
    np.testing.assert_array_equal(y, expected)
    float_swish = out_q(tf.constant(x * _sigmoid(x).astype(np.float32)), False, weights=out_v).numpy()
    assert not np.array_equal(y, float_swish)   # the rounding changes some outputs: the test can fail
