"""Sensitivity: Hutchinson's trace against the exact Hessian; measured and Hessian scores behave;
search end to end on a trained tiny model."""
import numpy as np
import pytest

import qresearch
from qresearch import keras, tf
from qresearch.data import load_dataset
from qresearch.models import build_model
from qresearch.mixed import (compute_layers, hessian_sensitivity, hutchinson_traces, qat_cost, search,
                             sensitivity)
from qresearch.mixed.sensitivity import quantize_weights

L = keras.layers


def test_hutchinson_matches_the_exact_trace():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    h = L.Dense(4, activation="tanh", name="a")(inp)
    model = keras.Model(inp, L.Dense(3, name="b")(h))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 3, 64).astype("int32")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    exact = {}
    for layer in ("a", "b"):   # the block's Hessian, formed entry by entry: Tr = sum_i d2L/dw_i^2
        k = model.get_layer(layer).kernel
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = loss_fn(y, model(x))
            g = tf.reshape(inner.gradient(loss, k), [-1])
        hess = outer.jacobian(g, k)
        exact[layer] = float(np.trace(np.reshape(hess.numpy(), (g.shape[0], -1))))
    est = hutchinson_traces(model, (x, y), samples=400, batch_size=64, loss_fn=loss_fn)
    for layer in ("a", "b"):
        assert est[layer]["n"] == model.get_layer(layer).kernel.shape.num_elements()
        assert abs(est[layer]["trace"] - exact[layer]) <= 4 * est[layer]["std_error"] + 1e-6, (layer, est, exact)


def test_weight_quantizer_by_hand():
    w = np.array([[0.5, -1.0], [0.26, 0.1]], "float32")
    # 3 bits: qmax = 3, s = 1/3 per tensor; round(w / s) = [2, -3; 1, 0]
    np.testing.assert_allclose(quantize_weights(w, 3), np.array([[2, -3], [1, 0]]) / 3, rtol=1e-6)
    # per output channel (last axis): s = [0.5/3, 1/3]
    np.testing.assert_allclose(quantize_weights(w, 3, per_channel=True),
                               np.array([[3 * 0.5 / 3, -1.0], [2 * 0.5 / 3, 0.0]]), rtol=1e-6)


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    ds = load_dataset({"name": "digits"})
    model = build_model({"name": "lenet5"}, ds.x_train.shape[1:], 10)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(ds.x_train, ds.y_train, epochs=6, batch_size=64, verbose=0)
    return model, ds


def test_measured_sensitivity_two_bits_hurts_more_than_eight(trained):
    model, ds = trained
    data = (ds.x_train[:256], ds.y_train[:256])
    s = sensitivity(model, data, "minmax_nbit", bits=(8, 2), calibration_data=ds.x_train[:256])
    assert s["float"]["accuracy"] > 0.8
    names = [c.name for c in compute_layers(model)]
    assert set(s["scores"]) == set(names)
    for n in names:   # 8 bits is nearly free; 2 bits costs loss on every layer
        assert abs(s["scores"][n][8]) < 0.05
        assert s["scores"][n][2] > s["scores"][n][8]
    assert sum(s["accuracy_drop"][n][2] for n in names) > sum(s["accuracy_drop"][n][8] for n in names) + 5


def test_hessian_scores_fall_with_bits(trained):
    model, ds = trained
    h = hessian_sensitivity(model, (ds.x_train, ds.y_train), "lsq", bits=(8, 4, 3, 2), samples=8)
    for n, by_bits in h["scores"].items():
        assert by_bits[2] >= by_bits[3] >= by_bits[4] >= by_bits[8] >= 0, n
    assert any(t["trace"] > 0 for t in h["traces"].values())


@pytest.mark.parametrize("budget", [{"bops": 0.4}, {"memory": 0.4}])
def test_search_end_to_end(trained, budget):
    model, ds = trained
    out = search(model, (ds.x_train[:256], ds.y_train[:256]), "minmax_nbit", budget, bits=(8, 4, 2),
                 method="hessian", samples=4)
    kind, frac = next(iter(budget.items()))
    total = {"bops": "bops", "memory": "weight_bits"}[kind]
    assert out["allocation"]["feasible"] and out["allocation"]["solver"] == "milp"
    assert out["cost"]["totals"][total] <= frac * out["reference"]["totals"][total]
    names = [c.name for c in compute_layers(model)]
    assert out["widths"][names[0]] == 8 and out["widths"][names[-1]] == 8   # minmax_nbit: first_last_bits 8
    q = qresearch.quantize(model, out["scheme"], calibration_data=ds.x_train[:64])
    assert qat_cost(model, q)["totals"] == out["cost"]["totals"]


def test_target_limits_the_widths(trained):
    model, ds = trained
    target = qresearch.hardware.Target.from_dict({"name": "w84", "weights": {"bits": [4, 8]},
                                                  "activations": {"bits": [2, 4, 8]}})
    out = search(model, (ds.x_train[:128], ds.y_train[:128]), "lsq", {"bops": 0.3}, bits=(8, 4, 2),
                 target=target, method="hessian", samples=2, fixed={})
    assert set(out["widths"].values()) <= {8, 4}
    # a layer's width is its weights' and its input's: a W4A8-only target leaves no common width
    with pytest.raises(qresearch.ConfigError, match="none of the candidate widths"):
        search(model, (ds.x_train[:128], ds.y_train[:128]), "lsq", {"bops": 0.5}, target="npu_w4a8",
               method="hessian", samples=2)


def test_a_memory_budget_lowers_an_embeddings_table():
    """A token model whose Embedding table holds most of its weights: a memory budget of 0.45 of 8 bits can only
    be met with the table below 8 bits, and the quantized model realises the priced widths."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 400, (128, 10))
    labels = (ids[:, 0] % 2).astype("int32")
    inp = keras.Input((10,), dtype="int32")
    h = keras.layers.Conv1D(4, 3, name="conv")(keras.layers.Embedding(400, 8, name="embed")(inp))
    model = keras.Model(inp, keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(h)))
    out = search(model, (ids, labels), "minmax_nbit", {"memory": 0.45}, bits=(8, 4, 2), method="hessian",
                 samples=2, fixed={})
    assert out["allocation"]["feasible"]
    assert out["widths"]["embed"] < 8
    assert out["cost"]["totals"]["weight_bits"] <= 0.45 * out["reference"]["totals"]["weight_bits"]
    q = qresearch.quantize(model, out["scheme"], calibration_data=ids[:64])
    assert qat_cost(model, q)["totals"] == out["cost"]["totals"]
