"""int8 BATCH_MATMUL (``tflite_ops.batch_matmul``) against LiteRT's kernels: each kernel set's handler gives the
interpreter's integers, with either operand transposed and on grids with and without a zero point. The output
grids put many products on rounding ties (power-of-two multipliers), where the rounding rules differ."""
import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels.runtime import KERNELS
from qresearch.kernels.tflite_ops import OpCall

from litert_graphs import grid, litert_interpreter

B, M, K, N = 2, 16, 16, 12
SYMMETRIC, SHIFTED = (-1.0, 127 / 128), (-0.5, 1.5)   # zero point 0 / -64
# (kernel set emulated, LiteRT resolver)
SETS = [("tflite_builtin", "BUILTIN_WITHOUT_DEFAULT_DELEGATES"), ("tflite_reference", "BUILTIN_REF"),
        ("xnnpack", "BUILTIN")]


def _litert(ra, rb, ro, adj_y, resolver, qa, qb):
    fq = tf.quantization.fake_quant_with_min_max_vars

    @tf.function(input_signature=[tf.TensorSpec(qa.shape), tf.TensorSpec(qb.shape)])
    def graph(a, b):
        return fq(tf.linalg.matmul(fq(a, *ra), fq(b, *rb), transpose_b=adj_y), *ro)

    interpreter = litert_interpreter(graph, resolver)
    ops = [o["op_name"] for o in interpreter._get_ops_details()]
    assert ops[0] == "BATCH_MATMUL", ops
    first, second = interpreter.get_input_details()
    interpreter.set_tensor(first["index"], qa)
    interpreter.set_tensor(second["index"], qb)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    return (interpreter.get_tensor(out["index"]).astype(int),
            [first["quantization"], second["quantization"], out["quantization"]], "DELEGATE" in ops)


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("kernel_set, resolver", SETS, ids=[s for s, _ in SETS])
def test_batch_matmul_equals_litert(kernel_set, resolver):
    rng = np.random.default_rng(0)
    kernels = KERNELS.get(kernel_set)
    delegated = []
    for ra in (SYMMETRIC, SHIFTED):
        for rb in (SYMMETRIC, SHIFTED):
            for ro in ((-2.0, 127 / 64), (-3.0, 2.7)):   # a power-of-two multiplier (ties), and another
                for adj_y in (False, True):
                    qa = rng.integers(-128, 128, (B, M, K)).astype(np.int8)
                    qb = rng.integers(-128, 128, (B, N, K) if adj_y else (B, K, N)).astype(np.int8)
                    got, (ga, gb, go), was = _litert(ra, rb, ro, adj_y, resolver, qa, qb)
                    delegated.append(was)
                    xa = tf.constant((qa.astype(np.float32) - ga[1]) * np.float32(ga[0]))
                    xb = tf.constant((qb.astype(np.float32) - gb[1]) * np.float32(gb[0]))
                    call = OpCall([xa, xb], [grid(*ga), grid(*gb)], grid(*go), attrs={"adj_x": False, "adj_y": adj_y})
                    y = kernels.handler("BATCH_MATMUL")(kernels, call).numpy()
                    emulated = np.round(y / np.float32(go[0])).astype(int) + go[1]
                    np.testing.assert_array_equal(emulated, got, err_msg=f"{ra} {rb} {ro} adj_y={adj_y}")
    # XNNPACK takes the op where the second operand's zero point is 0, and leaves it to the builtin kernel elsewhere
    assert any(delegated) == (kernel_set == "xnnpack") and not all(delegated)
