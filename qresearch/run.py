"""One experiment: ``python -m qresearch.run [overrides]``; a sweep: ``python -m qresearch.run -m ...``.

A job: check the config and the scheme against the hardware target (fails in milliseconds,
before any data is loaded) → load data → float baseline (trained, or loaded from the cache
shared by every job with the same dataset, model, float training and seed) → float accuracy
→ PTQ baseline (quantize with calibration only) → QAT fine-tuning → QAT accuracy → the
target's deployment check where it has a runtime. ``result.json`` in the job folder is
rewritten (atomically) after every stage, so nothing computed is lost; its ``status`` ends as
``completed`` or ``failed`` (with the error's type, message, traceback and stage). A failed job
never stops a sweep: the task returns NaN. Re-running a sweep skips jobs whose result.json
is completed with the same config hash and the same data (fingerprint of the arrays loaded).
Every job is also one wandb run, grouped by sweep.

The Hydra task function ``main`` returns the QAT accuracy, which sweepers (Optuna) maximise.
"""
from __future__ import annotations

import logging
import math
import os
import platform
import socket
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qresearch import config as qconfig
from qresearch.config import COORDINATE_KEYS, NON_SEMANTIC_KEYS, config_hash, to_dict
from qresearch.errors import ConfigError, IncompatibleTargetError
from qresearch.paths import CONF_DIR
from qresearch.plugins import PluginImportError, import_plugins, overrides_plugins
from qresearch.results import (COMPLETED, FAILED, RESULT_FILE, RUNNING, STORE_FILE, append_jsonl,
                               completed_result, load_results, write_json_atomic)

log = logging.getLogger("qresearch.run")
ROLES = ("weights", "activations")


# ------------------------------------------------------------------ job context
class JobContext:
    """Where a job writes and how it was launched (from Hydra, or defaults for direct calls)."""

    def __init__(self, cfg: DictConfig):
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
            self.output_dir = Path(cfg.paths.output_dir) / "runs" / stamp
        self.output_dir = self.output_dir.resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)

    @property
    def store(self) -> Path:
        """The append-only results store: one per sweep folder (runs: one under outputs/runs)."""
        if self.sweep_dir is not None:
            return self.sweep_dir.resolve() / STORE_FILE
        return self.output_dir.parent.parent / STORE_FILE


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def variant_label(algorithm: str, overrides: List[str]) -> str:
    """The algorithm, plus every override that is not a run coordinate (seed, bits, target, ...)."""
    extra = sorted(o.lstrip("+~") for o in overrides
                   if _key(o) not in COORDINATE_KEYS and _key(o).split(".")[0] not in NON_SEMANTIC_KEYS
                   and not _key(o).startswith("hydra"))
    return f"{algorithm}[{','.join(extra)}]" if extra else algorithm


def algorithm_name(scheme: Dict[str, Any]) -> str:
    """A name for a scheme given as data (no preset name): its quantizers, e.g. "pact/lsq"."""
    names = []
    for role in ROLES:
        q = scheme.get(role)
        names.append((q.get("quantizer") or q.get("name") or "?") if isinstance(q, dict) else "float")
    return names[0] if names[0] == names[1] else f"{names[0]}/{names[1]}"


# ------------------------------------------------------------------ scheme x target
def scheme_dict(cfg) -> Dict[str, Any]:
    """The scheme config as a dict, with the ``bits`` shorthand applied."""
    spec = to_dict(cfg.scheme)
    if cfg.get("bits") is not None:
        for role in ROLES:
            if isinstance(spec.get(role), dict):
                spec[role]["bits"] = int(cfg.bits)
    return spec


def _bits(spec: Dict[str, Any], role: str) -> Optional[int]:
    q = spec.get(role)
    return int(q["bits"]) if isinstance(q, dict) and q.get("bits") is not None else None


def check_scheme(cfg, spec: Dict[str, Any]):
    """Validate the scheme and check it against the target. Returns (target, effective spec, coercions)."""
    from qresearch import hardware, schemes

    schemes.SchemeSpec.from_dict(spec)
    if not cfg.get("hardware"):
        return None, spec, []
    target = hardware.get(to_dict(cfg.hardware))
    constrained, coercions = hardware.constrain(spec, target, adapt=bool(cfg.adapt))
    eff = constrained.to_dict() if hasattr(constrained, "to_dict") else dict(constrained)
    if cfg.adapt and not cfg.get("adapt_bits", False):
        changed = []
        for role in ROLES:
            want, got = _bits(spec, role), _bits(eff, role)
            if want is not None and got is not None and want != got:
                allowed = list(target.rules(role).bits)
                changed.append(f"{role} at {want} bits (allowed: {allowed})")
        if changed:
            raise IncompatibleTargetError(
                f"target {target.name!r} cannot run {' and '.join(changed)}. Pick a bit width the target "
                f"supports, another hardware target, or set adapt_bits=true to snap to the nearest allowed width.")
    return target, eff, list(coercions)


# ------------------------------------------------------------------ the job
class _DropRetracingWarnings(logging.Filter):
    """Every job builds new models, so Keras' "triggered tf.function retracing" warning is expected noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_DropRetracingWarnings())


def _setup_tf(cfg) -> None:
    from qresearch._compat import keras, tf

    keras.backend.clear_session()  # jobs sharing a process must not share Keras state
    keras.utils.set_random_seed(int(cfg.seed))
    if cfg.get("deterministic", True):
        tf.config.experimental.enable_op_determinism()
    if cfg.get("threads"):
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(cfg.threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(cfg.threads))
        except RuntimeError:  # TensorFlow already started in this process: keep its setting
            pass


_GIT: Dict[str, str] = {}


def code_version() -> Dict[str, str]:
    """The checkout's git commit (and ``dirty`` when tracked files differ from it): a resumed sweep
    keeps results of earlier code, so each result says which code computed it. Empty outside git."""
    if not _GIT:
        import subprocess

        from qresearch.paths import REPO_DIR

        try:
            def git(*args: str) -> str:
                return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True,
                                      timeout=10, check=True).stdout.strip()

            _GIT["git_commit"] = git("rev-parse", "HEAD")
            _GIT["git_dirty"] = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
        except (OSError, subprocess.SubprocessError):
            _GIT["git_commit"] = ""
    return {k: v for k, v in _GIT.items() if v}


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), **code_version()}
    for pkg in ("qresearch", "tensorflow", "tf-keras", "tensorflow-model-optimization", "hydra-core", "wandb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Job:
    """State of one job: its record (result.json) and its wandb run."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.ctx = JobContext(cfg)
        self.config = to_dict(cfg)
        self.hash = config_hash(cfg)
        self.t0 = time.perf_counter()
        self.stage = "setup"
        algorithm = self.ctx.choices.get("scheme") or algorithm_name(self.config.get("scheme") or {})
        hw = self.config.get("hardware") or {}
        model = self.config.get("model") or {}
        self.record: Dict[str, Any] = {
            "status": RUNNING, "config": self.config, "config_hash": self.hash, "overrides": self.ctx.overrides,
            "choices": self.ctx.choices, "output_dir": str(self.ctx.output_dir),
            "labels": {
                "sweep": self.config.get("sweep_name") if self.ctx.multirun else None,
                "dataset": (self.config.get("dataset") or {}).get("name"),
                "model": model.get("name") or model.get("_target_"),
                "algorithm": algorithm,
                "variant": variant_label(algorithm, self.ctx.overrides),
                "target": hw.get("name") if hw else "none",
                "weight_bits": None, "activation_bits": None,
                "seed": self.config.get("seed"),
            },
            "metrics": {}, "times": {}, "coercions": [], "error": None,
            "started_at": _now(), "finished_at": None,
            "host": socket.gethostname(), "pid": os.getpid(), "versions": _versions(),
        }
        self.logger = None

    @property
    def path(self) -> Path:
        return self.ctx.output_dir / RESULT_FILE

    def save(self) -> None:
        write_json_atomic(self.path, self.record)

    def timed(self, name: str):
        job = self

        class _T:
            def __enter__(self_):
                job.stage = name
                self_.t = time.perf_counter()

            def __exit__(self_, *exc):
                job.record["times"][f"{name}_s"] = round(time.perf_counter() - self_.t, 4)
                if exc[0] is None:
                    job.save()
                return False

        return _T()

    def metric(self, **values) -> None:
        self.record["metrics"].update(values)

    # -------------------------------------------------------------- stages
    def execute(self) -> None:
        import qresearch
        from qresearch import data as qdata
        from qresearch import hardware, models, schemes, training

        cfg = self.cfg
        with self.timed("setup"):
            _setup_tf(cfg)
            spec = scheme_dict(cfg)
            # requested widths first, so a run the checks reject is still labelled by them
            try:
                self.record["labels"].update(weight_bits=_bits(spec, "weights"),
                                             activation_bits=_bits(spec, "activations"))
            except (TypeError, ValueError):  # not a number: validation below names it
                pass
            qconfig.validate(cfg)
            qconfig.check_bits_shorthand(cfg.get("bits"), [_key(o) for o in self.ctx.overrides])
            target, eff, coercions = check_scheme(cfg, spec)
            self.record["scheme"] = eff
            self.record["coercions"] = coercions
            self.record["labels"].update(weight_bits=_bits(eff, "weights"), activation_bits=_bits(eff, "activations"))
            if self.logger is not None:
                self.logger.summary({"labels": self.record["labels"]})

        with self.timed("data"):
            cache_dir = cfg.paths.cache_dir
            ds = qdata.load_dataset(to_dict(cfg.dataset), cache_dir=cache_dir)
            self.record["dataset"] = ds.describe()
            self.record["labels"]["dataset"] = ds.name  # npz: the file's name; _target_: the function

        with self.timed("float"):
            tcfg = cfg.training
            float_phase, qat_phase = to_dict(tcfg.float), to_dict(tcfg.qat)
            seed = int(cfg.seed)
            key = training.baseline_key(to_dict(cfg.dataset), to_dict(cfg.model), float_phase, seed,
                                        data_fingerprint=ds.fingerprint())

            def build():
                _setup_tf(cfg)
                return models.build_model(to_dict(cfg.model), ds.input_shape, ds.num_classes)

            def train(model):
                self.stage = "float"
                return training.fit(model, ds, float_phase, "float", seed, verbose=int(tcfg.verbose),
                                    log_fn=self._log)

            float_model, info = training.float_baseline(build, train, key, cache_dir or None)
            self.record["float_baseline"] = {k: info.get(k) for k in ("cache", "key", "path", "wall_s", "epochs",
                                                                      "step_time_s")}
            # Same random state after this stage whether the baseline came from the cache or not.
            from qresearch._compat import keras

            keras.utils.set_random_seed(seed + 1)

        with self.timed("float_eval"):
            ebs = int(tcfg.eval_batch_size)
            float_acc = training.accuracy(float_model, ds.x_test, ds.y_test, ebs)
            float_step = training.time_float_steps(float_model, ds, qat_phase, int(tcfg.timing_steps), seed)
            self.metric(float_accuracy=float_acc, float_step_time_s=float_step,
                        float_params=int(float_model.count_params()))
            log.info("float accuracy %.4f (baseline %s)", float_acc, info.get("cache"))

        with self.timed("ptq"):
            self.stage = "ptq"
            calib = ds.calibration(int(tcfg.calibration_samples), seed)
            qat_model = qresearch.quantize(float_model, spec, hardware=target, calibration_data=calib,
                                           adapt=bool(cfg.adapt))
            ptq_acc = training.accuracy(qat_model, ds.x_test, ds.y_test, ebs)
            report = schemes.describe(qat_model)
            memory = dict(report.get("memory") or {})
            self.metric(ptq_accuracy=ptq_acc, weight_memory_bits=memory.get("quantized_bits"),
                        float_weight_memory_bits=memory.get("float32_bits"), weight_memory_ratio=memory.get("ratio"))
            self.record["quantized_layers"] = len(report.get("layers") or [])
            self.record["float_layers"] = report.get("float_layers")
            log.info("PTQ accuracy %.4f", ptq_acc)

        with self.timed("qat"):
            fit = training.fit(qat_model, ds, qat_phase, "qat", seed, verbose=int(tcfg.verbose), log_fn=self._log)
            self.record["qat_history"] = fit["history"]
            qat_step = fit["step_time_s"]
            self.metric(qat_step_time_s=qat_step,
                        step_time_ratio=(qat_step / float_step) if qat_step and float_step else None)

        with self.timed("qat_eval"):
            qat_acc = training.accuracy(qat_model, ds.x_test, ds.y_test, ebs)
            self.metric(qat_accuracy=qat_acc)
            log.info("QAT accuracy %.4f", qat_acc)
            if cfg.get("save_model"):
                qat_model.save(str(self.ctx.output_dir / "qat_model"))

        self.metric(deployed_accuracy=None)
        if target is not None and cfg.get("deploy", True) and target.has_runtime:
            with self.timed("deploy"):
                try:
                    rep = hardware.verify(qat_model, target, ds.x_test, ds.y_test,
                                          batch_size=int(tcfg.eval_batch_size))
                    rep = {k: v for k, v in rep.items() if k not in ("tflite_model",)}
                    self.record["deploy"] = rep
                    self.metric(deployed_accuracy=rep.get("deployed_accuracy"),
                                deploy_argmax_agreement=rep.get("argmax_agreement"),
                                deploy_integer_only=rep.get("integer_only"),
                                deploy_model_size_bytes=rep.get("model_size_bytes"))
                    log.info("deployed (%s) accuracy %.4f", target.runtime, rep.get("deployed_accuracy"))
                except Exception as exc:  # a conversion failure is a finding about the QAT model, not a crash
                    self.record["deploy"] = {"error": _error(exc, "deploy")}
                    log.warning("deployment check on %s failed: %s: %s", target.name, type(exc).__name__, exc)
        else:
            self.record["deploy"] = {"skipped": "target has no runtime here" if target is not None
                                     and not target.has_runtime else "deploy disabled or no target"}

    def _log(self, row: Dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log(row)


def _error(exc: BaseException, stage: str) -> Dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "stage": stage,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def _unresolvable(cfg: DictConfig, exc: Exception) -> float:
    from omegaconf import OmegaConf

    ctx = JobContext(cfg) if not isinstance(exc, OSError) else None
    err = _error(exc, "config")
    log.error("job config cannot be resolved: %s: %s", err["type"], err["message"])
    if ctx is not None:
        write_json_atomic(ctx.output_dir / RESULT_FILE, {
            "status": FAILED, "config": OmegaConf.to_container(cfg, resolve=False), "config_hash": None,
            "overrides": ctx.overrides, "labels": {}, "metrics": {}, "times": {}, "error": err,
            "started_at": _now(), "finished_at": _now()})
        if not ctx.multirun and ctx.choices:
            print(f"\nrun failed: {err['type']}: {err['message']}", file=sys.stderr)
            raise SystemExit(1)
    return math.nan


def same_data(cfg: DictConfig, prev: Dict[str, Any]) -> bool:
    """Whether this job's data is the data ``prev`` (a completed result) was computed on. The config
    hash cannot tell: a dataset file rewritten in place keeps its path. So load the data and compare
    fingerprints: loading takes seconds, the job it may skip minutes. A record without a fingerprint
    (older code) or data that fails to load (the job then records why) means: run again."""
    from qresearch import data as qdata

    recorded = (prev.get("dataset") or {}).get("fingerprint")
    if not recorded:
        return False
    try:
        now = qdata.load_dataset(to_dict(cfg.dataset), cache_dir=cfg.paths.cache_dir).fingerprint()
    except Exception:
        return False
    if now != recorded:
        log.info("re-running: the data changed since the job completed (fingerprint %s, now %s)", recorded, now)
    return now == recorded


def run_job(cfg: DictConfig) -> float:
    """Run one job (never raises for an experiment failure; returns the QAT accuracy or NaN)."""
    from qresearch.logger import RunLogger

    try:
        job = Job(cfg)
    except Exception as exc:  # the config itself cannot be resolved: still record it, still no crash
        return _unresolvable(cfg, exc)
    if job.ctx.multirun and cfg.get("resume", True):
        prev = completed_result(job.ctx.output_dir, job.hash)
        if prev is not None and same_data(cfg, prev):
            acc = (prev.get("metrics") or {}).get("qat_accuracy")
            log.info("skipping %s: completed earlier with the same config and data (qat_accuracy=%s)",
                     job.ctx.name, acc)
            return float(acc) if acc is not None else math.nan
    job.save()
    status, exit_code = FAILED, 1
    interrupted: Optional[BaseException] = None
    try:
        job.logger = RunLogger(to_dict(cfg.logger), {**job.config, "labels": job.record["labels"],
                                                      "config_hash": job.hash},
                               name=job.ctx.name, group=cfg.logger.get("group") or cfg.get("sweep_name"),
                               job_dir=str(job.ctx.output_dir))
        job.stage = "plugins"
        import_plugins(cfg.get("plugins"))  # launcher workers get only the config, not the parent's imports
        job.execute()
        status, exit_code = COMPLETED, 0
    except (KeyboardInterrupt, SystemExit) as exc:
        job.record["error"] = _error(exc, job.stage)
        status, interrupted = "interrupted", exc
    except Exception as exc:  # recorded; a sweep goes on
        job.record["error"] = _error(exc, job.stage)
        log.error("job %s failed at stage %s: %s: %s", job.ctx.name, job.stage, type(exc).__name__, exc)
    finally:
        job.record["status"] = status
        job.record["finished_at"] = _now()
        job.record["times"]["total_s"] = round(time.perf_counter() - job.t0, 4)
        job.save()
        try:
            append_jsonl(job.ctx.store, {k: v for k, v in job.record.items() if k not in ("qat_history",)})
        except OSError as exc:
            log.warning("could not append to %s: %s", job.ctx.store, exc)
        if job.logger is not None:
            err = job.record.get("error") or {}
            job.logger.summary({"status": status, "config_hash": job.hash, **job.record["metrics"],
                                **{f"time/{k}": v for k, v in job.record["times"].items()},
                                **({"error/type": err.get("type"), "error/message": err.get("message")}
                                   if err else {})})
            job.logger.finish(exit_code)
    if interrupted is not None:
        raise interrupted
    acc = job.record["metrics"].get("qat_accuracy")
    if status != COMPLETED:
        if not job.ctx.multirun and job.ctx.choices:  # a single CLI run: exit non-zero after recording
            err = job.record["error"]
            print(f"\nrun failed at stage {err['stage']}: {err['type']}: {err['message']}\n"
                  f"(traceback and partial results in {job.path})", file=sys.stderr)
            raise SystemExit(1)
        return math.nan
    print(f"result: {job.path}  qat_accuracy={acc:.4f}")
    return float(acc)


# ------------------------------------------------------------------ Hydra entry points
class TrialFailed(RuntimeError):
    """A job failed in a sweeper that marks failed trials by an exception (its result.json has the error)."""


#: Sweepers that take a failed job's exception as "this trial failed" and go on (up to their
#: max_failure_rate), but crash on a NaN value: hydra-optuna-sweeper 1.3 tells optuna the NaN,
#: optuna refuses it, and the sweeper's fallback tells it again and raises out of the sweep.
#: Other sweepers (the basic one) stop at a raised job, so for them a failure is NaN.
RAISE_ON_FAILURE_SWEEPERS = ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",)


def _sweeper_target() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().sweeper.get("_target_") or "")
    except Exception:  # called without Hydra (tests, notebooks)
        return ""


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """The Hydra task function: one job; returns its QAT accuracy (NaN when it failed; an Optuna
    sweep gets TrialFailed instead, which marks the trial failed)."""
    value = run_job(cfg)
    if math.isnan(value) and _sweeper_target() in RAISE_ON_FAILURE_SWEEPERS:
        raise TrialFailed(f"job failed (error and partial results in its result.json under {cfg.paths.output_dir})")
    return value


class SweepSummary(Callback):
    """Hydra callback: check the sweep's shared config before any job starts; afterwards, count
    the sweep's results and say how to report them."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The config with the non-swept overrides: a bad value there would fail every job, so
        # fail once, now, with the valid choices (swept values are checked by each job).
        # Hydra turns a callback's exceptions into warnings, so stop with SystemExit.
        try:
            import_plugins(config.get("plugins"))  # also those an experiment file or conf/local names
            hc = config.get("hydra") or {}
            # A swept dataset key (dataset.path=a.npz,b.npz) is unset in this shared config: leave
            # the dataset's own check (its file, its target) to each job, which has its value.
            swept = self._swept_keys(hc)
            qconfig.validate(config, check_data=not any(k.split(".")[0] == "dataset" for k in swept))
            # the sweep's grid (file) and command-line values: key -> value text
            given = {str(k): str(v) for k, v in dict((hc.get("sweeper") or {}).get("params") or {}).items()}
            for o in (hc.get("overrides") or {}).get("task") or []:
                given[_key(o)] = o.split("=", 1)[1] if "=" in o else ""
            bits = config.get("bits")
            if bits is None and given.get("bits", "null") not in ("null", ""):
                bits = given["bits"]
            qconfig.check_bits_shorthand(bits, given)
        except (ConfigError, PluginImportError) as exc:
            print(f"Error in the sweep's config (no job was started): {exc}", file=sys.stderr)
            raise SystemExit(2)

    @staticmethod
    def _swept_keys(hc: Any) -> set:
        """Keys the sweep gives several values (its file's grid and the command line)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        lines = [f"{k}={v}" for k, v in dict((hc.get("sweeper") or {}).get("params") or {}).items()]
        lines += [str(o) for o in (hc.get("overrides") or {}).get("task") or []]
        try:
            return {o.key_or_group for o in OverridesParser.create().parse_overrides(lines) if o.is_sweep_override()}
        except Exception:  # an unparsable grid is Hydra's to report
            return set()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = load_results([sweep_dir])
        counts: Dict[str, int] = {}
        for r in records:
            counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no results"
        print(f"\nsweep {sweep_dir}: {summary}.\nreport: python -m qresearch.report {sweep_dir}")
        if records:
            log_sweep_report(sweep_dir, config)


def log_sweep_report(sweep_dir: Path, config: DictConfig) -> None:
    """Write the sweep's report next to its runs and log it to wandb in the sweep's group, so the
    comparison (accuracy against bit width) lives where the runs do. Never fails the sweep."""
    lcfg = to_dict(config.get("logger") or {})
    if str(lcfg.get("mode", "auto")).lower() == "disabled":
        return
    try:
        from qresearch.logger import log_report
        from qresearch.report import make_report

        rep = make_report([sweep_dir], quiet=True)
        group = lcfg.get("group") or config.get("sweep_name")
        where = log_report(rep, lcfg, group, str(sweep_dir))
        print(f"wandb: the sweep's report (table, plot, results.csv) is logged in group {group!r}")
        if where:  # offline: one command uploads the jobs' runs and the report
            print(f"wandb offline: upload the whole sweep later with `wandb sync {sweep_dir}/*/wandb/offline-run-* "
                  f"{sweep_dir}/wandb/offline-run-*`")
    except Exception as exc:  # the results on disk are the record; the report can be made again
        log.warning("the sweep's report could not be logged to wandb: %s: %s", type(exc).__name__, exc)


#: Hydra's flags that take no value: accepted anywhere on the line (argparse wants them before the overrides).
_BARE_FLAGS = ("-m", "--multirun")


def flags_first(args: List[str]) -> List[str]:
    """``scheme=lsq -m bits=4,2`` -> ``-m scheme=lsq bits=4,2`` (Hydra's parser refuses the first form)."""
    return [a for a in args if a in _BARE_FLAGS] + [a for a in args if a not in _BARE_FLAGS]


def cli(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # model._target_=... (or dataset._target_) alone also picks model=custom: see with_implied_groups
    args = qconfig.with_implied_groups(flags_first(list(args)))
    sys.argv[1:] = args
    try:
        # Before Hydra composes: every check from here on (override keys, the sweep's shared
        # config, the scheme) must already see the names the plugins register.
        import_plugins(overrides_plugins(args))
    except PluginImportError as exc:
        print(f"Error importing plugins (nothing was run): {exc}", file=sys.stderr)
        raise SystemExit(2)
    try:
        qconfig.check_overrides(args)
    except ConfigError as exc:
        print(f"Error in the overrides: {exc}", file=sys.stderr)
        raise SystemExit(2)
    main()


if __name__ == "__main__":
    # Run through the importable module, so launchers that pickle the task function
    # (joblib, submitit, ray) find it as qresearch.run.main.
    from qresearch.run import cli as _cli

    _cli()
