"""Reports from synthetic result.json files: exact means and stds, failures listed, not averaged."""
import csv
import json
import statistics

import pytest

from qresearch import report
from qresearch.results import write_json_atomic


def _record(path, algorithm, bits, seed, qat, ptq, flt, target="academic", status="completed", lr=0.001,
            error=None, chash=None):
    write_json_atomic(path / "result.json", {
        "status": status, "config_hash": chash or f"{algorithm}-{bits}-{seed}-{target}-{lr}",
        "config": {"seed": seed, "bits": bits, "scheme": {"weights": {"bits": bits}}, "training": {"qat": {"lr": lr}}},
        "labels": {"dataset": "digits", "model": "mlp", "algorithm": algorithm, "target": target,
                   "weight_bits": bits, "activation_bits": bits, "seed": seed},
        "metrics": {"qat_accuracy": qat, "ptq_accuracy": ptq, "float_accuracy": flt,
                    "deployed_accuracy": qat if target == "tflite_int8" else None},
        "float_baseline": {"key": f"base{seed}"}, "times": {"total_s": 1.0}, "error": error,
        "finished_at": f"2026-01-01T00:00:0{seed}"})


@pytest.fixture
def sweep(tmp_path):
    vals = {}
    for alg in ("lsq", "pact"):
        for bits in (8, 4):
            for seed in (0, 1, 2):
                q = 0.9 - 0.01 * seed - (0.1 if bits == 4 else 0) - (0.05 if alg == "pact" else 0)
                vals[(alg, bits, seed)] = q
                _record(tmp_path / f"{alg}-{bits}-{seed}", alg, bits, seed, q, q - 0.2, 0.95 - 0.01 * seed)
    _record(tmp_path / "tfl", "lsq", 8, 0, 0.91, 0.9, 0.95, target="tflite_int8")
    _record(tmp_path / "bad", "lsq", 2, 0, None, None, None, status="failed",
            error={"type": "NaNLossError", "message": "qat training: loss became nan", "stage": "qat"})
    _record(tmp_path / "copy", "lsq", 8, 0, vals[("lsq", 8, 0)], 0.7, 0.95, chash="lsq-8-0-academic-0.001")
    _record(tmp_path / "lr", "lsq", 4, 0, 0.5, 0.4, 0.95, lr=0.1)
    return tmp_path, vals


def test_table_numbers(sweep):
    path, vals = sweep
    rep = report.make_report([path], quiet=True)
    assert len(rep["failed"]) == 1 and rep["duplicates"] == 1
    academic = next(t for t in rep["tables"] if t["target"] == "academic")
    assert academic["columns"] == [(8, 8), (4, 4)] and academic["seeds"] == 3
    rows = {r["name"]: r for r in academic["rows"]}
    lsq = rows["lsq[training.qat.lr=0.001]"]["cells"][(4, 4)]
    expected = [vals[("lsq", 4, s)] for s in range(3)]
    assert lsq[0] == pytest.approx(statistics.fmean(expected))
    assert lsq[1] == pytest.approx(statistics.stdev(expected)) and lsq[2] == 3
    assert rows["pact"]["cells"][(8, 8)][0] == pytest.approx(statistics.fmean(vals[("pact", 8, s)] for s in range(3)))
    assert rows["pact (PTQ)"]["cells"][(8, 8)][0] == pytest.approx(
        statistics.fmean(vals[("pact", 8, s)] - 0.2 for s in range(3)))
    assert rows["float (reference)"]["cells"][(4, 4)][0] == pytest.approx(0.94)
    # the run with another learning rate is its own line, not averaged into lsq
    assert rows["lsq[training.qat.lr=0.1]"]["cells"][(4, 4)] == (0.5, 0.0, 1)
    tfl = next(t for t in rep["tables"] if t["target"] == "tflite_int8")
    assert any(r["kind"] == "deployed" for r in tfl["rows"])


def test_outputs(sweep):
    path, _ = sweep
    rep = report.make_report([path], out=path / "rep", quiet=True)
    md = (path / "rep" / "report.md").read_text()
    assert "target `academic`" in md and "target `tflite_int8`" in md
    assert "79.00 ± 1.00" in md  # lsq at 4 bits: 0.80, 0.79, 0.78
    assert "Failed runs (1; not averaged)" in md and "NaNLossError" in md
    rows = list(csv.DictReader(open(path / "rep" / "results.csv")))
    assert len(rows) == len(rep["rows"]) == 15
    assert sum(r["status"] == "failed" for r in rows) == 1
    assert (path / "rep" / "accuracy_vs_bits.png").stat().st_size > 5000


def test_cli(sweep, capsys):
    path, _ = sweep
    assert report.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| algorithm |" in out and "accuracy_vs_bits.png" in out
    assert report.main([str(path / "missing")]) == 2


def test_failed_run_keeps_the_reason_of_a_multi_line_error(tmp_path):
    # hardware.constrain's errors put the reason on the lines after "(1 conflict):"
    msg = ("scheme is incompatible with hardware target 'academic' (1 conflict):\n"
           "  - weights: quantizer 'pot': scale_format must be 'pot', got 'float32'")
    _record(tmp_path / "ok", "lsq", 8, 0, 0.9, 0.8, 0.95)
    _record(tmp_path / "pot", "pot", 8, 0, None, None, None, status="failed",
            error={"type": "IncompatibleTargetError", "message": msg, "stage": "setup"})
    report.make_report([tmp_path], quiet=True)
    md = (tmp_path / "report.md").read_text()
    line = next(li for li in md.splitlines() if "IncompatibleTargetError" in li)
    assert "scale_format must be 'pot', got 'float32'" in line and "(1 conflict): - weights:" in line


def test_cli_without_results_says_where_they_are_and_writes_nothing(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 1
    assert "no result.json" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_runs_from_several_code_versions_are_flagged(tmp_path):
    from qresearch.results import write_json_atomic as w
    import json

    for i, commit in enumerate(("a" * 40, "b" * 40)):
        _record(tmp_path / f"r{i}", "lsq", 8, i, 0.9, 0.8, 0.95)
        rec = json.loads((tmp_path / f"r{i}" / "result.json").read_text())
        rec["versions"] = {"git_commit": commit, "git_dirty": "false"}
        w(tmp_path / f"r{i}" / "result.json", rec)
    rep = report.make_report([tmp_path], quiet=True)
    assert "2 code versions (aaaaaaaaaaaa, bbbbbbbbbbbb" in rep["markdown"].read_text()
    assert {r["git_commit"] for r in csv.DictReader(open(rep["csv"]))} == {"a" * 12, "b" * 12}


def test_float_row_per_float_baseline_and_failed_runs_do_not_relabel(tmp_path):
    import json

    from qresearch.results import write_json_atomic as w

    def rec(name, qat, flt, base, status="completed", epochs=10, lr=0.001):
        _record(tmp_path / name, "lsq", 4, 0, qat, qat, flt, status=status, lr=lr,
                error=None if status == "completed" else {"type": "ConfigError", "message": "bad", "stage": "setup"})
        r = json.loads((tmp_path / name / "result.json").read_text())
        r["config"]["training"]["float"] = {"epochs": epochs}
        r["float_baseline"] = {"key": base}
        r["config_hash"] = name
        w(tmp_path / name / "result.json", r)

    rec("e10", 0.8, 0.9, "b10")
    rec("e1", 0.3, 0.2, "b1", epochs=1)
    rec("bad", None, None, None, status="failed", lr=-1.0)
    rep = report.make_report([tmp_path], quiet=True)
    (table,) = rep["tables"]
    floats = {r["name"]: r["cells"][(4, 4)][0] for r in table["rows"] if r["kind"] == "float"}
    # two float models for seed 0: a row each, never their mean (0.55)
    assert floats == {"float (reference) for lsq[training.float.epochs=1]": pytest.approx(0.2),
                      "float (reference) for lsq[training.float.epochs=10]": pytest.approx(0.9)}
    # the failed run's lr=-1 names only its own line
    assert {r["variant"] for r in rep["completed"]} == {"lsq[training.float.epochs=1]", "lsq[training.float.epochs=10]"}
    assert rep["failed"][0]["variant"] == "lsq[training.float.epochs=10,training.qat.lr=-1.0]"


def test_cli_wandb_logs_the_report_in_the_sweeps_group(sweep, capsys, monkeypatch):
    from qresearch import logger as qlog

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    path, _ = sweep
    assert report.main([str(path), "--wandb", "--wandb-mode", "offline", "--wandb-group", "grid"]) == 0
    assert "report logged in group 'grid'" in capsys.readouterr().out
    (f,) = qlog.find_wandb_files(path / "wandb")
    run = qlog.read_wandb_run(f)
    assert run["run"]["group"] == "grid" and run["run"]["job_type"] == "report" and run["exit_code"] == 0
    (row,) = run["history"]
    assert row["report/runs/_type"] == "table-file" and row["report/runs/nrows"] == 15
    # the accuracy table: one row per (table row x bit-width column) of report.md
    rep = report.make_report([path], out=path / "again", quiet=True)
    assert row["report/accuracy/nrows"] == len(report.summary_rows(rep["tables"]))
    assert row["report/accuracy_vs_bits/_type"] == "image-file"
    results = [a for a in run["artifacts"] if a["type"] == "results"]
    assert results and sorted(results[0]["files"]) == ["report.md", "results.csv"]
    assert run["summary"]["completed"] == 14 and run["summary"]["failed"] == 1


def test_summary_rows_are_the_table_cells(sweep):
    path, _ = sweep
    rep = report.make_report([path], out=path / "rep", quiet=True)
    rows = report.summary_rows(rep["tables"])
    lsq4 = [r for r in rows if r["row"] == "lsq[training.qat.lr=0.001]" and r["weight_bits"] == 4 and r["target"] == "academic"]
    assert len(lsq4) == 1 and lsq4[0]["accuracy_mean"] == pytest.approx(0.79) and lsq4[0]["seeds"] == 3


def test_cost_panels_put_mixed_and_uniform_runs_together(tmp_path, capsys, monkeypatch):
    from qresearch import logger as qlog

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    points = {"w4": (4, None, 0.25, 0.50, 0.90), "w3": (3, None, 0.14, 0.40, 0.80),
              "mx": (None, "bops=0.14", 0.138, 0.37, 0.86)}   # the mixed run: no one width, cheaper and better
    for name, (bits, budget, bops, mem, acc) in points.items():
        for seed in (0, 1):
            _record(tmp_path / f"{name}-{seed}", "lsq", bits, seed, acc + 0.01 * seed, acc - 0.1, 0.95,
                    chash=f"{name}-{seed}")
            rec = tmp_path / f"{name}-{seed}" / "result.json"
            d = json.loads(rec.read_text())
            d["labels"]["mixed_budget"] = budget
            d["metrics"].update(bops_ratio=bops, weight_bits_ratio=mem)
            if budget:
                d["config"]["mixed"] = {"budget": {"bops": 0.14}, "bits": [8, 4, 3, 2]}
            write_json_atomic(rec, d)
    assert report.main([str(tmp_path), "--wandb", "--wandb-mode", "offline", "--x", "bops"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| lsq | bops=0.14 | 0.1380 | 86.50 ± 0.71 | 2 | ★ |" in md and "| lsq | W3A3 | 0.1400 |" in md
    assert "accuracy vs weight_memory" not in md and (tmp_path / "pareto_bops.png").stat().st_size > 5000
    rep = report.make_report([tmp_path], out=tmp_path / "again", quiet=True)
    assert [t["columns"] for t in rep["tables"]] == [[(4, 4), (3, 3)]]   # the bit-width table: uniform runs only
    assert {r["variant"] for r in rep["completed"]} == {"lsq"}          # mixed.* settings label mixed runs only
    (f,) = qlog.find_wandb_files(tmp_path / "wandb")
    assert qlog.read_wandb_run(f)["history"][0]["report/pareto_bops/_type"] == "image-file"
    assert report.main([str(tmp_path), "--x", "flops"]) == 2 and "unknown cost axis 'flops'" in capsys.readouterr().err
