"""Training: optimizers from config, ``fit`` with callbacks, accuracy, step timing, and the
float-baseline cache.

The float baseline of a sweep point depends only on (dataset, model, float training, seed),
the dataset both as configured and as loaded (its fingerprint): it is trained once, saved
under ``<cache_dir>/float/<key>/`` (written to a temporary folder and renamed into place,
under a file lock so parallel jobs wait instead of training it twice) and loaded by every
other point with the same key. A model with NaN or infinite weights is
never cached, and an entry holding any is discarded when read.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from qresearch._compat import keras, tf
from qresearch.config import Optimizer, PhaseConfig, QuantizerTraining, Schedule, phase_dict, stable_hash
from qresearch.errors import ConfigError, QResearchError
from qresearch.results import write_json_atomic

log = logging.getLogger(__name__)

#: Bump when the way a baseline is trained changes, so old cache entries are not reused.
CACHE_VERSION = 1
#: Dataset keys that say where data comes from, not what it is: not part of the cache key.
DATA_LOCATION_KEYS = ("data_dir", "download", "cache_dir")


class NaNLossError(QResearchError, FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteWeightsError(QResearchError, FloatingPointError):
    """Training left NaN or infinite weights (the loss can stay finite while they appear)."""


# ------------------------------------------------------------------ callbacks
class NaNGuard(keras.callbacks.Callback):
    """Stops training with NaNLossError as soon as the loss is not finite."""

    def __init__(self, phase: str):
        super().__init__()
        self.phase, self.epoch = phase, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NaNLossError(f"{self.phase} training: loss became {float(loss)} at epoch {self.epoch + 1}, "
                               f"batch {batch + 1} (lower training.{self.phase}.learning_rate or check the scheme)")


class BatchTimer(keras.callbacks.Callback):
    """Wall time of every training step (the logs' conversion to numpy synchronises each step)."""

    def __init__(self):
        super().__init__()
        self.times: List[float] = []
        self._t = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)

    def median(self, skip: int = 2) -> Optional[float]:
        """Median step time, leaving out the first ``skip`` steps (tracing, warm-up)."""
        t = self.times[skip:] if len(self.times) > skip + 2 else self.times
        return statistics.median(t) if t else None


class EpochLogger(keras.callbacks.Callback):
    """Hands each epoch's logs, prefixed by phase, to ``log_fn`` (e.g. wandb.log)."""

    def __init__(self, phase: str, log_fn: Callable[[Dict[str, float]], None]):
        super().__init__()
        self.phase, self.log_fn = phase, log_fn

    def on_epoch_end(self, epoch, logs=None):
        row = {f"{self.phase}/{k}": float(v) for k, v in (logs or {}).items()}
        row[f"{self.phase}/epoch"] = epoch + 1
        self.log_fn(row)


# ------------------------------------------------------------------ optimisation
def make_optimizer(phase: PhaseConfig, total_steps: int):
    """A tf_keras optimizer for one phase's config (optimizer, learning_rate, schedule, ...)."""
    lr: Any = float(phase.learning_rate)
    if phase.schedule is Schedule.cosine and total_steps > 0:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=int(total_steps))
    kw: Dict[str, Any] = {"learning_rate": lr}
    if phase.clipnorm:
        kw["clipnorm"] = float(phase.clipnorm)
    if phase.weight_decay:
        kw["weight_decay"] = float(phase.weight_decay)  # decoupled weight decay (Keras 2.11+ optimizers)
    if phase.optimizer is Optimizer.adam:
        return keras.optimizers.Adam(**kw)
    if phase.optimizer is Optimizer.adamw:
        kw.setdefault("weight_decay", 0.0)
        return keras.optimizers.AdamW(**kw)
    if phase.optimizer is Optimizer.sgd:
        return keras.optimizers.SGD(momentum=float(phase.momentum), nesterov=bool(phase.nesterov), **kw)
    if phase.optimizer is Optimizer.rmsprop:
        return keras.optimizers.RMSprop(momentum=float(phase.momentum), **kw)
    raise ConfigError(f"unknown optimizer {phase.optimizer!r}; valid: {', '.join(o.value for o in Optimizer)}")


def compile_model(model, phase: PhaseConfig, steps_per_epoch: int, quantizer: Optional[QuantizerTraining] = None):
    """``quantizer``: how quantizer parameters train (``quantizer_training``); default: no weight decay on them."""
    from qresearch import quantizer_training
    from qresearch._prebuild import build_metrics, build_optimizer

    total = int(phase.epochs) * int(steps_per_epoch)
    optimizer = quantizer_training.configure(make_optimizer(phase, total), model, quantizer or QuantizerTraining())
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    # fit then traces its step once, not twice (qresearch._prebuild); the labels are class indices
    build_optimizer(model)
    build_metrics(model, np.zeros((1,), np.int32))
    return model


def steps_per_epoch(n: int, phase: PhaseConfig) -> int:
    steps = math.ceil(n / int(phase.batch_size))
    cap = phase.steps_per_epoch
    return min(steps, int(cap)) if cap else steps


def fit(model, dataset, phase: PhaseConfig, name: str, seed: int, verbose: int = 2,
        log_fn: Optional[Callable[[Dict[str, float]], None]] = None,
        quantizer: Optional[QuantizerTraining] = None, checkpoint_dir: Optional[str] = None,
        checkpoint_id: str = "", callbacks: Optional[List[Any]] = None) -> Dict[str, Any]:
    """Compile and train ``model`` for one phase; return history, wall time and median step time.
    With ``phase.checkpoint_every`` and a ``checkpoint_dir``: resumable (``qresearch.checkpoints``)."""
    spe = steps_per_epoch(dataset.train_size, phase)
    compile_model(model, phase, spe, quantizer)
    timer = BatchTimer()
    callbacks = [NaNGuard(name), timer, *(callbacks or [])]
    if log_fn is not None:
        callbacks.append(EpochLogger(name, log_fn))
    epochs = int(phase.epochs)
    t0 = time.perf_counter()
    hist = {}
    if epochs > 0 and phase.checkpoint_every and checkpoint_dir:
        from qresearch import checkpoints

        hist = checkpoints.fit(model, dataset, int(phase.batch_size), phase.steps_per_epoch, epochs, seed,
                               checkpoint_dir, int(phase.checkpoint_every), callbacks, verbose, checkpoint_id)
    elif epochs > 0:
        ds = dataset.train_pipeline(int(phase.batch_size), seed=seed, steps_per_epoch=phase.steps_per_epoch)
        hist = model.fit(ds, epochs=epochs, callbacks=callbacks, verbose=verbose).history
    wall = time.perf_counter() - t0
    return {"epochs": epochs, "steps": len(timer.times), "wall_s": wall, "step_time_s": timer.median(),
            "history": {k: [float(x) for x in v] for k, v in hist.items()}}


def accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y).ravel()))


def time_float_steps(model, dataset, phase: PhaseConfig, steps: int, seed: int) -> Optional[float]:
    """Median step time of a throw-away copy of ``model`` trained under ``phase`` (weights untouched)."""
    clone = keras.models.clone_model(model)
    compile_model(clone, phase, max(1, steps))
    timer = BatchTimer()
    ds = dataset.train_pipeline(int(phase.batch_size), seed=seed, steps_per_epoch=None).repeat()
    clone.fit(ds, epochs=1, steps_per_epoch=int(steps) + 2, callbacks=[timer], verbose=0)
    return timer.median()


# ------------------------------------------------------------------ float-baseline cache
def baseline_key(dataset_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], float_cfg: PhaseConfig,
                 seed: int, data_fingerprint: Optional[str] = None) -> str:
    """``data_fingerprint`` (``Dataset.fingerprint()``): the data as loaded, so a dataset file
    rewritten in place (same config) trains a new baseline instead of reusing the old one."""
    data = {k: v for k, v in dict(dataset_cfg).items() if k not in DATA_LOCATION_KEYS}
    # checkpointing off leaves the key as it was before the option existed: cached baselines stay valid
    phase = {k: v for k, v in phase_dict(float_cfg).items() if not (k == "checkpoint_every" and v is None)}
    return stable_hash({"version": CACHE_VERSION, "dataset": data, "data": data_fingerprint, "model": dict(model_cfg),
                        "float": phase, "seed": int(seed), "tensorflow": tf.__version__})


def nonfinite_weights(model) -> List[str]:
    """``name (count of size)`` for each of ``model``'s weights that holds NaN or infinity."""
    bad = []
    for var, value in zip(model.weights, model.get_weights()):
        value = np.asarray(value)
        if value.dtype.kind in "fc":
            n = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            if n:
                bad.append(f"{var.name} ({n} of {value.size})")
    return bad


def _require_finite_weights(model) -> None:
    bad = nonfinite_weights(model)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise NonFiniteWeightsError(
            f"float training left non-finite weights in {', '.join(bad[:5])}{more}; the baseline is not cached. "
            f"Fix: lower training.float.learning_rate or set training.float.clipnorm, and check the model's "
            f"custom layers and the data")


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def float_baseline(build: Callable[[], Any], train: Callable[[Any], Dict[str, Any]], key: str,
                   cache_dir: Optional[str]) -> Tuple[Any, Dict[str, Any]]:
    """The trained float model for ``key``: loaded from the cache, or built, trained and cached.

    ``build()`` returns a fresh (seeded) float model; ``train(model)`` trains it in place and
    returns facts to keep (history, times). With ``cache_dir`` None nothing is cached.
    Returns ``(model, info)``; ``info["cache"]`` says "hit", "miss" or "off".
    """
    if not cache_dir:
        model = build()
        info = train(model)
        _require_finite_weights(model)
        return model, {**info, "cache": "off", "key": key}
    root = Path(cache_dir).expanduser().resolve() / "float"
    entry = root / key
    with file_lock(root / f"{key}.lock"):
        for stale in root.glob(f".{key}.*"):  # left by a killed job (we hold the key's lock)
            shutil.rmtree(stale, ignore_errors=True)
        meta_path, weights = entry / "meta.json", entry / "weights.h5"
        if meta_path.is_file() and weights.is_file():
            try:
                model = build()
                model.load_weights(str(weights))
                meta = json.loads(meta_path.read_text())
                bad = nonfinite_weights(model)  # written by older code, or damaged: would poison every job
                if not bad:
                    return model, {**meta, "cache": "hit", "key": key, "path": str(entry)}
                log.warning("float cache entry %s holds non-finite weights (%s); discarding it and retraining",
                            entry, ", ".join(bad[:5]))
            except Exception as exc:  # a corrupt entry is retrained, not fatal
                log.warning("float cache entry %s unreadable (%s); retraining", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
        model = build()
        info = train(model)
        _require_finite_weights(model)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
        try:
            model.save_weights(str(tmp / "weights.h5"))
            write_json_atomic(tmp / "meta.json", {**info, "key": key, "created": time.time()})
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return model, {**info, "cache": "miss", "key": key, "path": str(entry)}
