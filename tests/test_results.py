"""The results store: atomic result.json, JSONL appends, resume lookups."""
import json
import math
import multiprocessing as mp

from qresearch import results


def test_atomic_write_replaces_and_cleans(tmp_path):
    p = tmp_path / "a" / "result.json"
    results.write_json_atomic(p, {"x": 1, "nan": math.nan, "nested": {"inf": math.inf}})
    results.write_json_atomic(p, {"x": 2, "nan": math.nan})
    data = json.loads(p.read_text())  # strict JSON: NaN written as null
    assert data == {"x": 2, "nan": None}
    assert [f.name for f in p.parent.iterdir()] == ["result.json"]  # no temp files left


def _append(args):
    path, i = args
    results.append_jsonl(path, {"i": i, "pad": "x" * 5000})


def test_jsonl_appends_from_processes(tmp_path):
    path = tmp_path / "results.jsonl"
    with mp.get_context("fork").Pool(2) as pool:
        pool.map(_append, [(str(path), i) for i in range(40)])
    rows = list(results.iter_jsonl(path))
    assert sorted(r["i"] for r in rows) == list(range(40))


def test_completed_result_needs_same_hash_and_status(tmp_path):
    results.write_json_atomic(tmp_path / "result.json", {"status": "completed", "config_hash": "abc"})
    assert results.completed_result(tmp_path, "abc")
    assert results.completed_result(tmp_path, "abd") is None
    results.write_json_atomic(tmp_path / "result.json", {"status": "running", "config_hash": "abc"})
    assert results.completed_result(tmp_path, "abc") is None
    (tmp_path / "result.json").write_text("{truncated")
    assert results.completed_result(tmp_path, "abc") is None


def test_find_and_load(tmp_path):
    for i in range(3):
        results.write_json_atomic(tmp_path / f"job{i}" / "result.json", {"status": "completed", "i": i})
    recs = results.load_results([tmp_path, tmp_path / "job0" / "result.json"])
    assert sorted(r["i"] for r in recs) == [0, 1, 2]
    assert all(r["_path"].endswith("result.json") for r in recs)
