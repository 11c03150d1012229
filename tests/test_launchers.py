"""Launchers and sweepers beyond the basic one, run for real: joblib's worker processes, submitit (the
SLURM launcher's code path, on this machine), Optuna with a persistent database shared by two searches,
Ray when its optional extra is installed. The process-starting ones are ``slow`` (``make test-all``)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qresearch import logger as qlog
from qresearch.results import load_results

FAST = ["dataset=digits", "model=mlp", "model.hidden=[16]", "training=fast", "dataset.train_samples=300",
        "dataset.test_samples=100", "logger=disabled"]


def _run(tmp_path, *args, timeout=600):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "qresearch.run", *FAST, f"paths.output_dir={tmp_path}/out",
           f"paths.cache_dir={tmp_path}/cache", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _run_in_process(tmp_path, monkeypatch, *args):
    """``qresearch.run.cli`` in this process, for sweepers that run their jobs in the calling process
    anyway (Optuna's): no TensorFlow start-up per search."""
    from hydra.core.global_hydra import GlobalHydra

    from qresearch import run

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["qresearch.run"])  # cli rewrites sys.argv for Hydra: restored after
    GlobalHydra.instance().clear()
    try:
        # Hydra's logging set-up (dictConfig) would close pytest's capture handlers
        run.cli([*FAST, f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache", *args,
                 "hydra/job_logging=none", "hydra/hydra_logging=none"])
    except SystemExit as exc:  # Hydra exits on an error; a search that ran returns
        assert exc.code in (0, None), exc
    finally:
        GlobalHydra.instance().clear()


def _completed(tmp_path, sweep):
    recs = load_results([tmp_path / "out" / "multirun" / sweep])
    return sorted((r["config"]["bits"], r["status"]) for r in recs)


@pytest.mark.slow  # three TensorFlow processes: the in-process sweep in test_run.py checks the rest
def test_joblib_workers_share_one_float_baseline_and_log_to_one_group(tmp_path):
    # 4 jobs on two joblib worker processes; bits=1 fails on purpose and does not stop the others
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "qresearch.run", "-m", *FAST, "logger=offline", "scheme=minmax_nbit",
           "bits=8,4,3,1", "sweep_name=t4", f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert _completed(tmp_path, "t4") == [(1, "failed"), (3, "completed"), (4, "completed"), (8, "completed")]
    sweep = tmp_path / "out" / "multirun" / "t4"
    recs = load_results([sweep])
    assert len({r["float_baseline"]["key"] for r in recs if r["status"] == "completed"}) == 1
    assert len(list((tmp_path / "cache" / "float").glob("*/meta.json"))) == 1  # trained once, under the lock
    assert len((sweep / "results.jsonl").read_text().splitlines()) == 4
    for r in recs:
        (run_file,) = qlog.find_wandb_files(Path(r["_path"]).parent)
        assert qlog.read_wandb_run(run_file)["run"]["group"] == "t4"
    (report_file,) = qlog.find_wandb_files(sweep / "wandb")
    assert qlog.read_wandb_run(report_file)["run"]["job_type"] == "report"
    assert (sweep / "report.md").is_file() and "wandb offline" in out and f"wandb sync {sweep}" in out


@pytest.mark.slow  # one process per job (three TensorFlow start-ups)
def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    # submitit_local pickles the task, starts one process per job and collects results: what the
    # SLURM launcher does, without a scheduler
    _run(tmp_path, "-m", "scheme=minmax_nbit", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "bits=8,4",
         "sweep_name=sub")
    assert _completed(tmp_path, "sub") == [(4, "completed"), (8, "completed")]
    assert list((tmp_path / "out" / "multirun" / "sub" / ".submitit").rglob("*_result.pkl"))


def test_optuna_study_in_sqlite_is_shared_by_two_searches(tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna")
    db = f"sqlite:///{tmp_path}/study.db"
    search = ["+hparams_search=lsq_lr_optuna", f"hydra.sweeper.storage={db}", "hydra.sweeper.study_name=shared",
              "hydra.sweeper.sampler.n_startup_trials=1"]
    _run_in_process(tmp_path, monkeypatch, *search, "hydra.sweeper.n_trials=1", "sweep_name=a", "bits=4")
    # another machine, the same study; its trials fail (1-bit widths are refused in each job), which marks
    # them failed and does not stop the search
    _run_in_process(tmp_path, monkeypatch, *search, "hydra.sweeper.n_trials=2", "sweep_name=b", "bits=1")
    study = optuna.load_study(study_name="shared", storage=db)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 1 and states.count(optuna.trial.TrialState.FAIL) == 2
    qat = [r["metrics"]["qat_accuracy"] for s in "a" for r in load_results([tmp_path / "out" / "multirun" / s])]
    assert sorted(t.value for t in study.trials if t.value is not None) == pytest.approx(sorted(qat))


def test_ray_launcher_runs_a_sweep_when_installed(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    _run(tmp_path, "-m", "hydra/launcher=ray", "hydra.launcher.ray.remote.num_cpus=1", "scheme=minmax_nbit",
         "bits=8,4", "sweep_name=ray")
    assert _completed(tmp_path, "ray") == [(4, "completed"), (8, "completed")]
