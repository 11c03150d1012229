"""qresearch.run: a real single run, a real multirun with a failing job, resume, report, wandb."""
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from qresearch import config as qconfig  # noqa: F401  (registers the schema)
from qresearch import logger as qlog
from qresearch.paths import CONF_DIR, REPO_DIR
from qresearch.report import make_report
from qresearch.results import load_results
from qresearch.config import experiment
from qresearch.run import run_job
from qresearch.stages import check_scheme

FAST = ["dataset=digits", "model=mlp", "model.hidden=[32]", "training=fast", "dataset.train_samples=400",
        "dataset.test_samples=200"]


def _compose(tmp_path, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=FAST + [
            f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache"] + list(overrides))


def _result(tmp_path):
    files = sorted((tmp_path / "out" / "runs").rglob("result.json"), key=os.path.getmtime)
    return json.loads(files[-1].read_text()), files[-1]


def test_single_run_writes_result_and_wandb(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = _compose(tmp_path, ["logger=offline", "scheme=minmax_nbit", "bits=4", "seed=3"])
    acc = run_job(cfg)
    rec, path = _result(tmp_path)
    assert rec["status"] == "completed" and rec["error"] is None
    m = rec["metrics"]
    assert acc == pytest.approx(m["qat_accuracy"]) and 0.0 <= acc <= 1.0
    for key in ("float_accuracy", "ptq_accuracy", "weight_memory_bits", "qat_step_time_s", "float_step_time_s",
                "step_time_ratio"):
        assert m[key] is not None, key
    assert m["deployed_accuracy"] is None and "no runtime" in rec["deploy"]["skipped"]
    assert m["weight_memory_bits"] < m["float_weight_memory_bits"]
    assert rec["labels"]["algorithm"] == "minmax" and rec["labels"]["weight_bits"] == 4
    assert len(rec["unsigned_inputs"]) == 1   # the digits' pixels are >= 0: input_sign: data plans them unsigned
    assert rec["config"]["seed"] == 3 and len(rec["config_hash"]) == 16
    assert rec["float_baseline"]["cache"] == "miss"
    for stage in ("setup", "data", "float", "float_eval", "ptq", "qat", "qat_eval", "total"):
        assert rec["times"][f"{stage}_s"] >= 0
    # wandb offline: one run in the job folder, config and summary recovered from the record stream
    files = qlog.find_wandb_files(path.parent)
    assert len(files) == 1
    run = qlog.read_wandb_run(files[0])
    assert run["config"]["seed"] == 3 and run["config"]["config_hash"] == rec["config_hash"]
    assert run["config"]["training"]["qat"]["optimizer"] == "adam"
    assert run["summary"]["qat_accuracy"] == pytest.approx(m["qat_accuracy"])
    assert run["summary"]["status"] == "completed"
    assert any("qat/loss" in h for h in run["history"])
    assert run["exit_code"] == 0

    # the next point with the same float config reuses the cached baseline
    cfg2 = _compose(tmp_path, ["logger=disabled", "scheme=minmax_nbit", "bits=8", "seed=3"])
    run_job(cfg2)
    rec2, _ = _result(tmp_path)
    assert rec2["float_baseline"]["cache"] == "hit"
    assert rec2["float_baseline"]["key"] == rec["float_baseline"]["key"]
    assert rec2["metrics"]["float_accuracy"] == pytest.approx(m["float_accuracy"])


def test_nan_loss_is_recorded_as_failed(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = _compose(tmp_path, ["logger=offline", "scheme=minmax_nbit", "bits=8", "training.qat.learning_rate=nan"])
    assert math.isnan(run_job(cfg))
    rec, path = _result(tmp_path)
    assert rec["status"] == "failed"
    assert rec["error"]["type"] == "NaNLossError" and rec["error"]["stage"] == "qat"
    assert "Traceback" in rec["error"]["traceback"]
    assert rec["metrics"]["float_accuracy"] is not None and rec["metrics"]["ptq_accuracy"] is not None
    run = qlog.read_wandb_run(qlog.find_wandb_files(path.parent)[0])
    assert run["summary"]["status"] == "failed" and run["summary"]["error/type"] == "NaNLossError"
    assert run["exit_code"] == 1


def test_incompatible_bits_fail_before_training(tmp_path):
    cfg = _compose(tmp_path, ["logger=disabled", "hardware=tflite_int8", "scheme=tflite_int8", "bits=4"])
    with pytest.raises(Exception, match="tflite_int8.*4 bits"):
        check_scheme(experiment(cfg))
    assert math.isnan(run_job(cfg))
    rec, _ = _result(tmp_path)
    assert rec["status"] == "failed" and rec["error"]["stage"] == "setup"
    assert rec["error"]["type"] == "IncompatibleTargetError" and "times" in rec and "data_s" not in rec["times"]


MULTIRUN = [*FAST, "logger=offline", "scheme=minmax_nbit", "bits=8,4,3,1", "sweep_name=t4"]


def test_multirun_with_a_failing_job_resume_and_report(tmp_path, monkeypatch):
    # 4 jobs (Hydra's basic launcher, in this process; the joblib launcher's worker processes are
    # tests/test_launchers.py's); bits=1 fails on purpose (bit widths start at 2)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # Hydra's logging set-up is left out: it would hold on to this stream
        _multirun_in_process(tmp_path, monkeypatch, *MULTIRUN, "hydra/job_logging=none", "hydra/hydra_logging=none")
    sweep = tmp_path / "out" / "multirun" / "t4"
    recs = {Path(r["_path"]).parent.name: r for r in load_results([sweep])}
    assert sorted(recs) == [f"bits={b},dataset.test_samples=200,dataset.train_samples=400,dataset=digits,"
                            f"model.hidden=[32],model=mlp,scheme=minmax_nbit,training=fast" for b in (1, 3, 4, 8)]
    by_bits = {r["config"]["bits"]: r for r in recs.values()}
    assert [by_bits[b]["status"] for b in (8, 4, 3, 1)] == ["completed"] * 3 + ["failed"]
    err = by_bits[1]["error"]
    assert err["type"] == "ConfigError" and "bits" in err["message"] and err["traceback"]
    # one float baseline for the whole sweep, trained once
    keys = {r["float_baseline"]["key"] for r in recs.values() if r["status"] == "completed"}
    assert len(keys) == 1 and len(list((tmp_path / "cache" / "float").glob("*/meta.json"))) == 1
    assert sorted(r["float_baseline"]["cache"] for r in recs.values() if r["status"] == "completed") == \
        ["hit", "hit", "miss"]
    # the append-only store has one line per job
    lines = (sweep / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # one wandb run per job, grouped by the sweep
    for r in recs.values():
        run = qlog.read_wandb_run(qlog.find_wandb_files(Path(r["_path"]).parent)[0])
        assert run["run"]["group"] == "t4"
    # ... and at its end the sweep's report (runs and accuracy tables, plot, results.csv) in the same group
    (report_file,) = qlog.find_wandb_files(sweep / "wandb")
    rep_run = qlog.read_wandb_run(report_file)
    assert rep_run["run"]["group"] == "t4" and rep_run["run"]["job_type"] == "report"
    assert rep_run["history"][0]["report/runs/nrows"] == 4
    assert rep_run["history"][0]["report/accuracy_vs_bits/_type"] == "image-file"
    assert [a["files"] for a in rep_run["artifacts"] if a["type"] == "results"] == [["report.md", "results.csv"]]
    assert (sweep / "report.md").is_file() and f"wandb sync {sweep}" in out.getvalue()

    # resume: a job "killed" mid-way (status running) re-runs, completed jobs are skipped
    job4 = Path(by_bits[4]["_path"])
    killed = json.loads(job4.read_text())
    killed["status"] = "running"
    job4.write_text(json.dumps(killed))
    mtimes = {b: os.path.getmtime(by_bits[b]["_path"]) for b in (8, 3)}
    _multirun_in_process(tmp_path, monkeypatch, *MULTIRUN)  # basic launcher, in this process: the same folders
    assert sum(p.read_text().count("skipping") for p in sweep.glob("*/run.log")) == 2  # Hydra logs each job there
    assert {b: os.path.getmtime(by_bits[b]["_path"]) for b in (8, 3)} == mtimes
    rerun = json.loads(job4.read_text())
    assert rerun["status"] == "completed" and rerun["finished_at"] != killed["finished_at"]
    assert rerun["metrics"]["qat_accuracy"] == pytest.approx(killed["metrics"]["qat_accuracy"])  # deterministic
    assert rerun["float_baseline"]["cache"] == "hit"

    # report: numbers are the result.json numbers
    rep = make_report([sweep], quiet=True)
    assert len(rep["completed"]) == 3 and len(rep["failed"]) == 1
    (table,) = rep["tables"]
    assert table["target"] == "academic" and table["joint"]
    qat_row = next(r for r in table["rows"] if r["kind"] == "qat")
    ptq_row = next(r for r in table["rows"] if r["kind"] == "ptq")
    for b in (8, 4, 3):
        m = json.loads(Path(by_bits[b]["_path"]).read_text())["metrics"]
        assert qat_row["cells"][(b, b)][0] == pytest.approx(m["qat_accuracy"])
        assert ptq_row["cells"][(b, b)][0] == pytest.approx(m["ptq_accuracy"])
        assert table["rows"][0]["cells"][(b, b)][0] == pytest.approx(m["float_accuracy"])
    md = rep["markdown"].read_text()
    assert f"{100 * by_bits[8]['metrics']['qat_accuracy']:.2f}" in md and "ConfigError" in md
    assert rep["plot"].is_file() and rep["plot"].stat().st_size > 10000
    assert rep["csv"].read_text().count("\n") == 5


def _cli(tmp_path, *args):
    """A fresh process, where that is the point: the argv as a shell passes it, imports from the user's folder."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "qresearch.run", *args, f"paths.output_dir={tmp_path}/out",
           f"paths.cache_dir={tmp_path}/cache"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _cli_in_process(tmp_path, monkeypatch, capsys, *args):
    """``qresearch.run.cli`` in this process (no TensorFlow start-up): returns (exit code, stderr)."""
    from qresearch import run

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(sys, "argv", ["qresearch.run"])  # cli rewrites sys.argv for Hydra: restored after
    GlobalHydra.instance().clear()
    code = 0
    try:
        # Hydra's logging set-up (dictConfig) would close pytest's capture handlers; the job's logs
        # are not what these tests read
        run.cli([*args, f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache",
                 "hydra/job_logging=none", "hydra/hydra_logging=none"])
    except SystemExit as exc:
        code = exc.code
    finally:
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


def test_a_run_failing_validation_is_labelled_by_its_bit_widths(tmp_path):
    cfg = _compose(tmp_path, ["logger=disabled", "bits=3", "training.qat.learning_rate=-1"])
    assert math.isnan(run_job(cfg))
    rec, _ = _result(tmp_path)
    assert rec["status"] == "failed" and "learning_rate" in rec["error"]["message"]
    assert rec["labels"]["weight_bits"] == 3 and rec["labels"]["activation_bits"] == 3


def test_cli_single_run_failure_exits_nonzero_after_recording(tmp_path, monkeypatch, capsys):
    code, stderr = _cli_in_process(tmp_path, monkeypatch, capsys, "hardware=tflite_int8", "bits=4", "training=fast")
    assert code == 1
    assert "cannot run weights at 4 bits" in stderr
    rec, _ = _result(tmp_path)
    assert rec["status"] == "failed" and rec["labels"]["weight_bits"] == 4
    assert rec["choices"]["hardware"] == "tflite_int8"


def test_cli_misspelt_key_fails_with_suggestion(tmp_path, monkeypatch, capsys):
    code, stderr = _cli_in_process(tmp_path, monkeypatch, capsys, "training.qat.epoch=3")
    assert code == 2 and "training.qat.epochs" in stderr
    assert not (tmp_path / "out").exists()


def test_cli_multirun_flag_after_overrides_and_bits_conflict(tmp_path, monkeypatch, capsys):
    # "-m" is accepted after overrides (the argv as a shell passes it); bits=N with a role width stops the
    # sweep before any job
    code, stderr = _cli_in_process(tmp_path, monkeypatch, capsys, "bits=4,2", "-m", "scheme.weights.bits=3",
                                   "sweep_name=t")
    assert code == 2, stderr[-2000:]
    assert "no job was started" in stderr and "scheme.weights.bits" in stderr
    assert not list((tmp_path / "out" / "multirun" / "t").glob("*/result.json"))


def test_cli_help_names_groups_and_common_keys(tmp_path, monkeypatch, capsys):
    from qresearch import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["qresearch.run"])  # cli rewrites sys.argv for Hydra: restored after
    GlobalHydra.instance().clear()
    try:  # in this process: the help text is Hydra's, printed before any job (no TensorFlow start-up to pay)
        with pytest.raises(SystemExit) as exit_:
            run.cli(["--help", "hydra/job_logging=none", "hydra/hydra_logging=none"])
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # --help leaves a half-set Hydra config that later jobs would read
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    for text in ("Common keys", "bits=N", "~hardware", "sweep_name", "hardware: academic"):
        assert text in out, text
    (schemes,) = [line for line in out.splitlines() if line.startswith("scheme: ")]
    assert {"dorefa", "lsq", "tflite_int8"} <= set(schemes[len("scheme: "):].split(", "))


def test_results_record_the_code_version():
    from qresearch.versions import code_version, versions

    v = code_version()
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert len(v["git_commit"]) == 40 and v["git_dirty"] in ("true", "false")
    assert versions().get("git_commit") == v.get("git_commit")


def test_flags_first():
    from qresearch.run import flags_first

    assert flags_first(["scheme=lsq", "-m", "bits=4,2"]) == ["-m", "scheme=lsq", "bits=4,2"]
    assert flags_first(["--cfg", "job", "seed=1"]) == ["--cfg", "job", "seed=1"]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    env = {**os.environ, "QRESEARCH_OUTPUT_DIR": str(tmp_path / "out"), "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "qresearch.demo"], cwd=REPO_DIR, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "target `academic`" in proc.stdout and "target `tflite_int8`" in proc.stdout
    assert (tmp_path / "out" / "multirun" / "demo" / "accuracy_vs_bits.png").is_file()


# ------------------------------------------------------------------ data identity
def _npz_dataset(path, shift):
    """Write a tiny digits dataset to ``path``; labels shifted by ``shift`` (a file rewritten in place)."""
    import numpy as np

    from qresearch import data

    ds = data.load_dataset({"name": "digits", "train_samples": 300, "test_samples": 100})
    np.savez(path, x_train=ds.x_train, y_train=(ds.y_train + shift) % 10, x_test=ds.x_test,
             y_test=(ds.y_test + shift) % 10)


def _register_npz_dataset():
    import numpy as np

    from qresearch import data

    @data.register_dataset("npz_file_test", overwrite=True)
    def npz_file(cfg):
        with np.load(cfg["path"]) as f:
            return data.Dataset("npz_file_test", f["x_train"], f["y_train"], f["x_test"], f["y_test"], 10)


def _multirun_in_process(tmp_path, monkeypatch, *overrides):
    """A real Hydra multirun (basic launcher: jobs run in this process, so a plugin dataset
    registered here is found)."""
    from qresearch import run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["qresearch.run", "-m", f"paths.output_dir={tmp_path}/out",
                                      f"paths.cache_dir={tmp_path}/cache", *overrides])
    try:
        run.main()
    finally:
        GlobalHydra.instance().clear()


def _data_multirun(tmp_path, monkeypatch, *overrides):
    _multirun_in_process(tmp_path, monkeypatch, "model=mlp", "model.hidden=[16]", "training=fast", "logger=disabled",
                         "scheme=minmax_nbit", "bits=8", "sweep_name=data", *overrides)
    (result,) = (tmp_path / "out" / "multirun" / "data").rglob("result.json")
    return result


def test_a_dataset_rewritten_in_place_is_not_resumed_from_nor_its_baseline_reused(tmp_path, monkeypatch):
    _register_npz_dataset()
    path = tmp_path / "digits.npz"
    args = ["dataset=digits", "dataset.name=npz_file_test", f"+dataset.path={path}"]
    _npz_dataset(path, 0)
    result = _data_multirun(tmp_path, monkeypatch, *args)
    first = json.loads(result.read_text())
    assert first["status"] == "completed" and first["float_baseline"]["cache"] == "miss"
    assert len(first["dataset"]["fingerprint"]) == 16

    # same file: skipped (resume still works)
    mtime = os.path.getmtime(result)
    _data_multirun(tmp_path, monkeypatch, *args)
    assert os.path.getmtime(result) == mtime

    # same path, new labels: the job runs again and trains a new baseline
    _npz_dataset(path, 1)
    _data_multirun(tmp_path, monkeypatch, *args)
    second = json.loads(result.read_text())
    assert second["status"] == "completed" and second["config_hash"] == first["config_hash"]
    assert second["dataset"]["fingerprint"] != first["dataset"]["fingerprint"]
    assert second["float_baseline"]["cache"] == "miss"
    assert second["float_baseline"]["key"] != first["float_baseline"]["key"]


def test_bad_labels_fail_the_run_at_the_data_stage_with_the_cause(tmp_path):
    import numpy as np

    _register_npz_dataset()
    path = tmp_path / "digits.npz"
    _npz_dataset(path, 0)
    with np.load(path) as f:
        arrays = dict(f)
    arrays["y_train"][35] = 12
    arrays["x_test"][3, 2, 2, 0] = np.nan
    np.savez(path, **arrays)
    cfg = _compose(tmp_path, ["logger=disabled", "dataset.name=npz_file_test", f"+dataset.path={path}"])
    assert math.isnan(run_job(cfg))
    rec, _ = _result(tmp_path)
    assert rec["status"] == "failed" and rec["error"]["stage"] == "data" and rec["error"]["type"] == "DataError"
    assert "y_train[35] = 12 is outside [0, 10)" in rec["error"]["message"]
    assert "float_s" not in rec["times"]


def test_cli_brings_your_own_quantizer_data_and_model(tmp_path):
    """One fresh process, as a user runs it from their project folder: a plugin quantizer, an npz file
    (uint8 pixels, classes inferred), a model builder by _target_ (model=custom picked for it)."""
    from user_code import write_data_and_models, write_npz, write_quantizer

    write_quantizer(tmp_path, "qr_cli_plugin", "qr_cli_rule")
    write_data_and_models(tmp_path)
    write_npz(tmp_path / "pixels.npz", n=120, classes=3)
    proc = _cli(tmp_path, "plugins=[qr_cli_plugin]", "scheme.weights.quantizer=qr_cli_rule", "dataset=npz",
                "dataset.path=pixels.npz", "dataset.scale=1/255", "model._target_=user_models.build",
                "+model.width=8", "training=fast", "logger=disabled")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec, _ = _result(tmp_path)
    assert rec["status"] == "completed"
    assert rec["scheme"]["weights"]["quantizer"] == "qr_cli_rule"
    assert rec["dataset"]["num_classes"] == 3 and rec["dataset"]["input_shape"] == [8, 8, 1]
    assert rec["labels"]["model"] == "user_models.build" and rec["choices"]["model"] == "custom"
    assert rec["labels"]["dataset"] == "pixels"  # the file, not "npz"
    assert rec["config"]["plugins"] == ["qr_cli_plugin"]


def test_a_token_model_on_its_own_data_runs_and_deploys(tmp_path, monkeypatch):
    """Vectors of token ids (N, D) in an npz, a model with an Embedding, the TFLite int8 target: trained, quantized
    and verified on the ids (before: the npz loader refused (N, D) arrays, verify refused an integer input)."""
    from user_code import write_data_and_models, write_tokens

    write_data_and_models(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_tokens(tmp_path / "tokens.npz")
    cfg = _compose_bare(tmp_path, ["logger=disabled", "dataset=npz", f"dataset.path={path}", "model=custom",
                                   "model._target_=user_models.tokens", "hardware=tflite_int8", "scheme=tflite_int8",
                                   "bits=8", "training=fast", "training.float.epochs=5"])
    run_job(cfg)
    rec, _ = _result(tmp_path)
    assert rec["status"] == "completed", rec.get("error")
    assert rec["dataset"]["input_shape"] == [16] and rec["dataset"]["num_classes"] == 2
    dep = rec["deploy"]
    assert dep["integer_only"] and dep["structural_issues"] == [] and dep["input_quantization"] == [0.0, 0], dep
    assert dep["argmax_agreement"] == 1.0 and rec["metrics"]["deployed_accuracy"] == rec["metrics"]["qat_accuracy"]


def test_a_plugin_that_cannot_be_imported_fails_the_job_with_a_record(tmp_path):
    cfg = _compose(tmp_path, ["logger=disabled", "plugins=[qr_plugin_not_there]"])
    assert math.isnan(run_job(cfg))
    rec, _ = _result(tmp_path)
    assert rec["status"] == "failed" and rec["error"]["stage"] == "plugins"
    assert rec["error"]["type"] == "PluginImportError" and "'qr_plugin_not_there' could not be imported" in \
        rec["error"]["message"]


def test_variant_label_names_your_data_but_not_plugins():
    from qresearch.labels import variant_label

    # the model's target is in labels.model; the data file is not in labels.dataset ("npz"), so the label names it
    assert variant_label("lsq", ["dataset=npz", "dataset.path=a.npz", "model._target_=pkg.build", "model=custom",
                                 "+model.width=8", "plugins=[my_quant]"]) == "lsq[dataset.path=a.npz,model.width=8]"


def test_a_target_with_an_integer_pipeline_reports_the_simulated_hardware(tmp_path):
    """npu_w4a8_acc16 computes its 16-bit saturating pipeline in inference: the QAT accuracy is that
    hardware's, the float fake-quant one stands beside it, and each layer's accumulators are measured."""
    base = ["logger=disabled", "hardware=npu_w4a8_acc16", "scheme=minmax_nbit", "scheme.weights.bits=4",
            "scheme.activations.bits=8", "hardware.pipeline.bias_add=accumulator"]
    results = {}
    for width in (32, 14):
        assert run_job(_compose(tmp_path, base + [f"hardware.pipeline.accumulator_bits={width}"])) >= 0
        rec, _ = _result(tmp_path)
        assert rec["status"] == "completed", rec["error"]
        assert rec["labels"]["accumulator_bits"] == width and "accumulator" not in rec["labels"]["variant"]
        assert rec["simulated"].startswith("simulated npu_w4a8_acc16")
        m = rec["metrics"]
        assert 0.0 <= m["qat_fakequant_accuracy"] <= 1.0
        layers = rec["accumulators"]
        assert layers and all(s["accumulator_bits"] == width and s["outputs"] > 0 for s in layers.values())
        assert m["accumulator_overflow_fraction"] == max(s["overflow_fraction"] for s in layers.values())
        results[width] = m
    # a 14-bit accumulator overflows on this model (8-bit first/last layers, 64 inputs: ~22 bits needed)
    # where 32 bits do not, and the accuracy says so
    assert results[32]["accumulator_overflow_fraction"] == 0.0 < results[14]["accumulator_overflow_fraction"]
    assert results[32]["accumulator_bits_needed"] > 14
    assert results[14]["qat_accuracy"] < results[32]["qat_accuracy"]


def test_progressive_bits_start_the_run_from_a_higher_width(tmp_path):
    cfg = _compose(tmp_path, ["logger=disabled", "scheme=lsq", "bits=2", "progressive_bits=[4]",
                              "hardware=academic"])
    run_job(cfg)
    rec, _ = _result(tmp_path)
    assert rec["status"] == "completed", rec["error"]
    assert [p["bits"] for p in rec["progressive"]] == [4] and 0 <= rec["progressive"][0]["qat_accuracy"] <= 1
    assert rec["labels"]["weight_bits"] == 2 and rec["times"]["progressive_s"] >= 0
    with pytest.raises(Exception, match="progressive_bits must be a list of bit widths"):
        qconfig.validate(_compose(tmp_path, ["progressive_bits=[1]"]))


def test_bn_reestimation_after_qat_where_bn_stays(tmp_path):
    # academic requires no_fold: a ResNet-8's BN layers stay, and get re-estimated after QAT over lsq's 50 batches
    # (training.bn_reestimation_batches overrides them: tests/test_config.py)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "dataset=digits", "training=fast", "dataset.train_samples=400", "dataset.test_samples=200",
            f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache", "logger=disabled", "scheme=lsq",
            "bits=4", "hardware=academic", "model=resnet20", "model.depth=8", "model.width=4"])
    assert run_job(cfg) >= 0
    rec, _ = _result(tmp_path)
    assert rec["status"] == "completed", rec["error"]
    assert rec["bn_reestimation"]["layers"] > 0 and rec["bn_reestimation"]["batches"] == 50
    assert rec["times"]["bn_reestimation_s"] >= 0
    with pytest.raises(Exception, match="bn_reestimation_batches must be null .* or an integer >= 0"):
        qconfig.validate(_compose(tmp_path, ["training.bn_reestimation_batches=-1"]))


FOLD_BATCH_STATS = ["dataset=digits", "training=fast", "dataset.train_samples=400", "dataset.test_samples=200",
                    "logger=disabled", "scheme=tflite_int8", "hardware=tflite_int8", "model=resnet20",
                    "model.depth=8", "model.width=4", "scheme.bn_folding=fold_batch_stats", "scheme.bn_freeze_steps=3"]


def _compose_bare(tmp_path, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"paths.output_dir={tmp_path}/out",
                                                        f"paths.cache_dir={tmp_path}/cache", *overrides])


def test_a_target_requiring_a_fold_keeps_fold_batch_stats(tmp_path):
    # tflite_int8 requires a fold: fold_batch_stats deploys as one, so the target keeps it (no coercion);
    # academic keeps BN float and says so
    _, spec, notes = check_scheme(experiment(_compose_bare(tmp_path, FOLD_BATCH_STATS)))
    assert spec["bn_folding"] == "fold_batch_stats" and spec["bn_freeze_steps"] == 3
    assert not any("bn_folding" in n for n in notes), notes
    _, spec, notes = check_scheme(experiment(_compose_bare(tmp_path, [*FOLD_BATCH_STATS[:-6], "scheme=lsq",
                                                                      "hardware=academic", *FOLD_BATCH_STATS[-2:]])))
    assert spec["bn_folding"] == "no_fold" and any("bn_folding" in n for n in notes), notes


@pytest.mark.slow  # a ResNet-8 trained, converted and verified: the parity tests cover the deployment
def test_fold_batch_stats_through_the_runner_on_tflite_int8(tmp_path):
    assert run_job(_compose_bare(tmp_path, FOLD_BATCH_STATS)) >= 0
    rec, _ = _result(tmp_path)
    assert rec["status"] == "completed", rec["error"]
    assert rec["config"]["scheme"]["bn_folding"] == "fold_batch_stats"
    assert not any("bn_folding" in c for c in rec.get("coercions", []))
    assert rec["deploy"]["argmax_agreement"] == 1.0 and rec["deploy"]["max_abs_diff_lsb"] < 1e-3, rec["deploy"]


# lsq at 8 bits (adapted to the target's narrow grids): BN kept, re-estimated over the preset's 50 batches, then folded
NO_FOLD_ON_TFLITE = [*(o for o in FOLD_BATCH_STATS[:-2] if not o.startswith("scheme=")), "scheme=lsq", "bits=8",
                     "adapt=true", "scheme.bn_folding=no_fold"]


@pytest.mark.slow  # a ResNet-8 trained, folded, converted and verified: test_deploy_fold covers the fold itself
def test_no_fold_trains_with_bn_and_deploys_folded_on_tflite_int8(tmp_path):
    # tflite_int8 requires a fold; no_fold with per-channel weights keeps BN in training and folds it into the
    # trained grids after it (fold_for_deployment): the deployed model is the folded twin, bit for bit
    assert run_job(_compose_bare(tmp_path, NO_FOLD_ON_TFLITE)) >= 0
    rec, _ = _result(tmp_path)
    assert rec["status"] == "completed", rec["error"]
    assert rec["scheme"]["bn_folding"] == "no_fold" and rec["scheme"]["weights"]["quantizer"] == "lsq"
    assert any("'no_fold' kept" in c for c in rec["coercions"]), rec["coercions"]
    assert rec["bn_reestimation"]["layers"] >= 7   # the folded statistics are the re-estimated ones
    fold = rec["deploy_fold"]
    assert len(fold["folded"]) >= 7 and fold["requantized"] == [], fold
    assert rec["times"]["deploy_fold_s"] >= 0
    assert rec["deploy"]["argmax_agreement"] == 1.0 and rec["deploy"]["max_abs_diff_lsb"] < 1e-3, rec["deploy"]
    m = rec["metrics"]
    assert m["deployed_accuracy"] == m["qat_accuracy"]   # the emulation of the twin is the deployed model
    assert abs(m["qat_fakequant_accuracy"] - m["qat_unfolded_accuracy"]) <= 0.02, m
