"""int8 HARD_SWISH (``kernels.hard_swish``) against LiteRT's kernels: every int8 input on grids whose multipliers take
each branch of the kernel (left shifts that saturate, a right shift, input ranges far from [-3, 3])."""
import numpy as np
import pytest

from qresearch import tf
from qresearch.kernels.hard_swish import hard_swish, hard_swish_table

from litert_graphs import grid, int8_model, litert_interpreter

RESOLVERS = ["BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF", "BUILTIN"]
#: (input range, output range): wide inputs (the relu-ish multiplier's left shifts, saturating), narrow ones (its right
#: shift), outputs narrower than the function's values (clamped), a range with the zero point at an end
RANGES = [((-6.0, 6.0), (-0.375, 6.0)), ((-1.0, 1.0), (-0.4, 1.0)), ((-100.0, 50.0), (-1.0, 50.0)),
          ((-0.1, 0.1), (-0.1, 0.1)), ((-3.0, 2.0), (-0.375, 2.0)), ((-20.0, 30.0), (-0.4, 12.0)),
          ((0.0, 8.0), (0.0, 8.0)), ((-7.3, 0.2), (-0.38, 0.05))]


def _deployed(in_range, out_range):
    """Every int8 input (``-128..127``) through HARD_SWISH on each kernel set, and the op's input and output grids."""
    fq = tf.quantization.fake_quant_with_min_max_vars

    @tf.function(input_signature=[tf.TensorSpec((256,))])
    def graph(x):
        x = fq(x, *in_range)
        return fq(x * tf.nn.relu6(x + 3.0) / 6.0, *out_range)

    model = int8_model(graph)
    outputs = {}
    for resolver in RESOLVERS:
        interpreter = litert_interpreter(graph, resolver, model)
        assert [o["op_name"] for o in interpreter._get_ops_details()] == ["HARD_SWISH"]
        i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.set_tensor(i["index"], np.arange(-128, 128).astype(np.int8))
        interpreter.invoke()
        outputs[resolver] = interpreter.get_tensor(o["index"]).astype(int)
    return outputs, grid(*i["quantization"]), grid(*o["quantization"])


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
@pytest.mark.parametrize("in_range, out_range", RANGES, ids=[f"{a[0]}..{a[1]}" for a, _ in RANGES])
def test_hard_swish_equals_litert_on_every_int8_input(in_range, out_range):
    outputs, g_in, g_out = _deployed(in_range, out_range)
    table = hard_swish_table(g_in, g_out).numpy()
    for resolver, got in outputs.items():
        np.testing.assert_array_equal(table, got, err_msg=f"{resolver}, ranges {in_range} -> {out_range}")
    # the emulation's elementwise form reads the table at each input's offset, as handed on or from float values
    q = np.arange(-128, 128)
    x = tf.constant((q - g_in.zero_point.numpy()) * g_in.scale.numpy(), tf.float32)
    np.testing.assert_array_equal(hard_swish(x, g_in, g_out).numpy() + g_out.zero_point.numpy(), table)
    offsets = tf.constant(q - g_in.zero_point.numpy(), tf.float32)
    np.testing.assert_array_equal(hard_swish(x, g_in, g_out, offsets).numpy() + g_out.zero_point.numpy(), table)


def test_the_table_is_hard_swish_rounded_onto_the_output_grid_within_one_step():
    """The closed form ``x·relu6(x + 3)/6`` rounded onto the output grid: the kernel's 16-bit fixed point is within one
    step of it (its products truncate), and on most inputs equal."""
    g_in, g_out = grid(12.0 / 255, -1), grid(6.375 / 255, -113)
    x = (np.arange(-128, 128) - g_in.zero_point.numpy()) * g_in.scale.numpy()
    closed = np.clip(np.round(x * np.clip(x + 3, 0, 6) / 6 / g_out.scale.numpy()) + g_out.zero_point.numpy(),
                     -128, 127)
    table = hard_swish_table(g_in, g_out).numpy()
    assert np.abs(table - closed).max() <= 1 and (table == closed).mean() > 0.8
