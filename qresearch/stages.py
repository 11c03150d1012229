"""The stages of one job, each a function of typed inputs (``config.Experiment``) that hands plain
data on: check the scheme against the target, load the data, the float baseline, PTQ, QAT, the
target's deployment check. ``run.run_job`` calls them in order and records what they return."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

from qresearch.config import Experiment

log = logging.getLogger("qresearch.run")
LogFn = Optional[Callable[[Dict[str, Any]], None]]


class _DropRetracingWarnings(logging.Filter):
    """Every job builds new models, so Keras' "triggered tf.function retracing" warning is expected noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_DropRetracingWarnings())


def role_bits(spec: Dict[str, Any]) -> Dict[str, Optional[int]]:
    """``{"weight_bits": .., "activation_bits": ..}`` of a scheme dict (None: float, or no width given)."""
    def bits(role: str) -> Optional[int]:
        q = spec.get(role)
        return int(q["bits"]) if isinstance(q, dict) and q.get("bits") is not None else None

    return {"weight_bits": bits("weights"), "activation_bits": bits("activations")}


def algorithm_name(scheme: Dict[str, Any]) -> str:
    """A name for a scheme given as data (no preset name): its quantizers, e.g. "pact/lsq"."""
    from qresearch.quantizers.registry import ROLES

    names = []
    for role in ROLES:
        q = scheme.get(role)
        names.append((q.get("quantizer") or q.get("name") or "?") if isinstance(q, dict) else "float")
    return names[0] if names[0] == names[1] else f"{names[0]}/{names[1]}"


def setup_tf(exp: Experiment) -> None:
    """A clean, seeded, deterministic TensorFlow for this job."""
    from qresearch._compat import keras, tf

    keras.backend.clear_session()  # jobs sharing a process must not share Keras state
    keras.utils.set_random_seed(int(exp.seed))
    if exp.deterministic:
        tf.config.experimental.enable_op_determinism()
    if exp.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(exp.threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(exp.threads))
        except RuntimeError:  # TensorFlow already started in this process: keep its setting
            pass


def check_scheme(exp: Experiment) -> Tuple[Any, Dict[str, Any], List[str]]:
    """Validate the scheme and check it against the target, the one time a run does (``quantize`` is
    told so). Returns (target or None, effective scheme dict, coercions); fails in milliseconds."""
    from qresearch import hardware, schemes

    schemes.SchemeSpec.from_dict(exp.scheme)
    if not exp.hardware:
        return None, exp.scheme, []
    target = hardware.get(exp.hardware)
    constrained, coercions = hardware.constrain(exp.scheme, target, adapt=exp.adapt, adapt_bits=exp.adapt_bits)
    eff = constrained.to_dict() if hasattr(constrained, "to_dict") else dict(constrained)
    return target, eff, list(coercions)


def load_data(exp: Experiment):
    from qresearch import data

    return data.load_dataset(exp.dataset, cache_dir=exp.paths.cache_dir)


def float_baseline(exp: Experiment, ds, log_fn: LogFn) -> Tuple[Any, Dict[str, Any]]:
    """The trained float model (from the cache shared by every job with the same key) and facts about it."""
    from qresearch import models, training
    from qresearch._compat import keras

    seed, phase = int(exp.seed), exp.training.float
    key = training.baseline_key(exp.dataset, exp.model, phase, seed, data_fingerprint=ds.fingerprint())

    def build():
        setup_tf(exp)
        return models.build_model(exp.model, ds.input_shape, ds.num_classes)

    def train(model):
        return training.fit(model, ds, phase, "float", seed, verbose=int(exp.training.verbose), log_fn=log_fn,
                            checkpoint_dir=checkpoint_dir(exp, "float", key), checkpoint_id=key)

    model, info = training.float_baseline(build, train, key, exp.paths.cache_dir or None)
    # Same random state after this stage whether the baseline came from the cache or not.
    keras.utils.set_random_seed(seed + 1)
    return model, {k: info.get(k) for k in ("cache", "key", "path", "wall_s", "epochs", "step_time_s")}


def evaluate_float(exp: Experiment, model, ds) -> Dict[str, Any]:
    """Float accuracy, and the float step time under the QAT phase's optimizer and batch size."""
    from qresearch import training
    from qresearch.evaluation import test_accuracy

    acc = test_accuracy(model, ds, int(exp.training.eval_batch_size))
    step = training.time_float_steps(model, ds, exp.training.qat, int(exp.training.timing_steps), int(exp.seed))
    return {"float_accuracy": acc, "float_step_time_s": step, "float_params": int(model.count_params())}


def ptq(exp: Experiment, float_model, ds, spec: Dict[str, Any], target) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    """Quantize with calibration only (the checked scheme: no second check). Returns (QAT model, metrics, facts)."""
    import qresearch
    from qresearch import schemes
    from qresearch.evaluation import test_accuracy

    calib = ds.calibration(int(exp.training.calibration_samples), int(exp.seed))
    qat_model = qresearch.quantize(float_model, spec, hardware=target, calibration_data=calib, adapt=exp.adapt,
                                   constrained=True)
    acc = test_accuracy(qat_model, ds, int(exp.training.eval_batch_size))
    report = schemes.describe(qat_model)
    memory = dict(report.get("memory") or {})
    metrics = {"ptq_accuracy": acc, "weight_memory_bits": memory.get("quantized_bits"),
               "float_weight_memory_bits": memory.get("float32_bits"), "weight_memory_ratio": memory.get("ratio")}
    return qat_model, metrics, {"quantized_layers": len(report.get("layers") or []),
                                "float_layers": report.get("float_layers")}


def qat(exp: Experiment, qat_model, ds, log_fn: LogFn) -> Dict[str, Any]:
    """Quantization-aware fine-tuning in place: history, wall time, median step time."""
    from qresearch import training

    key = f"{exp.hash}-{ds.fingerprint()}"  # the run and its data: a resumed job finds its own checkpoint
    return training.fit(qat_model, ds, exp.training.qat, "qat", int(exp.seed), verbose=int(exp.training.verbose),
                        log_fn=log_fn, checkpoint_dir=checkpoint_dir(exp, "qat", key), checkpoint_id=key)


def checkpoint_dir(exp: Experiment, phase: str, key: str) -> Optional[str]:
    """Where a phase's checkpoints go (``training.<phase>.checkpoint_every``): the cache folder, so a
    single run started again finds them as a sweep's job does; none without a cache folder."""
    import os

    return os.path.join(exp.paths.cache_dir, "checkpoints", phase, key) if exp.paths.cache_dir else None


def evaluate_qat(exp: Experiment, qat_model, ds) -> float:
    from qresearch.evaluation import test_accuracy

    return test_accuracy(qat_model, ds, int(exp.training.eval_batch_size))


def deploy(exp: Experiment, qat_model, target, ds) -> Dict[str, Any]:
    """The target's deployment check (convert, run its runtime, compare); the report without the model bytes."""
    from qresearch import hardware

    x, y = ds.test_arrays()  # in memory: all; streamed: the first dataset.deploy_samples
    rep = hardware.verify(qat_model, target, x, y, batch_size=int(exp.training.eval_batch_size))
    return {k: v for k, v in rep.items() if k != "tflite_model"}


def same_data(exp: Experiment, prev: Dict[str, Any]) -> bool:
    """Whether this job's data is the data ``prev`` (a completed result) was computed on. The config
    hash cannot tell: a dataset file rewritten in place keeps its path. So load the data and compare
    fingerprints: loading takes seconds, the job it may skip minutes. A record without a fingerprint
    (older code) or data that fails to load (the job then records why) means: run again."""
    recorded = (prev.get("dataset") or {}).get("fingerprint")
    if not recorded:
        return False
    try:
        now = load_data(exp).fingerprint()
    except Exception:
        return False
    if now != recorded:
        log.info("re-running: the data changed since the job completed (fingerprint %s, now %s)", recorded, now)
    return now == recorded

