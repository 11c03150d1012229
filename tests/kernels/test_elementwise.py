"""ADD, SUB and MUL of two int8 tensors that broadcast (a squeeze-excite scale (1, 1, C), a one-channel map
(H, W, 1)) against LiteRT's kernels, every int8 value of the large operand against random values of the small one,
both operand orders: the emulation (``tflite_ops.add`` / ``multiply``) gives LiteRT's integers. 30 channels, so that
ADD's inner loops have both their vector part and their scalar rest (``tflite_ops.add_paths``)."""
import dataclasses

import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels import KERNELS
from qresearch.kernels.tflite_ops import FLOORED, SCALAR, VECTOR, add, add_paths, multiply

from litert_graphs import grid, litert_interpreter

BIG = (1, 16, 16, 30)
RANGES = ((-0.7, 1.3), (-2.1, 0.4), (-1.5, 2.5))   # the big operand, the small one, the output


def _litert(op, small_shape, small_first):
    """LiteRT's int8 outputs for every int8 value in the big operand (tiled) and random ones in the small."""
    fq = tf.quantization.fake_quant_with_min_max_vars
    fn = {"ADD": tf.add, "SUB": tf.subtract, "MUL": tf.multiply}[op]

    @tf.function(input_signature=[tf.TensorSpec(BIG), tf.TensorSpec(small_shape)])
    def graph(big, small):
        a, b = fq(big, *RANGES[0]), fq(small, *RANGES[1])
        return fq(fn(b, a) if small_first else fn(a, b), *RANGES[2])

    interpreter = litert_interpreter(graph)
    assert [o["op_name"] for o in interpreter._get_ops_details()] == [op]
    inputs = sorted(interpreter.get_input_details(), key=lambda d: -int(np.prod(d["shape"])))
    rng = np.random.default_rng(0)
    q_big = np.resize(np.arange(-128, 128), BIG).astype(np.int8)
    q_small = rng.integers(-128, 128, small_shape).astype(np.int8)
    for d, q in zip(inputs, (q_big, q_small)):
        interpreter.set_tensor(d["index"], q)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    grids = [d["quantization"] for d in inputs] + [out["quantization"]]
    return grids, q_big, q_small, interpreter.get_tensor(out["index"]).astype(int)


def _emulated(kernels, op, grids, q_big, q_small, small_first):
    g_big, g_small, g_out = (grid(*g) for g in grids)
    x_big = tf.constant((q_big.astype(np.float32) - grids[0][1]) * np.float32(grids[0][0]))
    x_small = tf.constant((q_small.astype(np.float32) - grids[1][1]) * np.float32(grids[1][0]))
    fn = multiply if op == "MUL" else add
    extra = {"subtract": True} if op == "SUB" else {}
    operands = [x_small, x_big, g_small, g_big] if small_first else [x_big, x_small, g_big, g_small]
    y = fn(kernels, operands[0], operands[1], operands[2], operands[3], g_out, **extra).numpy()
    return np.round(y / np.float32(grids[2][0])).astype(int) + grids[2][1]


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("small_shape", [(1, 1, 1, 30), (1, 16, 16, 1), (1, 1, 1, 1)],
                         ids=["channel-scale", "one-channel-map", "scalar"])
@pytest.mark.parametrize("small_first", [False, True], ids=["big-first", "small-first"])
@pytest.mark.parametrize("op", ["ADD", "SUB", "MUL"])
def test_broadcast_elementwise_equals_litert(op, small_shape, small_first):
    grids, q_big, q_small, expected = _litert(op, small_shape, small_first)
    kernels = KERNELS.get("tflite_builtin")
    np.testing.assert_array_equal(_emulated(kernels, op, grids, q_big, q_small, small_first), expected)
    if op == "ADD" and small_shape != (1, 1, 1, 1):  # the data tells the paths apart: the scalar path alone misses
        # (a lone broadcast value's rescaled sum meets no rounding tie here either way)
        scalar = dataclasses.replace(kernels, add_vector=False)
        assert np.any(_emulated(scalar, op, grids, q_big, q_small, small_first) != expected)


def test_add_paths_follow_litert_inner_loops():
    v, s, f = VECTOR, SCALAR, FLOORED
    assert add_paths((4, 4, 8), (4, 4, 8)) == VECTOR
    channel_scale = add_paths((2, 2, 20), (1, 1, 20))           # AddElementwise(20) per pixel
    assert channel_scale.shape == (2, 2, 20) and np.all(channel_scale == [v] * 16 + [s] * 4)
    assert np.array_equal(add_paths((1, 1, 20), (2, 2, 20)), channel_scale)
    one_channel = add_paths((2, 2, 1), (2, 2, 12))              # AddScalarBroadcast(12) per pixel
    assert np.all(one_channel == [f] * 8 + [s] * 4)
    scalar = add_paths((2, 3, 4), (1, 1, 1))                    # AddScalarBroadcast(24): one run
    assert np.all(scalar == f)
    rows = add_paths((3, 4, 20), (3, 1, 20))                     # (H, 1, C): a run of C
    assert np.all(rows == [v] * 16 + [s] * 4)
    assert add_paths((3, 1, 20), (1, 4, 20)) is None            # both broadcast: not modelled


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("op", ["MUL", "ADD", "SUB"])
def test_constant_operands_are_stored_as_the_converter_stores_them(op):
    """``x op c`` with a constant ``c`` (a preprocessing layer's scale or mean): the converter stores ``c`` int8 per
    tensor on the grid of ``[min(c, 0), max(c, 0)]``; ``constant_operand`` gives that grid and those integers."""
    from qresearch.kernels import constant_operand

    fq = tf.quantization.fake_quant_with_min_max_vars
    fn = {"ADD": tf.add, "SUB": tf.subtract, "MUL": tf.multiply}[op]
    rng = np.random.default_rng(0)
    for i in range(4):
        c = (rng.normal(size=12) * rng.uniform(0.01, 10)).astype(np.float32)
        c = np.abs(c) if i == 0 else -np.abs(c) if i == 1 else c

        @tf.function(input_signature=[tf.TensorSpec((1, 4, 12))])
        def graph(x):
            return fq(fn(fq(x, -1.3, 2.1), c), -30.0, 35.0)

        interpreter = litert_interpreter(graph)
        kernel = next(o for o in interpreter._get_ops_details() if o["op_name"] == op)
        stored = next(d for d in interpreter.get_tensor_details() if d["index"] == kernel["inputs"][1])
        q = interpreter.get_tensor(stored["index"]).astype(int)
        values, g = constant_operand(c, 3)
        assert values.shape == (1, 1, 12)
        assert (float(g.scale), int(g.zero_point)) == (float(np.float32(stored["quantization"][0])),
                                                       stored["quantization"][1])
        np.testing.assert_array_equal(np.round(values.numpy()[0, 0] / float(g.scale)) + g.zero_point.numpy(), q)
