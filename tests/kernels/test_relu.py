"""int8 RELU / RELU6 as ops of their own (a ReLU its producer does not fuse) against LiteRT's kernels: every int8
input, on random grids and on grids where an input lands on a rounding tie in float32 (NASNetMobile's)."""
import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels.runtime import KERNELS
from qresearch.kernels.tflite_ops import OpCall

from litert_graphs import grid, int8_model, litert_interpreter

SETS = [("tflite_builtin", "BUILTIN_WITHOUT_DEFAULT_DELEGATES"), ("tflite_reference", "BUILTIN_REF"),
        ("xnnpack", "BUILTIN")]
TIE = (3.9634976387023926, -7, 2.0827791690826416, -128)   # (S_in, Z_in, S_out, Z_out): q = 60 is 127.5 in float32


def _ranges(rng):
    """(input range, output range, relu6) cases: random, the tie, and a ReLU's output range equal to the input's top."""
    s_in, z_in, s_out, z_out = TIE
    cases = [((-(128 + z_in) * s_in, (127 - z_in) * s_in), (0.0, 255 * s_out), False),
             ((-(128 + z_in) * s_in, (127 - z_in) * s_in), (0.0, 255 * s_out), True)]
    for _ in range(10):
        lo, hi = -float(rng.uniform(0.1, 20)), float(rng.uniform(0.1, 20))
        out_lo = 0.0 if rng.random() < 0.5 else -float(rng.uniform(0.0, 2))
        cases.append(((lo, hi), (out_lo, float(rng.uniform(0.05, 1.5) * hi)), bool(rng.random() < 0.5)))
    return cases


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
def test_relu_equals_litert_on_every_int8_input():
    fq = tf.quantization.fake_quant_with_min_max_vars
    q = np.arange(-128, 128).astype(np.int8)
    for in_range, out_range, six in _ranges(np.random.default_rng(0)):
        @tf.function(input_signature=[tf.TensorSpec((256,))])
        def graph(x):
            x = fq(x, *in_range)
            return fq(tf.nn.relu6(x) if six else tf.nn.relu(x), *out_range)

        model = int8_model(graph)
        for kernel_set, resolver in SETS:
            interpreter = litert_interpreter(graph, resolver, model)
            assert [o["op_name"] for o in interpreter._get_ops_details()] == ["RELU6" if six else "RELU"]
            i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
            interpreter.set_tensor(i["index"], q)
            interpreter.invoke()
            got = interpreter.get_tensor(o["index"]).astype(int)
            (s_in, z_in), (s_out, z_out) = i["quantization"], o["quantization"]
            kernels = KERNELS.get(kernel_set)
            x = tf.constant((q.astype(np.float32) - z_in) * np.float32(s_in))
            y = kernels.handler("RELU6" if six else "RELU")(kernels, OpCall([x], [grid(s_in, z_in)],
                                                                               grid(s_out, z_out))).numpy()
            emulated = np.round(y / np.float32(s_out)).astype(int) + z_out
            np.testing.assert_array_equal(emulated, got, err_msg=f"{kernel_set}: {in_range} -> {out_range}, {six}")
