"""The ``xnnpack`` kernel set against LiteRT's XNNPACK delegate (``OpResolverType.BUILTIN``), op by op: a FakeQuant
graph converted to int8, its integers read back from the interpreter, the emulation's integers compared.

Each test feeds inputs on which the rule before (or a near candidate) gives other integers, and checks that it does:
every int8 input (LEAKY_RELU, a concatenation's requantized input), every pair (ADD/SUB/MUL), fixed sizes and modes
(RESIZE_BILINEAR); MEAN on every sum of 49 values is in test_mean.py. Conv / fully connected outputs are requantized
in float32 (``fixed_point.float32_half_even``), which a fixed-point single rounding matches on all but about 1 output
in 10^5, so every pair of int8 inputs of a two-input conv is searched for the ones where the two part, and those run."""
import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels import KERNELS
from qresearch.kernels.fixed_point import quantize_multiplier, single_rounding
from qresearch.kernels.tflite_ops import add as builtin_add, leaky_relu as builtin_leaky_relu, \
    multiply as builtin_multiply, resize_bilinear as builtin_resize_bilinear, xnnpack_add, xnnpack_leaky_relu, \
    xnnpack_multiply, xnnpack_resize_bilinear

from litert_graphs import grid, int8_model, litert_interpreter

fq = tf.quantization.fake_quant_with_min_max_vars
CHANNELS = 64
PAIRS = 1024     # inputs run per op: the pairs where the rules part, then random ones
# Weight seeds whose integers have input pairs where the rules part (checked in the test): a dense layer has one
# weight scale, and most seeds' have none (seeds 0-11: only 1, with 68 pairs)
SEEDS = {"CONV_2D": 0, "FULLY_CONNECTED": 1}


def _graph(op, rng):
    """A two-input conv (1x1, per-channel weights) or dense (per-tensor weights) with a bias, on PAIRS rows."""
    w = rng.normal(0, 1, (2, CHANNELS)).astype(np.float32)
    b = rng.normal(0, 2, CHANNELS).astype(np.float32)
    if op == "CONV_2D":
        wmax = np.abs(w).max(axis=0)

        @tf.function(input_signature=[tf.TensorSpec((1, PAIRS, 1, 2))])
        def graph(x):
            k = tf.quantization.fake_quant_with_min_max_vars_per_channel(w[None, None], -wmax, wmax, narrow_range=True)
            return fq(tf.nn.conv2d(fq(x, -1.0, 2.0), k, 1, "SAME") + b, -3.0, 2.5)
    else:
        wmax = float(np.abs(w).max())

        @tf.function(input_signature=[tf.TensorSpec((PAIRS, 2))])
        def graph(x):
            return fq(tf.matmul(fq(x, -1.0, 2.0), fq(w, -wmax, wmax, narrow_range=True)) + b, -3.0, 2.5)
    return graph


def _stored(interpreter, op):
    """The op's integer weights (2, C), bias, input (S, Z), weight scales and output (S, Z), as the flatbuffer holds
    them (read from an interpreter without delegates: XNNPACK takes the tensors it runs)."""
    call = next(o for o in interpreter._get_ops_details() if o["op_name"] == op)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    x, w, b = call["inputs"]
    weights = interpreter.get_tensor(w).astype(np.int64).reshape(CHANNELS, 2).T
    w_scales = np.broadcast_to(np.float32(details[w]["quantization_parameters"]["scales"]), (CHANNELS,))
    return (weights, interpreter.get_tensor(b).astype(np.int64), details[x]["quantization"], w_scales,
            details[call["outputs"][0]]["quantization"])


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("op", ["CONV_2D", "FULLY_CONNECTED"])
def test_conv_and_dense_outputs_are_requantized_in_float32(op):
    rng = np.random.default_rng(SEEDS[op])
    graph = _graph(op, rng)
    model = int8_model(graph)
    weights, bias, (s_in, z_in), s_w, (s_out, z_out) = _stored(litert_interpreter(graph, model=model), op)
    a, b = (v.reshape(-1) for v in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij"))
    acc = (a[:, None] - z_in) * weights[0] + (b[:, None] - z_in) * weights[1] + bias   # every input pair, (65536, C)

    kernels = KERNELS.get("xnnpack")
    scales = [tf.constant(np.float64(np.float32(v))) for v in (s_in, s_w, s_out)]
    xnnpack = np.clip(kernels.rescale(tf.constant(acc), kernels.multiplier(*scales, op), op).numpy() + z_out, -128, 127)
    fixed, shift = quantize_multiplier(scales[0] * scales[1] / scales[2])
    single = np.clip(single_rounding(tf.constant(acc), fixed, shift).numpy() + z_out, -128, 127)
    parting = np.nonzero((xnnpack != single).any(axis=1))[0]
    assert 0 < len(parting) < PAIRS, len(parting)   # the data tells the two rules apart
    rows = np.concatenate([parting, rng.choice(np.setdiff1d(np.arange(len(a)), parting), PAIRS - len(parting),
                                               replace=False)])

    interpreter = litert_interpreter(graph, "BUILTIN", model=model)
    assert "DELEGATE" in [o["op_name"] for o in interpreter._get_ops_details()]   # XNNPACK ran it
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(i["index"], np.stack([a[rows], b[rows]], -1).astype(np.int8).reshape(i["shape"]))
    interpreter.invoke()
    got = interpreter.get_tensor(o["index"]).astype(np.int64).reshape(PAIRS, CHANNELS)
    np.testing.assert_array_equal(xnnpack[rows], got)
    assert (single[rows] != got).sum() >= len(parting)   # the fixed-point rule misses each of them


def test_float32_requantization_matches_numpy_over_the_int32_range():
    """float32(acc) rounds above 2^24; the product is float32, then rounded half to even (numpy as reference)."""
    rng = np.random.default_rng(5)
    acc = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 2000), rng.integers(-2 ** 25, 2 ** 25, 2000),
                          np.arange(-300, 300)]).astype(np.int64)
    kernels = KERNELS.get("xnnpack")
    for m in np.exp2(rng.uniform(-30, 2, 10)).tolist() + [0.5, 0.25]:   # 0.25 / 0.5: exact ties, to even
        got = kernels.rescale(tf.constant(acc), tf.constant(m, tf.float64)).numpy()
        want = np.rint(acc.astype(np.float32) * np.float32(m)).astype(np.int64)
        np.testing.assert_array_equal(got, want, err_msg=str(m))
    assert kernels.rescale(tf.constant([2, 6, -2, -6], tf.int64), tf.constant(0.25, tf.float64)).numpy().tolist() \
        == [0, 2, 0, -2]   # 0.5 -> 0, 1.5 -> 2: half to even


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("alpha, delegated", [(0.2, True), (1.5, True), (0.001, False)])
def test_leaky_relu_equals_xnnpack(alpha, delegated):
    """Every int8 input: XNNPACK's 8-bit multipliers where its operator takes the scales; with ``S_in/S_out·alpha``
    under 2^-8 (alpha 0.001 here) the delegate leaves the op to the builtin kernel, and so does the emulation."""
    @tf.function(input_signature=[tf.TensorSpec((1, 256))])
    def graph(x):
        return fq(tf.nn.leaky_relu(fq(x, -2.0, 3.0), alpha), -0.6, 3.0)

    interpreter = litert_interpreter(graph, "BUILTIN")
    assert ("DELEGATE" in [o["op_name"] for o in interpreter._get_ops_details()]) == delegated
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(i["index"], np.arange(-128, 128, dtype=np.int8)[None])
    interpreter.invoke()
    got = interpreter.get_tensor(o["index"])[0].astype(np.int64)
    g_in, g_out = grid(*i["quantization"]), grid(*o["quantization"])
    x = tf.constant((np.arange(-128, 128, dtype=np.float32) - i["quantization"][1]) * np.float32(g_in.scale.numpy()))

    def integers(y):
        return np.round(y.numpy() / np.float32(g_out.scale.numpy())).astype(np.int64) + o["quantization"][1]

    emulated = integers(xnnpack_leaky_relu(KERNELS.get("tflite_builtin"), x, alpha, g_in, g_out))
    builtin = integers(builtin_leaky_relu(KERNELS.get("tflite_builtin"), x, alpha, g_in, g_out))
    np.testing.assert_array_equal(emulated, got)
    assert (builtin != got).any() == delegated


RESIZES = [((4, 4), (8, 8), "half_pixel"), ((5, 7), (7, 12), "half_pixel"), ((6, 6), (4, 3), "half_pixel"),
           ((5, 5), (9, 9), "align_corners"), ((4, 6), (7, 9), "legacy")]


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("size_in, size_out, mode", RESIZES, ids=lambda v: str(v))
def test_resize_bilinear_equals_xnnpack(size_in, size_out, mode):
    """Up and down, half-pixel centers, align_corners and TF1's legacy positions: XNNPACK's 11-bit weights, where
    the builtin kernel's 10-bit ones (the set's rule before) give other integers."""
    @tf.function(input_signature=[tf.TensorSpec((8, *size_in, 4))])
    def graph(x):
        x = fq(x, -2.0, 3.0)
        if mode == "half_pixel":
            return fq(tf.image.resize(x, size_out, method="bilinear"), -2.0, 3.0)
        return fq(tf.compat.v1.image.resize_bilinear(x, size_out, align_corners=mode == "align_corners",
                                                     half_pixel_centers=False), -2.0, 3.0)

    interpreter = litert_interpreter(graph, "BUILTIN")
    assert "DELEGATE" in [o["op_name"] for o in interpreter._get_ops_details()]
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert i["quantization"] == o["quantization"]
    x = np.random.default_rng(0).integers(-128, 128, (8, *size_in, 4)).astype(np.int8)
    interpreter.set_tensor(i["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(o["index"]).astype(np.int64)
    g = grid(*i["quantization"])
    step = np.float32(g.scale.numpy())
    xf = tf.constant((x.astype(np.float32) - i["quantization"][1]) * step)
    args = (size_out, g, mode == "half_pixel", mode == "align_corners")

    def integers(y):
        return np.round(y.numpy() / step).astype(np.int64) + i["quantization"][1]

    np.testing.assert_array_equal(integers(xnnpack_resize_bilinear(xf, *args)), got)
    assert (integers(builtin_resize_bilinear(xf, *args)) != got).any()


# Ranges where the builtin kernels' two roundings part from XNNPACK's one on ~3% of the pairs (on others, e.g.
# (-2, 3), (-1, 1.5) -> (-3, 4), ADD and SUB agree everywhere)
BINARY = [("ADD", (0.0, 6.0), (-2.5, 2.5), (-2.0, 8.0), True), ("SUB", (0.0, 6.0), (-2.5, 2.5), (-2.0, 8.0), True),
          ("MUL", (0.0, 6.0), (-2.5, 2.5), (-2.0, 8.0), True),
          # S_2/S_out under 2^-10: XNNPACK's operator refuses it, the interpreter runs the builtin kernel
          ("ADD", (-2.0, 3.0), (-0.002, 0.002), (-3.0, 4.0), False)]


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("op, range1, range2, out_range, delegated", BINARY, ids=lambda v: str(v))
def test_add_sub_mul_equal_xnnpack(op, range1, range2, out_range, delegated):
    """Every pair of int8 inputs: XNNPACK's ADD/SUB (21-bit multipliers, one rounding) and MUL (float32), or the
    builtin kernel where the delegate leaves the op; the builtin kernel's rule gives other integers where XNNPACK
    runs it."""
    fn = {"ADD": tf.add, "SUB": tf.subtract, "MUL": tf.multiply}[op]

    @tf.function(input_signature=[tf.TensorSpec((1, 65536)), tf.TensorSpec((1, 65536))])
    def graph(a, b):
        return fq(fn(fq(a, *range1), fq(b, *range2)), *out_range)

    interpreter = litert_interpreter(graph, "BUILTIN")
    assert ("DELEGATE" in [o["op_name"] for o in interpreter._get_ops_details()]) == delegated
    inputs = sorted(interpreter.get_input_details(), key=lambda d: d["index"])
    pairs = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    for d, q in zip(inputs, pairs):
        interpreter.set_tensor(d["index"], q.reshape(1, -1).astype(np.int8))
    interpreter.invoke()
    o = interpreter.get_output_details()[0]
    got = interpreter.get_tensor(o["index"]).astype(np.int64)
    grids = [grid(*d["quantization"]) for d in inputs]
    xs = [tf.constant((q.reshape(1, -1).astype(np.float32) - d["quantization"][1]) * np.float32(g.scale.numpy()))
          for q, d, g in zip(pairs, inputs, grids)]
    g_out = grid(*o["quantization"])

    def integers(y):
        return np.round(y.numpy() / np.float32(g_out.scale.numpy())).astype(np.int64) + o["quantization"][1]

    builtin = KERNELS.get("tflite_builtin")
    xnnpack_fn, builtin_fn, fixed = {"ADD": (xnnpack_add, builtin_add, {}),
                                     "SUB": (xnnpack_add, builtin_add, {"subtract": True}),
                                     "MUL": (xnnpack_multiply, builtin_multiply, {})}[op]
    np.testing.assert_array_equal(integers(xnnpack_fn(builtin, *xs, *grids, g_out, **fixed)), got)
    assert (integers(builtin_fn(builtin, *xs, *grids, g_out, **fixed)) != got).any() == delegated


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("in_range, out_range, xnnpack_rule", [((-2.0, 3.0), (-1.7, 4.1), True),
                                                               ((-1.0, 0.5), (-3.0, 3.0), True),
                                                               ((-0.01, 0.01), (-3.0, 3.0), False)])
def test_a_concatenations_requantized_input_equals_xnnpack(in_range, out_range, xnnpack_rule):
    """A concatenation's input on another grid: the converter puts an int8 -> int8 QUANTIZE before it. Every input:
    XNNPACK's 8-bit multiplier; with ``S_in/S_out`` under 2^-8 (XNNPACK's operator refuses it) the builtin
    kernel's rounding."""
    @tf.function(input_signature=[tf.TensorSpec((1, 256)), tf.TensorSpec((1, 256))])
    def graph(x, other):
        return fq(tf.concat([fq(x, *in_range), fq(other, *out_range)], axis=-1), *out_range)

    interpreter = litert_interpreter(graph, "BUILTIN")
    names = [o["op_name"] for o in interpreter._get_ops_details()]
    assert names == ["QUANTIZE", "CONCATENATION", "DELEGATE"], names
    o = interpreter.get_output_details()[0]
    i = next(d for d in interpreter.get_input_details() if d["quantization"] != o["quantization"])
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], np.arange(-128, 128, dtype=np.int8)[None])
    interpreter.invoke()
    got = interpreter.get_tensor(o["index"])[0, :256].astype(np.int64)
    (s_in, z_in), (s_out, z_out) = i["quantization"], o["quantization"]
    offsets = tf.constant(np.arange(-128, 128) - z_in, tf.int64)
    ratio = tf.constant(float(np.float32(s_in)) / float(np.float32(s_out)), tf.float64)

    def requantized(kernel_set):
        return np.clip(KERNELS.get(kernel_set).rescale(offsets, ratio, "QUANTIZE").numpy() + z_out, -128, 127)

    np.testing.assert_array_equal(requantized("xnnpack"), got)
    assert (requantized("tflite_builtin") != got).any() == xnnpack_rule
