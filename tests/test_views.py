"""qresearch.views: accuracy against accumulator width and targets compared, from hand-made result records
through the real report (matplotlib, report.md)."""
import json

import pytest

from qresearch import views
from qresearch.report import make_report


def _record(path, target, variant, seed, qat, w=8, a=8, acc_bits=None, fq=None, overflow=None, ptq=None,
            deployed=None, float_acc=0.95):
    labels = {"dataset": "d", "model": "m", "target": target, "algorithm": variant, "variant": variant,
              "weight_bits": w, "activation_bits": a, "seed": seed}
    if acc_bits is not None:
        labels["accumulator_bits"] = acc_bits
    rec = {"status": "completed", "config_hash": f"{target}-{variant}-{seed}-{w}-{acc_bits}", "labels": labels,
           "metrics": {"float_accuracy": float_acc, "ptq_accuracy": ptq, "qat_accuracy": qat,
                       "deployed_accuracy": deployed, "qat_fakequant_accuracy": fq,
                       "accumulator_overflow_fraction": overflow},
           "config": {"seed": seed}, "finished_at": "2026-12-02T00:00:00"}
    path.mkdir(parents=True)
    (path / "result.json").write_text(json.dumps(rec))


def test_accuracy_against_accumulator_width(tmp_path):
    for i, (acc, qat, over) in enumerate([(12, 0.30, 0.6), (16, 0.80, 0.05), (32, 0.90, 0.0)]):
        for seed in (0, 1):
            _record(tmp_path / f"r{i}{seed}", "npu", "minmax", seed, qat + 0.01 * seed, acc_bits=acc,
                    fq=0.91, overflow=over)
    _record(tmp_path / "lsq16", "npu", "lsq", 0, 0.85, acc_bits=16, fq=0.9, overflow=0.01)
    rep = make_report([tmp_path], quiet=True)
    (view,) = [v for v in rep["views"] if v["view"] == "accumulator"]
    by_variant = view["panels"][("d", "m", "npu")]
    assert sorted(by_variant["minmax"]) == [12, 16, 32]
    mean, std, n = by_variant["minmax"][16]["qat"]
    assert mean == pytest.approx(0.805) and std == pytest.approx(0.00707, 1e-3) and n == 2
    assert "| minmax | 30.50 ± 0.71 (n=2) [fq 91.00 ± 0.00 (n=2); overflow 60.0%]" in view["markdown"]
    assert view["plot"].stat().st_size > 10000
    # the bit-width tables keep the widths apart: one table per accumulator width, none averaging over them
    assert sorted(t["target"] for t in rep["tables"]) == ["npu acc12", "npu acc16", "npu acc32"]
    assert "accuracy_vs_accumulator_bits.png" in rep["markdown"].read_text()


def test_one_width_draws_no_accumulator_panel(tmp_path):
    _record(tmp_path / "a", "npu", "minmax", 0, 0.9, acc_bits=16)
    assert views.accumulator_panels(make_report([tmp_path], quiet=True)["rows"]) == {}


def test_targets_compared_in_one_table_and_panel(tmp_path):
    for seed in (0, 1):
        _record(tmp_path / f"t8{seed}", "tflite_int8", "minmax", seed, 0.93 + 0.01 * seed, ptq=0.92, deployed=0.93)
        _record(tmp_path / f"n{seed}", "npu_w4a8", "minmax", seed, 0.88, w=4, a=8, ptq=0.6)
        _record(tmp_path / f"l{seed}", "npu_w4a8", "lsq", seed, 0.90, w=4, a=8)
    rep = make_report([tmp_path], quiet=True)
    (view,) = [v for v in rep["views"] if v["view"] == "targets"]
    t = view["tables"][("d", "m")]
    assert t["targets"] == ["npu_w4a8", "tflite_int8"] and t["variants"] == ["lsq", "minmax"]
    assert t["float"][0] == pytest.approx(0.95)
    md = view["markdown"]
    assert "| minmax | QAT | 88.00 ± 0.00 (n=2) [W4A8] | 93.50 ± 0.71 (n=2) [W8A8] |" in md
    assert "| minmax | deployed | – | 93.00 ± 0.00 (n=2) [W8A8] |" in md
    assert "| lsq | QAT | 90.00 ± 0.00 (n=2) [W4A8] | – |" in md
    assert view["plot"].stat().st_size > 10000


def test_one_target_draws_no_cross_target_view(tmp_path):
    _record(tmp_path / "a", "tflite_int8", "minmax", 0, 0.9)
    assert views.target_tables(make_report([tmp_path], quiet=True)["rows"]) == {}
