"""MEAN as each kernel set computes it, against LiteRT on every sum of 49 int8 values (n = 49: 1/n is not a power of
two), with and without keepdims: the kernel set's own handler (``KERNELS.get(set).handler``), as the emulation runs
it, gives the interpreter's integers under the op resolver that set emulates."""
import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels import KERNELS, OpCall

from litert_graphs import grid, litert_interpreter

fq = tf.quantization.fake_quant_with_min_max_vars
N, CHANNELS = 49, 16
RESOLVERS = {"tflite_builtin": None, "tflite_reference": "BUILTIN_REF", "xnnpack": "BUILTIN"}


def _rows_summing_to(sums, n):
    """int8 rows of ``n`` values, row k summing to ``sums[k]`` (as even as possible)."""
    base = np.floor_divide(sums, n)
    return (base[:, None] + (np.arange(n)[None, :] < (sums - base * n)[:, None])).astype(np.int8)


def _every_sum(resolver, keepdims):
    """``(sums, LiteRT's MEAN of each, input (S, Z), output (S, Z))`` over 7x7 inputs, one sum per (row, channel). The
    ranges are ones where XNNPACK's float32 bias of the zero points moves 2 sums across a tie (1 in 75 random ranges
    do; found with the converter's grids)."""
    sums = np.arange(-128 * N, 127 * N + 1)
    sums = np.concatenate([sums, np.zeros(-len(sums) % CHANNELS, np.int64)])
    rows = len(sums) // CHANNELS

    @tf.function(input_signature=[tf.TensorSpec((rows, 7, 7, CHANNELS))])
    def graph(x):
        return fq(tf.reduce_mean(fq(x, -2.179, 2.261), axis=[1, 2], keepdims=keepdims), -1.403, 2.293)

    interpreter = litert_interpreter(graph, resolver)
    if resolver == "BUILTIN":
        assert "DELEGATE" in [o["op_name"] for o in interpreter._get_ops_details()]
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = _rows_summing_to(sums, N).reshape(rows, CHANNELS, 7, 7).transpose(0, 2, 3, 1)
    interpreter.set_tensor(i["index"], np.ascontiguousarray(x))
    interpreter.invoke()
    got = interpreter.get_tensor(o["index"]).astype(np.int64).reshape(-1)
    return sums, got, i["quantization"], o["quantization"]


def _emulated(kernel_set, op, sums, g_in, g_out, keepdims):
    kernels = KERNELS.get(kernel_set)
    shape = (len(sums) // CHANNELS, 1, 1, CHANNELS) if keepdims else (len(sums) // CHANNELS, CHANNELS)
    y_mean = tf.constant(((sums - N * g_in[1]) * float(np.float32(g_in[0])) / N).reshape(shape), tf.float32)
    y = kernels.handler(op)(kernels, OpCall([y_mean], [grid(*g_in)], grid(*g_out), attrs={"count": N}))
    return np.round(y.numpy().reshape(-1) / np.float32(g_out[0])).astype(np.int64) + g_out[1]


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("kernel_set", sorted(RESOLVERS))
def test_each_kernel_set_computes_mean_as_its_runtime(kernel_set, keepdims):
    sums, got, g_in, g_out = _every_sum(RESOLVERS[kernel_set], keepdims)
    op = "MEAN_KEEPDIMS" if keepdims else "MEAN"
    np.testing.assert_array_equal(_emulated(kernel_set, op, sums, g_in, g_out, keepdims), got)


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
def test_xnnpacks_mean_is_neither_the_builtin_rule_nor_the_centred_float32_one():
    """On the same sums, the builtin kernel's fixed-point MEAN (the xnnpack set's rule before) and the float32 rule
    with ``n·Z_in`` subtracted from the sum first (the first rule tried: fuzz seed 240 was 1 LSB off with it) each
    give other integers than XNNPACK; the emulation gives XNNPACK's (the test above)."""
    sums, got, (s_in, z_in), (s_out, z_out) = _every_sum("BUILTIN", False)
    assert (_emulated("tflite_builtin", "MEAN", sums, (s_in, z_in), (s_out, z_out), False) != got).any()
    f32 = np.float32
    scale = f32(f32(f32(s_in) / f32(s_out)) * f32(f32(1) / f32(N)))
    centred = np.clip(np.rint(f32(sums - N * z_in) * scale) + z_out, -128, 127)
    assert (centred != got).any()
