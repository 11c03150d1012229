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
    base = np.floor_divide(sums, n)
    return (base[:, None] + (np.arange(n)[None, :] < (sums - base * n)[:, None])).astype(np.int8)


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("kernel_set", sorted(RESOLVERS))
def test_each_kernel_set_computes_mean_as_its_runtime(kernel_set, keepdims):
    sums = np.arange(-128 * N, 127 * N + 1)
    sums = np.concatenate([sums, np.zeros(-len(sums) % CHANNELS, np.int64)])
    rows = len(sums) // CHANNELS

    @tf.function(input_signature=[tf.TensorSpec((rows, 7, 7, CHANNELS))])
    def graph(x):
        return fq(tf.reduce_mean(fq(x, -2.179, 2.261), axis=[1, 2], keepdims=keepdims), -1.403, 2.293)

    interpreter = litert_interpreter(graph, RESOLVERS[kernel_set])
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = i["quantization"], o["quantization"]
    x = _rows_summing_to(sums, N).reshape(rows, CHANNELS, 7, 7).transpose(0, 2, 3, 1)
    interpreter.set_tensor(i["index"], np.ascontiguousarray(x))
    interpreter.invoke()
    got = interpreter.get_tensor(o["index"]).astype(np.int64).reshape(rows, CHANNELS)

    kernels = KERNELS.get(kernel_set)
    shape = (rows, 1, 1, CHANNELS) if keepdims else (rows, CHANNELS)
    y_mean = tf.constant(((sums - N * z_in) * float(np.float32(s_in)) / N).reshape(shape), tf.float32)
    op = "MEAN_KEEPDIMS" if keepdims else "MEAN"
    y = kernels.handler(op)(kernels, OpCall([y_mean], [grid(s_in, z_in)], grid(s_out, z_out), attrs={"count": N}))
    emulated = np.round(y.numpy().reshape(rows, CHANNELS) / np.float32(s_out)).astype(np.int64) + z_out
    np.testing.assert_array_equal(emulated, got)
