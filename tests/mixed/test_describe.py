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
    assert rep["cost"]["totals"] == mixed.cost(model, {"conv": 8, "hidden": 3, "logits": 8})["totals"]
    assert rep["cost_reference"] == mixed.cost(model)["totals"]
    # conv: 6x6x4 outputs x 3x3x1 at W8A8; hidden: 144 x 16 at W3 on conv's 8-bit output; logits: 16 x 10 at
    # W8 on hidden's 3-bit output
    assert rep["cost"]["totals"]["bops"] == 6 * 6 * 4 * 9 * 64 + 144 * 16 * 3 * 8 + 160 * 8 * 3
    text = str(rep)
    assert "cost (cost model" in text and "hidden" in text.split("cost (cost model")[1]
    assert "of the all-8-bit cost: bops" in text and "weight memory:" in text  # the schemes' report stays
