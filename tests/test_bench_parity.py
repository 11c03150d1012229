"""benchmarks/parity.py: its random models hold the blocks they name, and one of them goes through quantize,
convert and verify to a JSON report whose rows say bit-exact."""
import json

from qresearch._compat import keras

from benchmarks.parity import BLOCKS, main, random_model, summary

#: the Keras layer each block adds (the stem and head add Conv2D, Dense and pooling to every model)
MARKS = {"depthwise": keras.layers.DepthwiseConv2D, "separable": keras.layers.SeparableConv2D,
         "residual": keras.layers.Add, "concat": keras.layers.Concatenate, "squeeze_excite": keras.layers.Multiply,
         "conv_bn_act": keras.layers.BatchNormalization}


def test_random_models_hold_the_blocks_they_name():
    seen = set()
    for seed in range(4):
        model, names = random_model(seed)
        assert names and set(names) <= set(BLOCKS)
        for name in names:
            if name in MARKS:
                assert any(isinstance(layer, MARKS[name]) for layer in model.layers), (seed, name)
        seen.update(names)
    assert len(seen) >= 4       # the draw varies


def test_a_random_model_deploys_bit_exact_and_is_reported(tmp_path):
    report = main(["--seeds", "3", "--kernels", "builtin_without_default_delegates", "--out", str(tmp_path)])
    (row,) = report["results"]
    assert "error" not in row and row["integer_only"]
    assert row["max_lsb"] == 0.0 and row["argmax"] == 1.0
    written = json.loads(next(tmp_path.glob("parity-*.json")).read_text())
    assert written["summary"]["builtin_without_default_delegates"]["bit_exact"] == 1


def test_the_summary_counts_refusals_and_errors_apart_from_measured_rows():
    rows = [{"model": "a", "kernels": "builtin", "max_lsb": 0.0}, {"model": "b", "kernels": "builtin", "max_lsb": 2.0},
            {"model": "c", "kernels": "builtin", "refused": "XNNPACK ..."}, {"model": "d", "kernels": "-", "error": "x"}]
    out = summary(rows)
    assert out["errors"] == ["d"]
    assert out["builtin"] == {"models": 2, "refused": ["c"], "bit_exact": 1, "worst": "b", "worst_lsb": 2.0}
