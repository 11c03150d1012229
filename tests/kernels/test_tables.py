"""Table activations (LOGISTIC, TANH, GELU) against LiteRT: for every int8 input, on random input grids, the
emulation (``tflite_ops.lut_activation``) gives the interpreter's integers, for the builtin kernels (a float32
table, rounded half away) and for XNNPACK's (a float64 table, rounded half to even)."""
import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels.tflite_ops import LUT_FUNCTIONS, XNNPACK_LUT_FUNCTIONS, lut_activation, lut_table

from litert_graphs import grid, litert_interpreter

FLOAT_FNS = {"LOGISTIC": tf.sigmoid, "TANH": tf.tanh, "GELU": lambda t: tf.nn.gelu(t, approximate=False)}
OUT_RANGES = {"LOGISTIC": (0.0, 255 / 256), "TANH": (-1.0, 127 / 128), "GELU": (-0.2, 5.0)}
GRIDS = 8   # random input ranges per op


def _input_ranges(seed):
    rng = np.random.default_rng(seed)
    return [(-float(rng.uniform(0.5, 12)), float(rng.uniform(0.5, 12))) for _ in range(GRIDS)]


def _litert(op, lo, hi, resolver=None):
    """LiteRT's int8 outputs of ``op`` for the 256 int8 inputs, and the (S, Z) of the input and the output."""
    fq = tf.quantization.fake_quant_with_min_max_vars

    @tf.function(input_signature=[tf.TensorSpec((1, 256))])
    def graph(x):
        return fq(FLOAT_FNS[op](fq(x, lo, hi)), *OUT_RANGES[op])

    interpreter = litert_interpreter(graph, resolver)
    names = [o["op_name"] for o in interpreter._get_ops_details()]
    assert names[0] == op, names
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(i["index"], np.arange(-128, 128, dtype=np.int8)[None])
    interpreter.invoke()
    return interpreter.get_tensor(o["index"])[0].astype(int), i["quantization"], o["quantization"], names


def _emulated(fn, g_in, g_out, half_even=False):
    x = tf.constant((np.arange(-128, 128, dtype=np.float32) - g_in[1]) * np.float32(g_in[0]))
    y = lut_activation(x, fn, grid(*g_in), grid(*g_out), half_even=half_even).numpy()
    return np.round(y / np.float32(g_out[0])).astype(int) + g_out[1]


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("op", sorted(LUT_FUNCTIONS))
def test_table_activation_equals_litert_builtin_kernels(op):
    for lo, hi in _input_ranges(0):
        got, g_in, g_out, _ = _litert(op, lo, hi)
        np.testing.assert_array_equal(_emulated(LUT_FUNCTIONS[op], g_in, g_out), got, err_msg=f"{op} {g_in} {g_out}")


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("op", sorted(XNNPACK_LUT_FUNCTIONS))
def test_table_activation_equals_xnnpack(op):
    for lo, hi in _input_ranges(1):
        got, g_in, g_out, names = _litert(op, lo, hi, resolver="BUILTIN")
        assert "DELEGATE" in names   # XNNPACK ran it
        np.testing.assert_array_equal(_emulated(XNNPACK_LUT_FUNCTIONS[op], g_in, g_out, half_even=True), got)


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
def test_the_two_tables_differ_where_float32_rounds_onto_a_tie():
    """Input grid (0.0624198392033577, 25), q = 99: sigmoid(4.619068) · 256 is 253.49999 exactly, 253.5 in float32.
    The builtin kernel rounds the float32 tie away (output 126), XNNPACK the exact value (125); each emulation
    gives its own kernel's entry, and the float simulation gives neither kernel's table on this grid."""
    g_in, g_out = (0.0624198392033577, 25), (1 / 256, -128)
    entry = 99 + 128
    builtin = lut_table(LUT_FUNCTIONS["LOGISTIC"], grid(*g_in), grid(*g_out)).numpy()
    xnnpack = lut_table(XNNPACK_LUT_FUNCTIONS["LOGISTIC"], grid(*g_in), grid(*g_out), half_even=True).numpy()
    assert (builtin[entry], xnnpack[entry]) == (126, 125)
    assert (np.delete(builtin, entry) == np.delete(xnnpack, entry)).all()
