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
    from qresearch import distribute
    from qresearch._compat import keras, tf

    distribute.configure_devices(exp.training)  # logical CPUs for training.devices=[/cpu:0,/cpu:1]: first
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


def base_scheme(exp: Experiment) -> Dict[str, Any]:
    """The scheme as configured: ``mixed.algorithm``'s preset when set (its quantizers, the ``bits``
    shorthand applied), else the ``scheme`` node."""
    if not exp.mixed.algorithm:
        return exp.scheme
    from qresearch import schemes
    from qresearch.config import with_bits

    return with_bits(schemes.get(exp.mixed.algorithm).to_dict(), exp.bits)


def check_scheme(exp: Experiment, scheme: Optional[Dict[str, Any]] = None) -> Tuple[Any, Dict[str, Any], List[str]]:
    """Validate the scheme (default: ``base_scheme``) and check it against the target, the one time a run
    does (``quantize`` is told so). Returns (target or None, effective scheme dict, coercions); fails in
    milliseconds."""
    from qresearch import hardware, schemes

    scheme = base_scheme(exp) if scheme is None else scheme
    schemes.SchemeSpec.from_dict(scheme)
    if not exp.hardware:
        return None, scheme, []
    target = hardware.get(exp.hardware)
    constrained, coercions = hardware.constrain(scheme, target, adapt=exp.adapt, adapt_bits=exp.adapt_bits)
    eff = constrained.to_dict() if hasattr(constrained, "to_dict") else dict(constrained)
    return target, eff, list(coercions)


def check_mixed(exp: Experiment, target, scheme_choice: Optional[str] = None) -> None:
    """What ``config.validate_mixed`` cannot see: ``scheme=mixed`` (Hydra's choice) needs a budget, and a
    ``table_cost`` budget a target with a cost table."""
    from qresearch.errors import ConfigError

    if scheme_choice == "mixed" and not exp.mixed.enabled:
        raise ConfigError("scheme=mixed chooses per-layer widths under a budget, and none is set: add "
                          "mixed.budget.bops=F or mixed.budget.memory=F (F in (0, 1], a fraction of the all-8-bit "
                          "cost), or use scheme=lsq for uniform widths")

    if exp.mixed.budget.table_cost is not None and (target is None or target.costs is None):
        name = target.name if target is not None else "none"
        raise ConfigError(f"mixed.budget.table_cost needs a hardware target with a costs: table, and hardware="
                          f"{name} has none: add one to its YAML (notes/mixed.md) or use mixed.budget.bops / "
                          f"mixed.budget.memory")


def mixed_search(exp: Experiment, float_model, ds, spec: Dict[str, Any], target
                 ) -> Tuple[Dict[str, Any], Dict[str, Any], List[str]]:
    """Per-layer widths under ``exp.mixed``'s budget (``qresearch.mixed.search`` on the float model and
    seeded training images), as a plain scheme checked against the target like any other.
    Returns (the scheme PTQ/QAT use, the record's ``mixed`` entry, the check's coercions)."""
    from qresearch import mixed

    m = exp.mixed
    seed = int(exp.seed)
    data = ds.train_sample(int(m.samples), seed)  # seeded training images and labels (streamed: read now)
    calib = ds.calibration(int(exp.training.calibration_samples), seed)
    bits = mixed.candidate_widths(m.bits, target)
    out = mixed.search(float_model, data, spec, m.budget_dict(), bits=bits, target=target, method=m.sensitivity,
                       solver=m.solver, calibration_data=calib)
    _, checked, coercions = check_scheme(exp, out["scheme"])  # per-layer widths against the target
    alloc = out["allocation"]
    record = {"budget": m.budget_dict(), "algorithm": m.algorithm or algorithm_name(spec), "bits": bits,
              "sensitivity_method": m.sensitivity, "samples": int(len(data[1])),
              "solver": alloc["solver"], "widths": out["widths"],
              "totals": out["cost"]["totals"], "reference": out["reference"]["totals"],
              "allocation": {k: v for k, v in alloc.items() if k != "widths"},
              "sensitivity": out["sensitivity"].get("scores")}
    return checked, _plain(record), coercions


def _plain(obj):
    """JSON-safe: numpy scalars to Python numbers, int keys (widths in scores) to strings."""
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def budget_label(budget: Dict[str, float]) -> str:
    """``{"bops": 0.25}`` -> ``"bops=0.25"``: a mixed run's place on the cost axes."""
    return ",".join(f"{k}={v:g}" for k, v in sorted(budget.items()))


def cost_facts(report: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """From ``mixed.describe``'s report: the record's ``cost`` (totals at the widths the QAT model really
    has, per layer, the all-8-bit reference) and the metrics the report plots (ratios against all-8-bit;
    ``table_cost`` when the target has a ``costs:`` table). Every scheme has them, not only mixed."""
    c, ref = report["cost"], report["cost_reference"]
    t = c["totals"]
    ratio = lambda k: (t[k] / ref[k]) if ref.get(k) else None  # noqa: E731
    metrics = {"bops": t["bops"], "bops_ratio": ratio("bops"), "cost_weight_bits": t["weight_bits"],
               "weight_bits_ratio": ratio("weight_bits"), "activation_bits": t["activation_bits"],
               "activation_bits_ratio": ratio("activation_bits"),
               "activation_peak_bits": t["activation_peak_bits"], "macs": t["macs"]}
    if "table_cost" in t:
        metrics.update(table_cost=t["table_cost"], table_cost_ratio=ratio("table_cost"))
    return {"totals": t, "layers": c["layers"], "reference": ref}, metrics


def scope(exp: Experiment):
    """``training.strategy``'s scope (``qresearch.distribute``), a no-op for ``none``: models, quantizer
    variables, calibration and optimizers created in it are mirrored over the strategy's devices."""
    from qresearch import distribute

    return distribute.scope(distribute.strategy_for(exp.training))


def load_data(exp: Experiment):
    from qresearch import data

    return data.load_dataset(exp.dataset, cache_dir=exp.paths.cache_dir)


def float_baseline(exp: Experiment, ds, log_fn: LogFn) -> Tuple[Any, Dict[str, Any]]:
    """The trained float model (from the cache shared by every job with the same key) and facts about it."""
    from qresearch import distribute, models, training
    from qresearch._compat import keras

    seed, phase = int(exp.seed), exp.training.float
    replicas = distribute.replicas(distribute.strategy_for(exp.training))
    key = training.baseline_key(exp.dataset, exp.model, phase, seed, data_fingerprint=ds.fingerprint())

    def build():
        setup_tf(exp)  # clears the Keras session: before the strategy's scope is entered
        with scope(exp):
            return models.build_model(exp.model, ds.input_shape, ds.num_classes)

    def train(model):
        bn = distribute.per_replica_batchnorm(model) if replicas > 1 else []
        if bn:
            log.warning("training.strategy=mirrored: %d BatchNormalization layers (%s...) normalise each replica's "
                        "slice of the batch (%d per replica), so results differ from one device; use "
                        "SyncBatchNormalization or a larger batch (notes/distribute.md)", len(bn), bn[0],
                        int(phase.batch_size) // replicas)
        with scope(exp):
            return training.fit(model, ds, phase, "float", seed, verbose=int(exp.training.verbose), log_fn=log_fn,
                                checkpoint_dir=checkpoint_dir(exp, "float", key), checkpoint_id=key)

    model, info = training.float_baseline(build, train, key, exp.paths.cache_dir or None)
    # Same random state after this stage whether the baseline came from the cache or not.
    keras.utils.set_random_seed(seed + 1)
    facts = {k: info.get(k) for k in ("cache", "key", "path", "wall_s", "epochs", "step_time_s")}
    return model, {**facts, "replicas": replicas} if replicas > 1 else facts


def evaluate_float(exp: Experiment, model, ds) -> Dict[str, Any]:
    """Float accuracy, and the float step time under the QAT phase's optimizer and batch size."""
    from qresearch import training
    from qresearch.evaluation import test_accuracy

    acc = test_accuracy(model, ds, int(exp.training.eval_batch_size))
    with scope(exp):
        step = training.time_float_steps(model, ds, exp.training.qat, int(exp.training.timing_steps), int(exp.seed))
    return {"float_accuracy": acc, "float_step_time_s": step, "float_params": int(model.count_params())}


def progressive(exp: Experiment, float_model, ds, target, log_fn: LogFn) -> Tuple[Any, List[Dict[str, Any]]]:
    """QAT at each of ``exp.progressive_bits`` in turn, each from the previous model's weights. Returns the
    last QAT model (the run's own width starts from it in ``ptq``) and, per width, its accuracy and time."""
    import dataclasses

    from qresearch import training
    from qresearch.config import with_bits

    model, facts = None, []
    for bits in exp.progressive_bits:
        step = dataclasses.replace(exp, scheme=with_bits(exp.scheme, bits), bits=bits)
        _, spec, _ = check_scheme(step)
        model = _quantize(step, float_model, ds, spec, target, start=model)
        with scope(exp):
            fit = training.fit(model, ds, step.training.qat, f"qat_{bits}bit", int(exp.seed),
                               verbose=int(exp.training.verbose), log_fn=log_fn, quantizer=step.quantizer_training)
        runs = deployable(step, model, float_model, spec, target)
        facts.append({"bits": bits, "qat_accuracy": evaluate_qat(step, runs, ds, target)[0]["qat_accuracy"],
                      "wall_s": fit["wall_s"]})
        log.info("progressive: %d-bit QAT accuracy %.4f", bits, facts[-1]["qat_accuracy"])
    return model, facts


def _info(qat_model) -> Dict[str, Any]:
    """What ``qresearch.quantize`` recorded on the model (``qresearch_info``); {} for a model it did not make."""
    return getattr(qat_model, "qresearch_info", None) or {}


def _quantize(exp: Experiment, float_model, ds, spec: Dict[str, Any], target, start=None):
    """The calibrated QAT model; with ``start`` (a QAT model of the same float model at another width),
    its layer weights first, then calibration sets the quantizers at this width."""
    import qresearch

    calib = ds.calibration(int(exp.training.calibration_samples), int(exp.seed))
    with scope(exp):  # quantizer variables mirrored; calibration assigns them in the cross-replica context
        return qresearch.quantize(float_model, spec, hardware=target, adapt=exp.adapt, constrained=True,
                                  calibration_data=calib, weights_from=start)


def ptq(exp: Experiment, float_model, ds, spec: Dict[str, Any], target,
        start=None) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    """Quantize with calibration only (the checked scheme: no second check). Returns (QAT model, metrics, facts).
    ``start``: a higher-bit QAT model whose weights this one starts from (``progressive``). The facts hold
    ``cost`` (``cost_facts``) and the metrics its totals."""
    from qresearch import mixed
    from qresearch.evaluation import test_accuracy

    qat_model = _quantize(exp, float_model, ds, spec, target, start)
    acc = test_accuracy(deployable(exp, qat_model, float_model, spec, target), ds, int(exp.training.eval_batch_size))
    report = mixed.describe(qat_model, float_model, table=target)
    log.info("%s", report["sections"]["cost"])
    memory = dict(report.get("memory") or {})
    cost, cost_metrics = cost_facts(report)
    metrics = {"ptq_accuracy": acc, "weight_memory_bits": memory.get("quantized_bits"),
               "float_weight_memory_bits": memory.get("float32_bits"), "weight_memory_ratio": memory.get("ratio"),
               **cost_metrics}
    unsigned = list(_info(qat_model).get("unsigned_inputs", []))
    return qat_model, metrics, {"quantized_layers": len(report.get("layers") or []),
                                "float_layers": report.get("float_layers"), "cost": cost,
                                "unsigned_inputs": unsigned}  # input_sign's outcome (scheme key)


def qat(exp: Experiment, qat_model, ds, log_fn: LogFn) -> Dict[str, Any]:
    """Quantization-aware fine-tuning in place: history, wall time, median step time."""
    from qresearch import training

    key = f"{exp.hash}-{ds.fingerprint()}"  # the run and its data: a resumed job finds its own checkpoint
    with scope(exp):
        return training.fit(qat_model, ds, exp.training.qat, "qat", int(exp.seed), verbose=int(exp.training.verbose),
                            log_fn=log_fn, quantizer=exp.quantizer_training,
                            checkpoint_dir=checkpoint_dir(exp, "qat", key), checkpoint_id=key)


def checkpoint_dir(exp: Experiment, phase: str, key: str) -> Optional[str]:
    """Where a phase's checkpoints go (``training.<phase>.checkpoint_every``): the cache folder, so a
    single run started again finds them as a sweep's job does; none without a cache folder."""
    import os

    return os.path.join(exp.paths.cache_dir, "checkpoints", phase, key) if exp.paths.cache_dir else None


def bn_reestimation_batches(exp: Experiment, spec: Dict[str, Any]) -> int:
    """Batches of BN re-estimation after QAT: ``training.bn_reestimation_batches`` where set, else the scheme's
    (``bn_reestimation_batches`` where ``bn_folding`` is no_fold, else 0)."""
    from qresearch.schemes.spec import reestimated_bn_batches

    n = exp.training.bn_reestimation_batches
    return int(n) if n is not None else reestimated_bn_batches(spec)


def reestimate_bn(exp: Experiment, qat_model, ds, batches: int) -> Dict[str, Any]:
    """BN re-estimation after QAT over ``batches`` batches of training images drawn by the seed."""
    from qresearch.schemes.bn_reestimate import reestimate_on_dataset

    return reestimate_on_dataset(qat_model, ds, batches, int(exp.training.qat.batch_size), int(exp.seed))


def folds_at_deployment(spec: Dict[str, Any], target) -> bool:
    """Whether the trained model keeps BN (``no_fold``) for a target that deploys a fold: ``hardware.constrain``
    let it through (``folds_kept_bn_at_deployment``), so the fold happens after training."""
    return target is not None and target.bn_folding == "fold" and spec.get("bn_folding") == "no_fold"


def deployable(exp: Experiment, qat_model, float_model, spec: Dict[str, Any], target):
    """The model the target runs: ``qat_model``, or where BN folds at deployment its folded twin
    (``qresearch.fold_for_deployment``), whose integer emulation is the deployed model's."""
    if not folds_at_deployment(spec, target):
        return qat_model
    from qresearch.deploy_fold import fold_for_deployment as fold

    with scope(exp):
        return fold(qat_model, float_model)


def fold_for_deployment(exp: Experiment, qat_model, float_model, ds, spec: Dict[str, Any], target
                        ) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    """The folded twin of a trained no_fold model, which the evaluation and the deployment check then run.
    Returns (twin, its fold report, {"qat_unfolded_accuracy": the trained model's float fake-quant accuracy})."""
    from qresearch import kernels
    from qresearch.evaluation import test_accuracy

    with kernels.emulated_kernels("none"):
        before = test_accuracy(qat_model, ds, int(exp.training.eval_batch_size))
    twin = deployable(exp, qat_model, float_model, spec, target)
    return twin, twin.qresearch_info["deploy_fold"], {"qat_unfolded_accuracy": before}


ACCUMULATOR_SAMPLES = 512  # test images run eagerly to read the accumulators (seconds on small models)


def evaluate_qat(exp: Experiment, qat_model, ds, target) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """QAT accuracy (for a target whose kernels the model emulates: the simulated hardware's integer
    result) and, then, the float fake-quant accuracy beside it and the per-layer accumulator statistics
    on the first test images. Returns (metrics, {"accumulators": ...} or {})."""
    from qresearch import kernels
    from qresearch.evaluation import test_accuracy

    batch = int(exp.training.eval_batch_size)
    metrics: Dict[str, Any] = {"qat_accuracy": test_accuracy(qat_model, ds, batch)}
    emulated = _info(qat_model).get("kernels")
    if not emulated:
        return metrics, {}
    with kernels.emulated_kernels("none"):
        metrics["qat_fakequant_accuracy"] = test_accuracy(qat_model, ds, batch)
    x_first, _ = ds.test_arrays(ACCUMULATOR_SAMPLES)
    stats = kernels.accumulator_stats(qat_model, x_first, batch_size=batch)
    if stats:
        metrics["accumulator_overflow_fraction"] = max(s["overflow_fraction"] for s in stats.values())
        metrics["accumulator_bits_needed"] = max(s["bits_needed"] for s in stats.values())
    return metrics, {"simulated": f"simulated {target.name if target is not None else emulated} ({emulated} kernels)",
                     "accumulators": stats}


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

