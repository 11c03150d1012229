"""CONCATENATION's requantized inputs (``tflite_ops.concatenation``) against LiteRT's int8 -> int8 QUANTIZE: every
int8 value, both signs of ``q - Z``, grid ratios under and over 1/2 (under it two roundings differ from one)."""
import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels import KERNELS
from qresearch.kernels.tflite_ops import concatenation

from litert_graphs import grid, litert_interpreter


def _litert_requantize(in_range, out_range):
    """Every int8 value through a QUANTIZE the converter puts between two FakeQuant ranges (a max pool keeps the
    first grid); returns (input (S, Z), output (S, Z), inputs, LiteRT's outputs)."""
    fq = tf.quantization.fake_quant_with_min_max_vars

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 1])])
    def graph(x):
        return fq(tf.nn.max_pool2d(fq(x, *in_range), 1, 1, "VALID"), *out_range)

    interpreter = litert_interpreter(graph)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    ops = [o["op_name"] for o in interpreter._get_ops_details()]
    assert "QUANTIZE" in ops, ops
    q = np.arange(-128, 128, dtype=np.int8)
    interpreter.set_tensor(inp["index"], q.reshape(1, 16, 16, 1))
    interpreter.invoke()
    return inp["quantization"], out["quantization"], q, interpreter.get_tensor(out["index"]).ravel().astype(int)


# the converter warns that a hand-written int8 input has no calibration statistics: its FakeQuant gives the range
@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("in_range, out_range", [
    ((0.0, 0.8846), (-0.945, 0.881)),        # ratio 0.48, q - Z >= 0 (a ReLU branch)
    ((-0.4866, 1.2131), (-2.1006, 1.4944)),  # ratio 0.47, both signs
    ((-0.3, 2.0), (-2.0, 6.0)),              # ratio 0.29
    ((-1.0, 1.0), (-0.5, 2.0)),              # ratio 0.8
], ids=["relu-0.48", "signed-0.47", "signed-0.29", "signed-0.8"])
def test_requantized_inputs_equal_litert_quantize(in_range, out_range):
    (s_in, z_in), (s_out, z_out), q, expected = _litert_requantize(in_range, out_range)
    x = tf.constant(((q.astype(np.float32) - z_in) * np.float32(s_in)).reshape(1, 256, 1))
    y = concatenation(KERNELS.get("tflite_builtin"), [x, x], [grid(s_in, z_in)] * 2, grid(s_out, z_out), -1,
                      [None, None]).numpy()
    got = np.round(y / np.float32(s_out)).astype(int) + z_out
    np.testing.assert_array_equal(got[..., 0].ravel(), expected)
    np.testing.assert_array_equal(got[..., 1], got[..., 0])   # concatenated on the last axis
    one_rounding = np.clip(np.floor((q - z_in) * (s_in / s_out) + 0.5) + z_out, -128, 127)
    if s_in / s_out < 0.5:   # where two roundings differ from one: the case a float simulation misses
        assert (one_rounding != expected).any()
