"""int8 L2_NORMALIZATION (``kernels.normalization``) against LiteRT's kernels on random input grids, and its
fixed-point inverse square root against the closed form."""
import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels.fixed_point import inv_sqrt_multiplier
from qresearch.kernels.normalization import OUTPUT_SCALE, l2_normalization

from litert_graphs import grid, litert_interpreter


def test_the_fixed_point_inverse_square_root_is_one_over_sqrt():
    # every branch: x <= 1, no normalising shift, the pairs of bits, x >= 2^29 (divided by 4 once)
    x = np.array([0, 1, 2, 3, 4, 100, 255 ** 2, 12345, 2 ** 27, 2 ** 29 - 1, 2 ** 29, 2 ** 30 + 12345, 2 ** 31 - 1])
    multiplier, shift = (t.numpy() for t in inv_sqrt_multiplier(tf.constant(x, tf.int64)))
    real = multiplier * 2.0 ** (shift - 31.0)
    np.testing.assert_allclose(real, 1 / np.sqrt(np.maximum(x, 1)), rtol=2e-6)
    assert (multiplier < 2 ** 31).all() and (shift <= 0).all()


def _rows(rng, depth, zero_point):
    """int8 rows: random, saturated, all at the zero point (a zero norm), one step off it, small offsets."""
    q = rng.integers(-128, 128, size=(12, depth))
    q[0] = zero_point
    q[1] = zero_point
    q[1, 0] = zero_point + 1
    q[2] = -128
    q[3] = 127
    q[4] = np.clip(zero_point + rng.integers(-3, 4, size=depth), -128, 127)
    return q.astype(np.int8)


def _litert(q, lo, hi, resolver):
    fq = tf.quantization.fake_quant_with_min_max_vars

    @tf.function(input_signature=[tf.TensorSpec(q.shape)])
    def graph(x):
        return fq(tf.math.l2_normalize(fq(x, lo, hi), axis=-1), -1.0, 127 / 128)

    interpreter = litert_interpreter(graph, resolver)
    assert [o["op_name"] for o in interpreter._get_ops_details()][0] == "L2_NORMALIZATION"
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert o["quantization"] == (OUTPUT_SCALE, 0)
    interpreter.set_tensor(i["index"], q)
    interpreter.invoke()
    return interpreter.get_tensor(o["index"]).astype(int), i["quantization"]


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("resolver", ["BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF", "BUILTIN"])
def test_l2_normalization_equals_litert(resolver):
    rng = np.random.default_rng(0)
    for depth, (lo, hi) in [(8, (-1.0, 1.0)), (64, (-0.3, 5.0)), (33, (-6.0, 0.5)), (200, (0.0, 2.0))]:
        _, (_, zero_point) = _litert(np.zeros((12, depth), np.int8), lo, hi, resolver)   # the input grid's
        q = _rows(rng, depth, int(zero_point))
        got, g_in = _litert(q, lo, hi, resolver)
        x = tf.constant((q.astype(np.float32) - g_in[1]) * np.float32(g_in[0]))
        emulated = l2_normalization(x, grid(*g_in), grid(OUTPUT_SCALE, 0)).numpy().astype(int)
        np.testing.assert_array_equal(emulated, got, err_msg=f"depth {depth}, input grid {g_in}")


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
def test_a_sum_of_squares_over_2_to_the_29_is_normalised_as_litert_does():
    q = np.full((2, 33000), -128, np.int8)   # 33000 · 128² > 2^29: the kernel's divide-by-4 branch
    q[1, ::2] = 127
    got, g_in = _litert(q, -1.0, 1.0, "BUILTIN_WITHOUT_DEFAULT_DELEGATES")
    x = tf.constant((q.astype(np.float32) - g_in[1]) * np.float32(g_in[0]))
    np.testing.assert_array_equal(l2_normalization(x, grid(*g_in), grid(OUTPUT_SCALE, 0)).numpy().astype(int), got)
