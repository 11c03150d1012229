"""qresearch.mixed.describe: the schemes' report of a QAT model with its cost at the widths it really has."""
import numpy as np

import qresearch
from qresearch import keras, mixed

L = keras.layers


def test_describe_adds_the_cost_table():
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = L.Flatten()(x)
    x = L.Dense(16, activation="relu", name="hidden")(x)
    model = keras.Model(inp, L.Dense(10, name="logits")(x))
    scheme = mixed.to_scheme("lsq", {"conv": 8, "hidden": 3, "logits": 8}, model)
    qat = qresearch.quantize(model, scheme, calibration_data=np.random.default_rng(0).random((16, 8, 8, 1)))
    rep = mixed.describe(qat, model)
    # lsq quantizes what each compute layer reads, at that layer's width (quantize_ops: inputs)
    assert rep["cost"]["totals"] == mixed.cost(model, {"conv": 8, "hidden": 3, "logits": 8}, own_inputs=True)["totals"]
    assert rep["cost_reference"] == mixed.cost(model)["totals"]
    # conv: 6x6x4 outputs x 3x3x1 at W8A8; hidden: 144 x 16 at W3A3; logits: 16 x 10 at W8A8
    assert rep["cost"]["totals"]["bops"] == 6 * 6 * 4 * 9 * 64 + 144 * 16 * 3 * 3 + 160 * 8 * 8
    text = str(rep)
    assert "cost (cost model" in text and "hidden" in text.split("cost (cost model")[1]
    assert "of the all-8-bit cost: bops" in text and "weight memory:" in text  # the schemes' report stays
