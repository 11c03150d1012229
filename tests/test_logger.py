"""wandb: mode resolution, offline runs read back from their .wandb record files."""
import pytest

from qresearch import logger as qlog


def test_mode_defaults_to_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert qlog.resolve_mode("auto") == "offline"
    assert qlog.resolve_mode("online") == "offline"
    assert qlog.resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert qlog.resolve_mode("auto") == "online"


def test_disabled_logger_is_a_no_op(tmp_path):
    lg = qlog.RunLogger({"mode": "disabled"}, {"a": 1}, name="n", group="g", job_dir=str(tmp_path))
    lg.log({"x": 1})
    lg.summary({"y": 2})
    lg.finish()
    assert not lg.active and not list(tmp_path.iterdir())


def test_offline_run_reads_back(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = {"seed": 3, "scheme": {"weights": {"bits": 4}}, "tags": [1, 2]}
    lg = qlog.RunLogger({"mode": "offline", "project": "qtest"}, config, name="job-a", group="sweep-x",
                        job_dir=str(tmp_path))
    assert lg.active
    for step in range(3):
        lg.log({"qat/loss": 1.0 / (step + 1)})
    lg.summary({"qat_accuracy": 0.9, "metrics": {"ptq_accuracy": 0.5}})
    lg.finish()
    lg.finish()  # idempotent
    files = qlog.find_wandb_files(tmp_path)
    assert len(files) == 1
    run = qlog.read_wandb_run(files[0])
    assert run["run"]["group"] == "sweep-x" and run["run"]["name"] == "job-a"
    assert run["config"]["seed"] == 3 and run["config"]["scheme"] == {"weights": {"bits": 4}}
    assert run["summary"]["qat_accuracy"] == 0.9 and run["summary"]["metrics/ptq_accuracy"] == 0.5
    assert [h["qat/loss"] for h in run["history"]] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert run["exit_code"] == 0


def test_reader_rejects_other_files(tmp_path):
    p = tmp_path / "x.wandb"
    p.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError):
        list(qlog.iter_wandb_records(p))


def test_online_without_network_logs_offline_at_once(tmp_path, monkeypatch):
    # a key but no route to the server: no 60 s init_timeout per job, and the run is still logged
    import time

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setattr(qlog, "_REACHABLE", {})
    t = time.perf_counter()
    lg = qlog.RunLogger({"mode": "online", "project": "qtest"}, {"a": 1}, name="n", group="g", job_dir=str(tmp_path))
    lg.summary({"qat_accuracy": 0.5})
    lg.finish()
    assert time.perf_counter() - t < 30
    assert lg.mode == "offline"
    files = qlog.find_wandb_files(tmp_path)
    assert len(files) == 1 and qlog.read_wandb_run(files[0])["summary"]["qat_accuracy"] == 0.5


def test_finish_waits_until_the_run_file_is_complete(tmp_path, monkeypatch):
    # wandb's writer may still flush the .wandb file after finish() returns: finish waits for its exit record
    import shutil
    import threading
    import time

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    lg = qlog.RunLogger({"mode": "offline", "project": "qtest"}, {"seed": 1}, name="a", group="g",
                        job_dir=str(tmp_path / "a"))
    lg.finish()
    done = qlog.find_wandb_files(tmp_path / "a")[0]
    late = tmp_path / "late.wandb"
    data = open(done, "rb").read()
    late.write_bytes(data[:7])  # the header only: no records yet
    threading.Timer(0.5, lambda: shutil.copy(done, late)).start()
    t = time.perf_counter()
    qlog.RunLogger({"mode": "disabled"}, {}, name="b", group="g")._wait_written(str(late), timeout=10)
    assert 0.4 < time.perf_counter() - t < 9
    run = qlog.read_wandb_run(late)
    assert run["exit_code"] == 0 and run["config"]["seed"] == 1


def test_a_killed_runs_file_is_read_at_once(tmp_path, monkeypatch):
    # no exit record and not written lately (its process was killed): no 30 s wait for a record that never comes
    import os
    import time

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    lg = qlog.RunLogger({"mode": "offline", "project": "qtest"}, {"seed": 2}, name="a", group="g",
                        job_dir=str(tmp_path / "a"))
    lg.finish()
    data = open(qlog.find_wandb_files(tmp_path / "a")[0], "rb").read()
    killed = tmp_path / "killed.wandb"
    killed.write_bytes(data[:7])  # header only
    old = time.time() - 3600
    os.utime(killed, (old, old))
    t = time.perf_counter()
    run = qlog.read_wandb_run(killed)
    assert time.perf_counter() - t < 5 and run["exit_code"] is None and run["config"] == {}


def test_offline_run_says_where_it_is_and_how_to_sync(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with caplog.at_level(logging.INFO, logger="qresearch.logger"):
        lg = qlog.RunLogger({"mode": "auto"}, {}, name="n", group="g", job_dir=str(tmp_path))
        lg.finish()
    (line,) = [r.getMessage() for r in caplog.records if "wandb offline" in r.getMessage()]
    run_dir = str(tmp_path / "wandb" / line.split("wandb/", 1)[1].split(";")[0])
    assert "no wandb API key" in line and f"`wandb sync {run_dir}`" in line
    assert qlog.find_wandb_files(run_dir)
