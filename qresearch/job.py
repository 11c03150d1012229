"""One job's bookkeeping: where it writes (``JobContext``), its record (``result.json``, rewritten
atomically after every stage so nothing computed is lost), the timing of its stages, and the one
place where a failure is recorded (``JobRecord.recording``): a failed job is written down, never
raised, so a sweep goes on."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from qresearch.results import COMPLETED, FAILED, RESULT_FILE, RUNNING, STORE_FILE, append_jsonl, write_json_atomic

log = logging.getLogger("qresearch.run")
INTERRUPTED = "interrupted"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def error_info(exc: BaseException, stage: str) -> Dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "stage": stage,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


class JobContext:
    """Where a job writes and how it was launched (from Hydra, or defaults for direct calls)."""

    def __init__(self, output_root: str):
        self.multirun = False
        self.overrides: List[str] = []
        self.choices: Dict[str, Any] = {}
        self.name = "run"
        self.sweep_dir: Optional[Path] = None
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
        except Exception:  # called directly with a composed config (tests, notebooks)
            hc = None
        if hc is not None:
            self.multirun = str(hc.mode).endswith("MULTIRUN")
            self.output_dir = Path(hc.runtime.output_dir)
            self.overrides = list(hc.overrides.task)
            self.choices = {k: v for k, v in dict(hc.runtime.choices).items()}
            self.name = hc.job.override_dirname or hc.job.name
            if self.multirun:
                self.sweep_dir = Path(hc.sweep.dir)
        else:
            stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
            self.output_dir = Path(output_root) / "runs" / stamp
        self.output_dir = self.output_dir.resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)

    @property
    def store(self) -> Path:
        """The append-only results store: one per sweep folder (runs: one under outputs/runs)."""
        if self.sweep_dir is not None:
            return self.sweep_dir.resolve() / STORE_FILE
        return self.output_dir.parent.parent / STORE_FILE

    @property
    def cli_single_run(self) -> bool:
        """A single run from the command line (Hydra's choices are known): it exits non-zero on failure."""
        return not self.multirun and bool(self.choices)


class JobRecord:
    """The job's result.json: status, config, labels, metrics, stage times, the error."""

    def __init__(self, ctx: JobContext, **fields: Any):
        self.ctx = ctx
        self.path = ctx.output_dir / RESULT_FILE
        self.t0 = time.perf_counter()
        self.stage_name = "setup"
        self.logger = None  # a RunLogger once created: gets the final summary and exit code
        self.data: Dict[str, Any] = {
            "status": RUNNING, **fields, "overrides": ctx.overrides, "choices": ctx.choices,
            "output_dir": str(ctx.output_dir), "metrics": {}, "times": {}, "coercions": [], "error": None,
            "started_at": now(), "finished_at": None, "host": socket.gethostname(), "pid": os.getpid()}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def metric(self, **values: Any) -> None:
        self.data["metrics"].update(values)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage (``times[<name>_s]``); a failure inside is attributed to it; saved when it ends well."""
        self.stage_name = name
        t = time.perf_counter()
        try:
            yield
        finally:
            self.data["times"][f"{name}_s"] = round(time.perf_counter() - t, 4)
        self.save()

    @property
    def status(self) -> str:
        return self.data["status"]

    @contextlib.contextmanager
    def recording(self) -> Iterator["JobRecord"]:
        """Run the job's stages: an exception is recorded (status ``failed``) and swallowed; an
        interrupt is recorded (``interrupted``) and raised again. Either way the record is finished:
        saved, appended to the sweep's store, summarised to wandb."""
        self.save()
        status = FAILED
        try:
            yield self
            status = COMPLETED
        except (KeyboardInterrupt, SystemExit) as exc:
            self.data["error"] = error_info(exc, self.stage_name)
            status = INTERRUPTED
            raise
        except Exception as exc:  # recorded; a sweep goes on
            self.data["error"] = error_info(exc, self.stage_name)
            log.error("job %s failed at stage %s: %s: %s", self.ctx.name, self.stage_name, type(exc).__name__, exc)
        finally:
            self._finish(status)

    def _finish(self, status: str) -> None:
        self.data.update(status=status, finished_at=now())
        self.data["times"]["total_s"] = round(time.perf_counter() - self.t0, 4)
        self.save()
        try:  # the history stays in result.json: the store holds one short line per job
            append_jsonl(self.ctx.store, {k: v for k, v in self.data.items() if k != "qat_history"})
        except OSError as exc:
            log.warning("could not append to %s: %s", self.ctx.store, exc)
        if self.logger is not None:
            err = self.data.get("error") or {}
            self.logger.summary({"status": status, "config_hash": self.data.get("config_hash"),
                                 **self.data["metrics"], **{f"time/{k}": v for k, v in self.data["times"].items()},
                                 **({"error/type": err.get("type"), "error/message": err.get("message")}
                                    if err else {})})
            self.logger.finish(0 if status == COMPLETED else 1)
