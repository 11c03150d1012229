"""``grid_of`` gives the scale and zero point the TFLite converter stores for a FakeQuant range, checked against the
converter itself on ranges whose zero point sits on or near a rounding tie."""
import re

import numpy as np

from qresearch import tf
from qresearch.kernels.grid import grid_of

from litert_graphs import litert_interpreter


def _ranges():
    rng = np.random.default_rng(0)
    half = rng.uniform(0.001, 10.0, 40).astype(np.float32)
    symmetric = [(-a, a) for a in half]              # zero point -0.5 on the signed grid: a tie either way
    near = [(-a * np.float32(128 / 127), a) for a in half[:8]]      # zero point near 0, no tie
    skewed = [(-a * np.float32(0.3), a) for a in half[8:16]]        # an ordinary asymmetric range
    dead = [(0.0, 0.0), (-1e-8, 1e-8)]                # under NARROWEST: the converter's own centred range
    return [(float(lo), float(hi)) for lo, hi in symmetric + near + skewed + dead]


def test_grid_of_gives_the_converters_scale_and_zero_point():
    ranges = _ranges()
    fq = tf.quantization.fake_quant_with_min_max_vars

    @tf.function(input_signature=[tf.TensorSpec((1, 4))])
    def graph(x):
        x = fq(x, -1.0, 1.0)
        return [fq(tf.nn.relu(x) * 0.5 + x, lo, hi) for lo, hi in ranges]

    interpreter = litert_interpreter(graph)
    # each output is named after its FakeQuant: FakeQuantWithMinMaxVars_<k> is range k - 1 (the input's is _0)
    number = {d["index"]: int(re.match(r"FakeQuantWithMinMaxVars_(\d+)", d["name"]).group(1))
              for d in interpreter.get_output_details()}
    outputs = [d["quantization"] for d in sorted(interpreter.get_output_details(), key=lambda d: number[d["index"]])]
    found = [(float(np.float32(g.scale)), int(g.zero_point))
             for g in (grid_of(tf.constant(lo), tf.constant(hi), 8, False) for lo, hi in ranges)]
    expected = [(float(np.float32(s)), int(z)) for s, z in outputs]
    assert found == expected
    zero_points = {z for (_, z), (lo, hi) in zip(expected, ranges) if lo == -hi and hi > 1e-6}
    assert zero_points == {0, -1}     # the data has ties going either way
