"""``make bench``'s step timing: how many interleaved rounds it runs; its memory runs combined; the models it
takes (benchmarks/__main__.py)."""
from benchmarks.__main__ import MAX_ROUNDS, MIN_ROUNDS, ROUND_BUDGET_S, more_rounds


def test_given_rounds_are_run_exactly_whatever_the_time():
    assert [more_rounds(done, 1e9, rounds=4) for done in range(6)] == [True] * 4 + [False] * 2
    assert more_rounds(0, 0.0, rounds=1) and not more_rounds(1, 0.0, rounds=1)


def test_a_cheap_model_gets_rounds_until_the_budget_is_spent_and_no_more_than_the_cap():
    per_round = ROUND_BUDGET_S / 10   # ten rounds fit the budget
    done = 0
    while more_rounds(done, done * per_round):
        done += 1
    assert done == 10
    done = 0
    while more_rounds(done, 0.0):   # rounds that cost nothing stop at the cap
        done += 1
    assert done == MAX_ROUNDS


def test_an_expensive_model_still_gets_the_minimum_of_rounds():
    done = 0
    while more_rounds(done, done * ROUND_BUDGET_S):   # one round alone spends the budget
        done += 1
    assert done == MIN_ROUNDS


def test_memory_runs_combine_to_the_median_ratio_and_its_range():
    from benchmarks.__main__ import combine_runs

    def run(float_peak, lsq_peak):
        return [{"name": "float", "peak_bytes": float_peak}, {"name": "lsq", "peak_bytes": lsq_peak}]

    rows = combine_runs([run(100, 150), run(80, 160), run(100, 170)])
    assert [r["name"] for r in rows] == ["float", "lsq"]
    assert rows[0]["ratio"] == 1.0 and rows[0]["peak_bytes"] == 100
    # per-run ratios 1.5, 2.0, 1.7 (each over its own float): the median and the range, not 160 / 100
    assert rows[1]["ratio"] == 1.7 and rows[1]["ratio_range"] == [1.5, 2.0] and rows[1]["peak_bytes"] == 160
    failed = combine_runs([run(100, None), run(100, 150)])[1]
    assert failed["ratio"] is None and failed["peak_bytes"] is None


def _held_out_builder(input_shape, num_classes):
    from qresearch._compat import keras

    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(num_classes, name="logits")(x))


def test_models_may_be_zoo_names_or_builders_not_in_the_project_with_their_input_shape():
    import pytest

    from benchmarks.__main__ import _fresh, parse_model_arg

    assert parse_model_arg("lenet5") == ("lenet5", (28, 28, 1))
    assert parse_model_arg("mobilenet_tiny") == ("mobilenet_tiny", (32, 32, 3))
    path = f"{__name__}._held_out_builder"
    assert parse_model_arg(path) == (path, (32, 32, 3))
    assert parse_model_arg(path + ":16x12x1") == (path, (16, 12, 1))
    model = _fresh(*parse_model_arg(path + ":16x12x1"))   # what every part of the bench builds
    assert model.input_shape == (None, 16, 12, 1) and model.output_shape == (None, 10)
    for bad in ("lenet5:28x28", "lenet5:axbxc", "lenet5:0x28x1"):
        with pytest.raises(SystemExit, match="HxWxC"):
            parse_model_arg(bad)
