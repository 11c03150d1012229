"""The input QUANTIZE ops TF 2.21's converter drops with int8 I/O where the float input is quantized onto two grids
(input_requantize.py), restored and checked against numpy."""
import numpy as np
import pytest

from qresearch._compat import keras, tf
from qresearch.hardware.deploy import make_interpreter, quantize_input, round_half_away
from qresearch.hardware.flatbuffer_edits import edited
from qresearch.hardware.input_requantize import orphaned_tensors, restore_input_quantizes

# Two FakeQuant ranges of the input: the conv's [0, 1] and the concatenation's [0, 1.7]. Their scale ratio 1/1.7
# puts no requantized value on a rounding tie (10·q = 17·k + 8.5 has no integer solution).
RANGE_IN, RANGE_CAT = (0.0, 1.0), (0.0, 1.7)


def _grid(lo, hi):
    scale = np.float32((hi - lo) / 255.0)
    return float(scale), int(round(-128 - lo / scale))


def _two_grid_input_model():
    """The QAT graph of a model whose input a conv and a Concatenate read, as the old plans built it: the input
    fake-quantized for the conv, and again, straight from float, by the concatenation's range."""
    L = keras.layers
    fq = tf.quantization.fake_quant_with_min_max_args
    inp = keras.Input((6, 6, 1), batch_size=1)
    x_in = L.Lambda(lambda x: fq(x, *RANGE_IN))(inp)
    conv = L.Conv2D(2, 3, padding="same", kernel_initializer="ones", use_bias=False)
    h = L.Lambda(lambda x: fq(x, *RANGE_CAT))(conv(x_in))
    out = L.Lambda(lambda x: fq(x, *RANGE_CAT))(L.Concatenate()([h, L.Lambda(lambda x: fq(x, *RANGE_CAT))(inp)]))
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def dropped():
    model = _two_grid_input_model()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def _run(flatbuffer, q):
    interp = make_interpreter(flatbuffer)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], q)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def test_the_converter_leaves_a_tensor_without_producer_and_the_model_cannot_run(dropped):
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(dropped))
    assert len(orphaned_tensors(model.subgraphs[0], model.buffers)) == 1   # what TF 2.21 writes
    with pytest.raises(RuntimeError, match="lacks data"):
        _run(dropped, np.zeros((1, 6, 6, 1), np.int8))


def test_the_restored_model_takes_the_input_grid_and_requantizes_it_for_the_concatenation(dropped):
    s_in, z_in = _grid(*RANGE_IN)
    s_cat, z_cat = _grid(*RANGE_CAT)
    restored, names = edited(dropped, lambda model: restore_input_quantizes(model, (s_in, z_in)))
    assert len(names) == 1
    interp = make_interpreter(restored)
    assert interp.get_input_details()[0]["quantization"] == pytest.approx((s_in, z_in))
    x = np.random.default_rng(0).uniform(0, 1, (1, 6, 6, 1)).astype(np.float32)
    q = quantize_input(x, s_in, z_in, np.int8)
    out = _run(restored, q).astype(np.int64)
    # independent reference: the integer input moved onto the concatenation's grid, rounded once (no ties here)
    expected = round_half_away((q.astype(np.float64) - z_in) * s_in / s_cat) + z_cat
    np.testing.assert_array_equal(out[..., 2:], np.clip(expected, -128, 127))
    # the conv half reads the input on its own grid: all-ones 3x3 kernel, sums of the dequantized input
    real = (q[0, :, :, 0].astype(np.float64) - z_in) * s_in
    padded = np.pad(real, 1)
    sums = sum(padded[i:i + 6, j:j + 6] for i in range(3) for j in range(3))
    np.testing.assert_allclose((out[0, :, :, 0] - z_cat) * s_cat, np.clip(sums, 0, 1.7), atol=s_cat / 2 + 1e-6)


def test_a_grid_no_copy_of_the_input_is_on_is_refused_with_the_tensors_named(dropped):
    with pytest.raises(ValueError, match="no op computes .*0 of them are on the input quantizer's grid"):
        edited(dropped, lambda model: restore_input_quantizes(model, (0.5, 3)))
