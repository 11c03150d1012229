"""Weights & Biases logging for one job, and a reader of wandb's ``.wandb`` record files.

Mode (``logger.mode``): ``online``, ``offline``, ``disabled``, or ``auto`` (the default:
online when ``WANDB_API_KEY`` is set, otherwise offline, so nothing ever waits on the
network without credentials; with a key but no route to the server it logs offline at once). One wandb run per job, grouped by sweep name, with the
resolved config. A logging failure never fails the experiment: the logger warns and
becomes a no-op. ``finish()`` is safe to call more than once; call it in ``finally``.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

log = logging.getLogger(__name__)

API_KEY_ENV = "WANDB_API_KEY"


def have_credentials() -> bool:
    """A wandb API key in the environment, or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get(API_KEY_ENV):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(mode: Optional[str]) -> str:
    mode = (mode or "auto").lower()
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode == "auto":
        return "online" if have_credentials() else "offline"
    if mode == "online" and not have_credentials():
        log.warning("logger.mode=online but %s is not set: wandb may prompt or fail; "
                    "falling back to offline (sync later with `wandb sync`)", API_KEY_ENV)
        return "offline"
    return mode


_REACHABLE: Dict[str, bool] = {}


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether wandb's server answers a TCP connect within ``timeout`` s (checked once per process).

    Without it, an online ``wandb.init`` with a key but no network waits ``init_timeout`` (60 s)
    in every job of a sweep, then logs nothing; the logger goes offline at once instead."""
    import socket
    from urllib.parse import urlparse

    url = os.environ.get("WANDB_BASE_URL") or ""
    if not url:
        try:
            import wandb

            url = str(wandb.Settings().base_url)
        except Exception:
            url = "https://api.wandb.ai"
    if url not in _REACHABLE:
        parsed = urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
            _REACHABLE[url] = True
        except (OSError, ValueError):
            _REACHABLE[url] = False
    return _REACHABLE[url]


class RunLogger:
    """One wandb run for one job."""

    def __init__(self, cfg: Mapping[str, Any], config: Dict[str, Any], name: str, group: Optional[str],
                 job_dir: Optional[str] = None, job_type: str = "qat"):
        cfg = dict(cfg or {})
        self.mode = resolve_mode(cfg.get("mode"))
        self.log_history = bool(cfg.get("log_history", True))
        self.run = None
        self.dir: Optional[str] = None
        if self.mode == "disabled":
            return
        if self.mode == "online" and not wandb_reachable():
            log.warning("wandb's server cannot be reached: logging offline instead (sync later with `wandb sync`)")
            self.mode = "offline"
        try:
            import wandb

            self.dir = str(Path(cfg.get("dir") or job_dir or ".").expanduser().resolve())
            Path(self.dir).mkdir(parents=True, exist_ok=True)
            settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True,
                                      save_code=False, init_timeout=60.0)

            def init(mode: str):
                return wandb.init(
                    project=cfg.get("project") or "qresearch", entity=cfg.get("entity"), group=group,
                    name=name, job_type=job_type, tags=list(cfg.get("tags") or []), config=config,
                    dir=self.dir, mode=mode, reinit="finish_previous", settings=settings)

            try:
                self.run = init(self.mode)
            except Exception as exc:
                if self.mode != "online":
                    raise
                # server reached but init failed (bad key, quota): keep the log, offline
                log.warning("wandb.init online failed (%s: %s); logging offline instead", type(exc).__name__, exc)
                self.mode = "offline"
                self.run = init("offline")
        except Exception as exc:  # logging must not break the experiment
            log.warning("wandb.init failed (%s: %s); continuing without wandb", type(exc).__name__, exc)
            self.run = None
        if self.run is not None and self.mode == "offline":
            log.info(offline_notice(getattr(self.run.settings, "sync_dir", None) or self.dir))

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, row: Dict[str, Any]) -> None:
        if self.run is not None and self.log_history:
            try:
                self.run.log(row)
            except Exception as exc:
                log.warning("wandb log failed: %s", exc)

    def summary(self, values: Dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            for k, v in _flatten(values).items():
                self.run.summary[k] = v
        except Exception as exc:
            log.warning("wandb summary failed: %s", exc)

    def finish(self, exit_code: int = 0) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as exc:
                log.warning("wandb finish failed: %s", exc)
                return
            if self.mode == "offline":
                self._wait_written(getattr(getattr(run, "settings", None), "sync_file", None))

    def _wait_written(self, path: Optional[str], timeout: float = 15.0) -> None:
        """wandb's writer can still be flushing the .wandb file when ``finish`` returns (seen on a
        loaded machine: a read right after it found no records); wait until its exit record is there."""
        path = path if path and Path(path).is_file() else self.run_file()
        if not path:
            return
        try:
            done = read_wandb_run(path, wait_s=timeout, recent_s=None)["exit_code"] is not None
        except Exception:  # still cut off mid-record after the timeout
            done = False
        if not done:
            log.warning("wandb run file %s has no exit record after %.0f s", path, timeout)

    def run_file(self) -> Optional[str]:
        """Path of this run's .wandb file (offline mode), for reading back."""
        if self.dir is None:
            return None
        files = sorted(Path(self.dir).glob("wandb/*run-*/run-*.wandb"), key=os.path.getmtime)
        return str(files[-1]) if files else None


def offline_notice(run_dir: Optional[str]) -> str:
    """The one line that tells a user their run was logged offline, where, and how to upload it."""
    why = "no wandb API key" if not have_credentials() else "offline mode or no route to wandb"
    return f"wandb offline ({why}): run saved in {run_dir}; upload it later with `wandb sync {run_dir}`"


# ------------------------------------------------------------------ a sweep's report
#: Columns of the report's run table in wandb (the results.csv columns that are not file paths).
REPORT_COLUMNS_DROPPED = ("path",)


def log_report(report: Mapping[str, Any], cfg: Mapping[str, Any], group: Optional[str],
               directory: Optional[str] = None, name: str = "report") -> Optional[str]:
    """Log a report (``qresearch.report.make_report``'s result) as one wandb run of job type
    ``report`` in the sweep's group: every run as a ``wandb.Table``, the accuracy table (mean ±
    std per cell) as another, ``accuracy_vs_bits.png`` as an image, results.csv and report.md as
    an artifact. So the comparison lives next to the runs it summarises, offline too.
    Returns the run's .wandb file (offline) or None; never raises.
    """
    from qresearch.report import CSV_COLUMNS, summary_rows

    logger = RunLogger(cfg, {"sources": [str(s) for s in report.get("sources") or []],
                             "runs": len(report.get("rows") or [])},
                       name=name, group=group, job_dir=directory, job_type="report")
    if logger.run is None:
        return None
    try:
        import wandb

        columns = [c for c in CSV_COLUMNS if c not in REPORT_COLUMNS_DROPPED]
        runs = wandb.Table(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in report["rows"]])
        summary = summary_rows(report["tables"])
        sum_cols = list(summary[0]) if summary else ["target"]
        row: Dict[str, Any] = {"report/runs": runs,
                               "report/accuracy": wandb.Table(columns=sum_cols,
                                                              data=[[_cell(s[c]) for c in sum_cols] for s in summary])}
        if report.get("plot"):
            row["report/accuracy_vs_bits"] = wandb.Image(str(report["plot"]))
        for panel in report.get("pareto") or []:  # accuracy vs cost (qresearch.pareto), when runs have cost data
            if panel.get("plot"):
                row[f"report/pareto_{panel['axis']}"] = wandb.Image(str(panel["plot"]))
        logger.run.log(row)
        artifact = wandb.Artifact(_artifact_name(f"{group or 'runs'}-results"), type="results")
        for path in (report.get("csv"), report.get("markdown")):
            if path and Path(path).is_file():
                artifact.add_file(str(path))
        logger.run.log_artifact(artifact)
        logger.summary({"completed": len(report.get("completed") or []), "failed": len(report.get("failed") or [])})
    except Exception as exc:  # the report on disk is the record; wandb is a copy
        log.warning("logging the report to wandb failed (%s: %s)", type(exc).__name__, exc)
    sync_file = getattr(getattr(logger.run, "settings", None), "sync_file", None)
    mode = logger.mode
    logger.finish()
    return str(sync_file) if mode == "offline" and sync_file else None


def _cell(v: Any) -> Any:
    """A table cell wandb accepts in a typed column: numbers and text, None for missing."""
    if v is None or isinstance(v, (int, float, str, bool)):
        return v
    return str(v)


def _artifact_name(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:128]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------ .wandb reader
# A .wandb file is a LevelDB-style log: a 7-byte file header (":W&B", magic 0xBEE1,
# version), then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32, length,
# type: 1 full, 2 first, 3 middle, 4 last) and a slice of a serialised protobuf Record.
_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_wandb_records(path) -> Iterator[bytes]:
    """Raw serialised records of a .wandb file (CRC-checked)."""
    data = Path(path).read_bytes()
    ident, magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a wandb record file")
    pos, pending = _HEADER.size, b""
    while pos + _CHUNK.size <= len(data):
        space = _BLOCK - pos % _BLOCK
        if space < _CHUNK.size:  # block trailer: padding
            pos += space
            continue
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding / unwritten tail
            pos += space
            continue
        pos += _CHUNK.size
        chunk = data[pos:pos + length]
        pos += length
        if len(chunk) < length:
            break  # truncated (run still being written)
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos - length}")
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def _items(items) -> Dict[str, Any]:
    out = {}
    for it in items:
        key = "/".join(list(it.nested_key)) if len(it.nested_key) else it.key
        try:
            out[key] = json.loads(it.value_json)
        except ValueError:
            out[key] = it.value_json
    return out


def read_wandb_run(path, wait_s: float = 30.0, recent_s: Optional[float] = 10.0) -> Dict[str, Any]:
    """Recover a run from its .wandb file: ids, group, name, config, history rows and summary.

    wandb's service process writes the file asynchronously and may still be flushing it after
    ``finish()`` returns, so this waits (up to ``wait_s``) for the run's exit record, while the
    file was written in the last ``recent_s`` seconds (None: always): a killed run's file, never
    finished, is read at once.
    """
    deadline = time.monotonic() + wait_s

    def waiting() -> bool:
        if time.monotonic() > deadline:
            return False
        try:
            return recent_s is None or time.time() - os.path.getmtime(path) < recent_s
        except OSError:
            return False

    while True:
        try:
            out = _read_wandb_records(path)
        except Exception:  # a record cut off mid-write: read again
            if not waiting():
                raise
            out = None
        if out is not None and (out["exit_code"] is not None or not waiting()):
            return out
        time.sleep(0.2)


def _read_wandb_records(path) -> Dict[str, Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    out: Dict[str, Any] = {"config": {}, "summary": {}, "history": [], "run": {}, "artifacts": [],
                          "exit_code": None}
    for raw in iter_wandb_records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "project": r.project, "group": r.run_group, "name": r.display_name,
                          "job_type": r.job_type, "tags": list(r.tags)}
            out["config"].update(_items(r.config.update))
        elif kind == "config":
            out["config"].update(_items(rec.config.update))
            for it in rec.config.remove:
                out["config"].pop(it.key, None)
        elif kind == "history":
            out["history"].append(_items(rec.history.item))
        elif kind == "summary":
            out["summary"].update(_items(rec.summary.update))
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type,
                                     "files": [m.path for m in rec.artifact.manifest.contents]})
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    out["config"].pop("_wandb", None)
    return out


def find_wandb_files(folder) -> List[str]:
    return sorted(str(p) for p in Path(folder).rglob("run-*.wandb"))
