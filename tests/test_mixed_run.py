"""Mixed precision through the runner: a real mixed run on digits (search, PTQ, QAT, result.json), the
cost of every run equal to the cost model computed directly, budget errors before any data, a target's
``costs:`` table in the run's cost, and the report's accuracy-vs-cost panel on real results."""
import json
import math
import os
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from qresearch import config as qconfig
from qresearch import hardware, mixed, models
from qresearch.config import experiment
from qresearch.errors import ConfigError
from qresearch.paths import CONF_DIR
from qresearch.report import make_report
from qresearch.run import run_job

# 64 -> 32 -> 32 -> 10: dense_0 and logits are first/last (held at 8 bits by lsq's first_last_bits),
# dense_1 is free. The runner's default target (academic) quantizes only what compute layers read
# (quantize_ops: inputs), each at its own width: BOPs = MACs x b x b. All-8-bit BOPs = (2048 + 1024 + 320) x 64;
# dense_1 at 2 bits gives (2048 x 64 + 1024 x 4 + 320 x 64) / (3392 x 64) = 0.717, at 4 bits 0.774.
FAST = ["dataset=digits", "model=mlp", "model.hidden=[32,32]", "training=fast", "dataset.train_samples=400",
        "dataset.test_samples=200", "logger=disabled"]
MIXED = ["scheme=mixed", "mixed.bits=[8,4,2]", "mixed.samples=64"]


def _compose(root, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=FAST + [
            f"paths.output_dir={root}/out", f"paths.cache_dir={root}/cache"] + list(overrides))


def _run(root, overrides):
    """One job; its result.json (the newest under root)."""
    cfg = _compose(root, overrides)
    run_job(cfg)
    files = sorted((root / "out" / "runs").rglob("result.json"), key=os.path.getmtime)
    return json.loads(files[-1].read_text()), cfg


def _own_inputs(rec) -> bool:
    """The run's scheme reads each layer's input at its own width (academic's quantize_ops: inputs)."""
    assert rec["scheme"]["quantize_ops"] == "inputs"
    return True


def _model(cfg):
    """The run's architecture (the cost model reads shapes only, not trained weights)."""
    exp = experiment(cfg)
    return models.build_model(exp.model, (8, 8, 1), 10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A mixed run at 0.75 of the 8-bit BOPs and a uniform lsq W4 run, sharing one float baseline."""
    root = tmp_path_factory.mktemp("mixed_runs")
    mixed_rec, mixed_cfg = _run(root, MIXED + ["mixed.budget.bops=0.75", "seed=1"])
    uniform_rec, uniform_cfg = _run(root, ["scheme=lsq", "bits=4", "seed=1"])
    return {"root": root, "mixed": (mixed_rec, mixed_cfg), "uniform": (uniform_rec, uniform_cfg)}


def test_mixed_run_records_its_choice_and_meets_the_budget(runs):
    rec, cfg = runs["mixed"]
    assert rec["status"] == "completed", rec["error"]
    m = rec["mixed"]
    assert m["budget"] == {"bops": 0.75} and m["bits"] == [8, 4, 2] and m["sensitivity_method"] == "measured"
    assert m["solver"] == "milp" and m["allocation"]["feasible"]
    assert m["widths"] == {"dense_0": 8, "dense_1": 2, "logits": 8}  # the only choice within 0.75 (see FAST)
    assert set(m["sensitivity"]) == {"dense_0", "dense_1", "logits"}
    assert rec["labels"]["mixed_budget"] == "bops=0.75" and rec["labels"]["algorithm"] == "lsq"
    assert rec["labels"]["weight_bits"] is None
    assert rec["metrics"]["bops_ratio"] <= 0.75
    assert rec["times"]["mixed_s"] > 0 and rec["float_baseline"]["cache"] == "miss"
    # the scheme PTQ/QAT used is the plain per-layer scheme: one override per compute layer
    assert [o["weights"]["bits"] for o in rec["scheme"]["overrides"]] == [8, 2, 8]


def test_cost_in_result_json_equals_the_cost_model(runs):
    rec, cfg = runs["mixed"]
    direct = mixed.cost(_model(cfg), rec["mixed"]["widths"], own_inputs=_own_inputs(rec))["totals"]
    assert rec["cost"]["totals"] == direct                   # what the QAT model has
    assert rec["mixed"]["totals"] == direct                  # what the search chose
    assert rec["metrics"]["bops"] == direct["bops"] == (2048 * 64 + 1024 * 2 * 2 + 320 * 8 * 8)
    ref = mixed.cost(_model(cfg))["totals"]  # the all-8-bit reference: every tensor at 8 bits
    assert rec["cost"]["reference"] == ref and rec["metrics"]["bops_ratio"] == pytest.approx(direct["bops"] / ref["bops"])
    assert [r["name"] for r in rec["cost"]["layers"]] == ["dense_0", "dense_1", "logits"]

    urec, ucfg = runs["uniform"]  # every run has its cost, not only mixed ones
    assert urec["status"] == "completed" and urec["float_baseline"]["cache"] == "hit"
    assert "mixed" not in urec and urec["labels"]["weight_bits"] == 4
    udirect = mixed.cost(_model(ucfg), {"dense_0": 8, "dense_1": 4, "logits": 8},
                         own_inputs=_own_inputs(urec))["totals"]
    assert urec["cost"]["totals"] == udirect
    assert urec["metrics"]["weight_bits_ratio"] == pytest.approx(udirect["weight_bits"] / ref["weight_bits"])


def test_report_puts_mixed_and_uniform_runs_on_the_cost_axes(runs, tmp_path):
    rep = make_report([runs["root"] / "out"], tmp_path, quiet=True)
    assert {c["axis"] for c in rep["pareto"]} == {"bops", "weight_memory"}
    assert all(p.exists() and p.stat().st_size > 0 for p in rep["pareto_plots"])
    pts = next(c for c in rep["pareto"] if c["axis"] == "bops")["panels"][("digits", "mlp", "academic")]
    assert {(p["variant"], p["label"], p["kind"]) for p in pts} == {("lsq", "bops=0.75", "mixed"),
                                                                  ("lsq", "W4A4", "uniform")}
    md = rep["markdown"].read_text()
    assert "accuracy vs bops" in md and "bops=0.75" in md and "pareto_bops.png" in md
    # the bit-width table has the uniform run only (a mixed run has no one width)
    assert [t["columns"] for t in rep["tables"]] == [[(4, 4)]]


@pytest.mark.parametrize("override, field", [
    ("mixed.budget.bops=0", "mixed.budget.bops"),
    ("mixed.budget.bops=1.5", "mixed.budget.bops"),
    ("mixed.budget.memory=-0.2", "mixed.budget.memory"),
    ("mixed.sensitivity=hesian", "mixed.sensitivity"),
    ("mixed.algorithm=lsqq", "mixed.algorithm"),
])
def test_bad_mixed_settings_fail_at_setup_naming_the_field(tmp_path, override, field):
    cfg = _compose(tmp_path, MIXED + ["mixed.budget.bops=0.5", override] if "budget" not in override
                   else MIXED + [override])
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        qconfig.validate(experiment(cfg))
    assert math.isnan(run_job(cfg))
    rec = json.loads(next((tmp_path / "out" / "runs").rglob("result.json")).read_text())
    assert rec["status"] == "failed" and rec["error"]["stage"] == "setup" and field in rec["error"]["message"]
    assert "data_s" not in rec["times"]  # before any data was loaded


def test_both_budgets_are_refused_with_the_fix(tmp_path):
    cfg = _compose(tmp_path, MIXED + ["mixed.budget.bops=0.3", "mixed.budget.memory=0.4"])
    with pytest.raises(ConfigError, match=r"sets bops \(0.3\) and memory \(0.4\): give one of them"):
        qconfig.validate(experiment(cfg))


def _cli(tmp_path, monkeypatch, capsys, *args):
    """``qresearch.run.cli`` in this process: (exit code, stderr)."""
    from qresearch import run

    monkeypatch.setattr(sys, "argv", ["qresearch.run"])
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as exc:
            run.cli([*FAST, *args, f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache",
                     "hydra/job_logging=none", "hydra/hydra_logging=none"])
    finally:
        GlobalHydra.instance().clear()
    return exc.value.code, capsys.readouterr().err


def test_scheme_mixed_without_a_budget_fails_at_setup(tmp_path, monkeypatch, capsys):
    code, err = _cli(tmp_path, monkeypatch, capsys, "scheme=mixed")
    assert code == 1 and "scheme=mixed chooses per-layer widths under a budget" in err and "mixed.budget.bops" in err
    rec = json.loads(next((tmp_path / "out" / "runs").rglob("result.json")).read_text())
    assert rec["error"]["stage"] == "setup" and "data_s" not in rec["times"]


def test_unknown_budget_key_is_named_before_anything_runs(tmp_path, monkeypatch, capsys):
    code, err = _cli(tmp_path, monkeypatch, capsys, *MIXED, "mixed.budget.latency=0.3")
    assert code == 2
    assert "mixed.budget.latency" in err and "mixed.budget.bops" in err and "mixed.budget.memory" in err
    assert not (tmp_path / "out").exists()
    # in Python (plain data, no Hydra schema): the same key is named by validate
    with pytest.raises(ConfigError, match=r"mixed\.budget\.latency.*budget\.bops, budget\.memory"):
        raw = {"budget": {"latency": 0.3}}
        qconfig.validate_mixed(qconfig.mixed_config(raw), raw)
    with pytest.raises(ConfigError, match=r"mixed\.sensitivty is not a mixed-precision setting; valid: budget, "):
        raw = {"budget": {"bops": 0.3}, "sensitivty": "hessian"}
        qconfig.validate_mixed(qconfig.mixed_config(raw), raw)


def test_a_target_cost_table_is_in_the_run_cost(runs, tmp_path):
    table = "{unit:pJ,mac:{default:{w8a8:1.0,w4a4:0.6}},weight_bit:0.01}"
    rec, cfg = _run(tmp_path, ["scheme=lsq", "bits=4", "seed=1", f"+hardware.costs={table}"])
    assert rec["status"] == "completed", rec["error"]
    rows = {r["name"]: r for r in rec["cost"]["layers"]}
    # (w, a_in): each layer reads its input at its own width (quantize_ops: inputs): (8, 8), (4, 4), (8, 8)
    for name, macs, mac_cost in (("dense_0", 2048, 1.0), ("dense_1", 1024, 0.6), ("logits", 320, 1.0)):
        assert rows[name]["table_cost"] == pytest.approx(macs * mac_cost + rows[name]["weight_bits"] * 0.01)
    assert rec["metrics"]["table_cost"] == pytest.approx(sum(r["table_cost"] for r in rows.values()))
    assert rec["cost"]["totals"]["table_unit"] == "pJ" and 0 < rec["metrics"]["table_cost_ratio"] < 1
    # the table adds a cost; the BOPs and memory are those of the same run without it
    urec = runs["uniform"][0]
    assert "table_cost" not in urec["cost"]["totals"] and "table_cost" not in urec["metrics"]
    assert {k: v for k, v in rec["cost"]["totals"].items() if not k.startswith("table")} == urec["cost"]["totals"]


def test_a_table_cost_budget_allocates_on_the_target_table(tmp_path):
    # a MAC with 2-bit weights costs nothing here, one with 8-bit weights a unit whatever its input: all-8-bit
    # = 2048 + 1024 + 320 MACs; dense_1 (the free layer) at 2 bits gives (2048 + 320) / 3392 = 0.698
    table = "{mac:{default:{w8a8:1.0,w2a2:0.0}}}"
    rec, cfg = _run(tmp_path, MIXED + ["mixed.bits=[8,2]", "mixed.samples=32", "mixed.budget.table_cost=0.7",
                                       f"+hardware.costs={table}"])
    assert rec["status"] == "completed", rec["error"]
    assert rec["mixed"]["widths"] == {"dense_0": 8, "dense_1": 2, "logits": 8}
    assert rec["mixed"]["allocation"]["feasible"] and rec["mixed"]["solver"] == "milp"
    assert rec["metrics"]["table_cost_ratio"] == pytest.approx((2048 + 320) / 3392)
    target = hardware.Target.from_dict(experiment(cfg).hardware)
    direct = mixed.cost(_model(cfg), rec["mixed"]["widths"], table=target, own_inputs=_own_inputs(rec))["totals"]
    assert rec["cost"]["totals"] == direct
    assert rec["mixed"]["allocation"]["budgets"]["table_cost"]["cost"] == pytest.approx(direct["table_cost"])


def test_a_table_cost_budget_without_a_table_fails_at_setup(tmp_path):
    cfg = _compose(tmp_path, MIXED + ["mixed.budget.table_cost=0.5"])
    assert math.isnan(run_job(cfg))
    rec = json.loads(next((tmp_path / "out" / "runs").rglob("result.json")).read_text())
    assert rec["status"] == "failed" and rec["error"]["stage"] == "setup"
    assert "hardware=academic has none" in rec["error"]["message"] and "data_s" not in rec["times"]


def test_every_precision_point_composes_to_a_uniform_width_or_one_budget(tmp_path):
    from qresearch.overrides import group_options

    options = group_options("precision")
    assert {"w8", "w4", "w3", "w2", "bops0.4", "memory0.3"} <= set(options)
    for option in options:
        exp = experiment(_compose(tmp_path, ["scheme=pact_lsq", f"+precision={option}"]))
        qconfig.validate(exp)
        if option.startswith("w"):
            assert exp.bits == int(option[1:]) and not exp.mixed.enabled
        else:
            kind, frac = ("bops", option[4:]) if option.startswith("bops") else ("memory", option[6:])
            assert exp.bits is None and exp.mixed.budget_dict() == {kind: float(frac)}
        assert exp.scheme["activations"]["quantizer"] == "pact"  # the algorithm stays the run's scheme


def test_the_mixed_node_at_its_defaults_keeps_old_hashes_and_any_setting_counts(tmp_path):
    plain = qconfig.to_dict(_compose(tmp_path, ["scheme=lsq"]))
    assert plain["mixed"]["budget"] == {"bops": None, "memory": None, "table_cost": None}
    old = {k: v for k, v in plain.items() if k != "mixed"}  # a record from before the node existed
    old["training"] = {k: v for k, v in old["training"].items()  # ... and these keys, at their defaults
                       if k not in ("strategy", "devices", "bn_reestimation_batches")}
    old["scheme"] = {k: v for k, v in old["scheme"].items() if k != "bn_freeze_steps"}  # (fold_batch_stats only)
    assert qconfig.config_hash(plain) == qconfig.stable_hash({k: v for k, v in old.items()
                                                              if k not in qconfig.NON_SEMANTIC_KEYS})
    hashes = {qconfig.config_hash(_compose(tmp_path, ["scheme=lsq", o])) for o in
              ("mixed.algorithm=pact_lsq", "mixed.samples=64", "mixed.budget.bops=0.3", "mixed.budget.bops=0.4")}
    assert len(hashes) == 4 and qconfig.config_hash(plain) not in hashes


def test_an_unreachable_budget_warns_with_the_least_reachable_cost_and_goes_on(tmp_path, caplog):
    # first/last (dense_0, logits) held at 8 bits, each layer reading its input at its own width: dense_1 at 2
    # bits leaves (2048·64 + 1024·4 + 320·64) / (3392·64) = 0.717 of all-8-bit BOPs at the least, over 0.5
    with caplog.at_level("WARNING", logger="qresearch.run"):
        rec, _ = _run(tmp_path, MIXED + ["mixed.bits=[8,2]", "mixed.samples=32", "mixed.budget.bops=0.5"])
    assert rec["status"] == "completed", rec["error"]
    assert not rec["mixed"]["allocation"]["feasible"]
    assert rec["mixed"]["allocation"]["budgets"]["bops"]["least_relative_cost"] == pytest.approx(
        (2048 * 64 + 1024 * 4 + 320 * 64) / (3392 * 64))
    assert "no choice of widths meets bops=0.5" in caplog.text and "least reachable is bops 0." in caplog.text
