"""int8 DEPTHWISE_CONV_2D requantization against LiteRT's kernels, per output channel: the builtin kernels round the
shift's ties up in lanes of 8 channels and half away from zero on the last ``C % 8`` (as TRANSPOSE_CONV's
``Quantize``), the reference kernels half away on every channel. Accumulators from numpy; the requantization is the
kernel set's (``tflite_ops.requantize_accumulator``)."""
import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels.runtime import KERNELS
from qresearch.kernels.tflite_ops import requantize_accumulator

from litert_graphs import grid, int8_model, litert_interpreter

SETS = [("tflite_builtin", "BUILTIN_WITHOUT_DEFAULT_DELEGATES"), ("tflite_reference", "BUILTIN_REF")]


def _depthwise(channels, size, strides, rng):
    """A random per-channel int8 depthwise conv (valid padding) converted by TF's converter: the flatbuffer, the
    interpreter-ready graph and the kernel's float weights (``size × size × C × 1``)."""
    w = rng.normal(size=(size, size, channels, 1)).astype(np.float32)
    top = np.abs(w).max(axis=(0, 1, 3))
    fq = tf.quantization.fake_quant_with_min_max_vars

    @tf.function(input_signature=[tf.TensorSpec((2, 11, 11, channels))])
    def graph(x):
        wq = tf.quantization.fake_quant_with_min_max_vars_per_channel(tf.reshape(w, w.shape[:3]), -top, top,
                                                                      narrow_range=True)
        y = tf.nn.depthwise_conv2d(fq(x, -1.0, 3.0), tf.reshape(wq, w.shape), [1, strides, strides, 1], "VALID")
        return fq(y, -6.0, 6.5)

    return graph, int8_model(graph)


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("channels", [4, 11, 20])
def test_depthwise_requantization_equals_litert_on_every_channel(channels):
    rng = np.random.default_rng(channels)
    for size, strides in ((5, 2), (3, 1)):
        graph, model = _depthwise(channels, size, strides, rng)
        q = rng.integers(-128, 128, size=(2, 11, 11, channels)).astype(np.int8)
        for kernel_set, resolver in SETS:
            interpreter = litert_interpreter(graph, resolver, model)
            assert "DEPTHWISE_CONV_2D" in [o["op_name"] for o in interpreter._get_ops_details()]
            i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
            interpreter.set_tensor(i["index"], q)
            interpreter.invoke()
            got = interpreter.get_tensor(o["index"]).astype(int)
            weights = next(d for d in interpreter.get_tensor_details()
                           if d["dtype"] == np.int8 and list(d["shape"]) == [1, size, size, channels])
            w_int = interpreter.get_tensor(weights["index"])[0].astype(np.int64)
            x = q.astype(np.int64) - i["quantization"][1]
            out = (11 - size) // strides + 1
            acc = sum(x[:, a:a + strides * out:strides, b:b + strides * out:strides] * w_int[a, b]
                      for a in range(size) for b in range(size))
            g_in, g_out = grid(*i["quantization"]), grid(*o["quantization"])
            y = requantize_accumulator(KERNELS.get(kernel_set), tf.constant(acc), g_in,
                                       tf.constant(weights["quantization_parameters"]["scales"], tf.float64), g_out,
                                       op="DEPTHWISE_CONV_2D").numpy()
            emulated = np.round(y / np.float32(g_out.scale.numpy())).astype(int) + o["quantization"][1]
            np.testing.assert_array_equal(emulated, got, err_msg=f"{kernel_set}, {size}x{size} stride {strides}")
