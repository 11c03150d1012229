"""One job: build the typed config once, then the stages in order, each recorded as it ends.

check the config and the scheme against the hardware target (fails in milliseconds, before any
data is loaded) → load data → float baseline (trained, or loaded from the cache shared by every
job with the same dataset, model, float training and seed) → float accuracy → PTQ baseline
(quantize with calibration only) → QAT fine-tuning → QAT accuracy → the target's deployment
check where it has a runtime. ``result.json`` in the job folder is rewritten (atomically) after
every stage; its ``status`` ends as ``completed`` or ``failed`` (with the error's type, message,
traceback and stage). A failed job never stops a sweep: ``run_job`` returns NaN. Re-running a
sweep skips jobs whose result.json is completed with the same config hash and the same data.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf

from qresearch import config as qconfig
from qresearch import stages
from qresearch.config import Experiment, experiment
from qresearch.job import JobContext, JobRecord, error_info, now
from qresearch.labels import setting_key, variant_label
from qresearch.plugins import import_plugins
from qresearch.results import COMPLETED, FAILED, RESULT_FILE, completed_result, write_json_atomic
from qresearch.versions import versions

log = logging.getLogger("qresearch.run")


def run_job(cfg: DictConfig) -> float:
    """Run one job (never raises for an experiment failure; returns the QAT accuracy or NaN)."""
    from qresearch.logger import RunLogger

    try:  # the one conversion from Hydra's config: below this, typed objects and plain data only
        exp = experiment(cfg)
        rec = new_record(exp, JobContext(exp.paths.output_dir))
    except Exception as exc:  # the config itself cannot be resolved: still record it, still no crash
        return _unresolvable(cfg, exc)
    ctx = rec.ctx
    if ctx.multirun and exp.resume:
        prev = completed_result(ctx.output_dir, exp.hash)
        if prev is not None and stages.same_data(exp, prev):
            acc = (prev.get("metrics") or {}).get("qat_accuracy")
            log.info("skipping %s: completed earlier with the same config and data (qat_accuracy=%s)", ctx.name, acc)
            return float(acc) if acc is not None else math.nan
    with rec.recording():
        rec.logger = RunLogger(dataclasses.asdict(exp.logger),
                               {**exp.config, "labels": rec["labels"], "config_hash": exp.hash}, name=ctx.name,
                               group=exp.logger.group or exp.sweep_name, job_dir=str(ctx.output_dir))
        with rec.stage("plugins"):
            import_plugins(exp.plugins)  # launcher workers get only the config, not the parent's imports
        run_stages(exp, rec)
    acc = rec["metrics"].get("qat_accuracy")
    if rec.status != COMPLETED:
        if ctx.cli_single_run:  # a single CLI run: exit non-zero after recording
            err = rec["error"]
            print(f"\nrun failed at stage {err['stage']}: {err['type']}: {err['message']}\n"
                  f"(traceback and partial results in {rec.path})", file=sys.stderr)
            raise SystemExit(1)
        return math.nan
    print(f"result: {rec.path}  qat_accuracy={acc:.4f}")
    return float(acc)


def new_record(exp: Experiment, ctx: JobContext) -> JobRecord:
    """The job's record before it runs: config, identity, labels (bit widths follow at setup)."""
    # a mixed run is labelled by its base algorithm (scheme=mixed is LSQ's, or mixed.algorithm's), so it
    # lands on the same axes as that algorithm's uniform runs; its widths are its budget's
    algorithm = exp.mixed.algorithm or (exp.scheme.get("name") if exp.mixed.enabled else None) \
        or ctx.choices.get("scheme") or stages.algorithm_name(exp.scheme)
    return JobRecord(ctx, config=exp.config, config_hash=exp.hash, versions=versions(), labels={
        "sweep": exp.sweep_name if ctx.multirun else None,
        "dataset": exp.dataset.get("name"),
        "model": exp.model.get("name") or exp.model.get("_target_"),
        "algorithm": algorithm,
        "variant": variant_label(algorithm, ctx.overrides),
        "target": exp.hardware.get("name") if exp.hardware else "none",
        "weight_bits": None, "activation_bits": None,
        "mixed_budget": stages.budget_label(exp.mixed.budget_dict()) if exp.mixed.enabled else None,
        "seed": exp.seed})


def run_stages(exp: Experiment, rec: JobRecord) -> None:
    """The stages in order; ``rec.stage`` times each one and names it in a failure."""
    log_fn = rec.logger.log if rec.logger is not None else None
    with rec.stage("setup"):
        stages.setup_tf(exp)
        try:  # requested widths first, so a run the checks reject is still labelled by them
            if not exp.mixed.enabled:
                rec["labels"].update(stages.role_bits(exp.scheme))
        except (TypeError, ValueError):  # not a number: validation below names it
            pass
        qconfig.validate(exp)
        qconfig.check_bits_shorthand(exp.bits, [setting_key(o) for o in rec.ctx.overrides])
        target, spec, rec["coercions"] = stages.check_scheme(exp)
        stages.check_mixed(exp, target, rec.ctx.choices.get("scheme"))
        rec["scheme"] = spec
        if not exp.mixed.enabled:  # a mixed run has no one width: its label is its budget
            rec["labels"].update(stages.role_bits(spec))
        if target is not None and target.pipeline is not None:  # the simulated hardware's accumulator width
            rec["labels"]["accumulator_bits"] = target.pipeline.accumulator_bits
        if rec.logger is not None:
            rec.logger.summary({"labels": rec["labels"]})

    with rec.stage("data"):
        ds = stages.load_data(exp)
        rec["dataset"] = ds.describe()
        rec["labels"]["dataset"] = ds.name  # npz: the file's name; _target_: the function

    with rec.stage("float"):
        float_model, rec["float_baseline"] = stages.float_baseline(exp, ds, log_fn)

    with rec.stage("float_eval"):
        rec.metric(**stages.evaluate_float(exp, float_model, ds))
        log.info("float accuracy %.4f (baseline %s)", rec["metrics"]["float_accuracy"], rec["float_baseline"]["cache"])

    if exp.mixed.enabled:
        with rec.stage("mixed"):
            spec, rec["mixed"], coercions = stages.mixed_search(exp, float_model, ds, spec, target)
            rec["scheme"] = spec
            rec["coercions"] = list(dict.fromkeys(rec["coercions"] + coercions))
            m = rec["mixed"]
            log.info("mixed precision (%s, solver %s): widths %s; BOPs %.4f, weight memory %.4f of all-8-bit",
                     rec["labels"]["mixed_budget"], m["solver"], m["widths"],
                     m["totals"]["bops"] / m["reference"]["bops"],
                     m["totals"]["weight_bits"] / m["reference"]["weight_bits"])
            if not m["allocation"].get("feasible", True):  # kept: the report places it by its real cost
                least = ", ".join(f"{k} {b['least_relative_cost']:.3f}" for k, b in m["allocation"]["budgets"].items()
                                  if not b["feasible"])
                log.warning("mixed precision: no choice of widths meets %s: with every free layer at the narrowest "
                            "width the least reachable is %s of all-8-bit (the layers held at fixed widths, e.g. "
                            "first/last at first_last_bits, cost the rest). Fix: raise the budget, or lower or drop "
                            "first_last_bits. The run goes on with the closest choice the greedy search found",
                            rec["labels"]["mixed_budget"], least)
            if rec.logger is not None:
                rec.logger.summary({"mixed/widths": m["widths"], "mixed/solver": m["solver"]})

    start = None
    if exp.progressive_bits:
        with rec.stage("progressive"):
            start, rec["progressive"] = stages.progressive(exp, float_model, ds, target, log_fn)

    with rec.stage("ptq"):
        qat_model, metrics, facts = stages.ptq(exp, float_model, ds, spec, target, start=start)
        rec.metric(**metrics)
        rec.data.update(facts)
        log.info("PTQ accuracy %.4f", metrics["ptq_accuracy"])

    with rec.stage("qat"):
        fit = stages.qat(exp, qat_model, ds, log_fn)
        rec["qat_history"] = fit["history"]
        qat_step, float_step = fit["step_time_s"], rec["metrics"]["float_step_time_s"]
        rec.metric(qat_step_time_s=qat_step,
                   step_time_ratio=(qat_step / float_step) if qat_step and float_step else None)

    reestimation = stages.bn_reestimation_batches(exp, spec)
    if reestimation > 0:
        with rec.stage("bn_reestimation"):
            rec["bn_reestimation"] = stages.reestimate_bn(exp, qat_model, ds, reestimation)

    deployable = qat_model  # what the target runs: the trained model, or its folded twin
    if stages.folds_at_deployment(spec, target):
        with rec.stage("deploy_fold"):
            deployable, rec["deploy_fold"], before = stages.fold_for_deployment(exp, qat_model, float_model, ds,
                                                                                spec, target)
            rec.metric(**before)
            log.info("BN folded into the trained weights for %s: %d layers, integers moved in %s",
                     target.name, len(rec["deploy_fold"]["folded"]), rec["deploy_fold"]["requantized"] or "none")

    with rec.stage("qat_eval"):
        metrics, hardware_facts = stages.evaluate_qat(exp, deployable, ds, target)
        rec.metric(**metrics)
        rec.data.update(hardware_facts)
        if "qat_fakequant_accuracy" in metrics:
            log.info("QAT accuracy %.4f (%s; float fake-quant %.4f)", metrics["qat_accuracy"],
                     hardware_facts["simulated"], metrics["qat_fakequant_accuracy"])
        else:
            log.info("QAT accuracy %.4f", rec["metrics"]["qat_accuracy"])
        if exp.save_model:
            qat_model.save(str(rec.ctx.output_dir / "qat_model"))  # as trained (a no_fold model folds again)

    rec.metric(deployed_accuracy=None)
    if target is None or not exp.deploy or not target.has_runtime:
        rec["deploy"] = {"skipped": "target has no runtime here" if target is not None and not target.has_runtime
                         else "deploy disabled or no target"}
        return
    with rec.stage("deploy"):
        try:
            rep = stages.deploy(exp, deployable, target, ds)
            rec["deploy"] = rep
            rec.metric(deployed_accuracy=rep.get("deployed_accuracy"),
                       deploy_argmax_agreement=rep.get("argmax_agreement"),
                       deploy_integer_only=rep.get("integer_only"),
                       deploy_model_size_bytes=rep.get("model_size_bytes"))
            log.info("deployed (%s) accuracy %.4f", target.runtime, rep.get("deployed_accuracy"))
        except Exception as exc:  # a conversion failure is a finding about the QAT model, not a crash
            rec["deploy"] = {"error": error_info(exc, "deploy")}
            log.warning("deployment check on %s failed: %s: %s", target.name, type(exc).__name__, exc)


def _unresolvable(cfg: DictConfig, exc: Exception) -> float:
    """A config that cannot even be turned into typed objects: recorded as it was given (unresolved)."""
    err = error_info(exc, "config")
    log.error("job config cannot be resolved: %s: %s", err["type"], err["message"])
    if isinstance(exc, OSError):  # the output folder itself cannot be made: nowhere to record
        return math.nan
    ctx = JobContext(cfg.paths.output_dir)
    record: Dict[str, Any] = {
        "status": FAILED, "config": OmegaConf.to_container(cfg, resolve=False), "config_hash": None,
        "overrides": ctx.overrides, "labels": {}, "metrics": {}, "times": {}, "error": err,
        "started_at": now(), "finished_at": now()}
    write_json_atomic(ctx.output_dir / RESULT_FILE, record)
    if ctx.cli_single_run:
        print(f"\nrun failed: {err['type']}: {err['message']}", file=sys.stderr)
        raise SystemExit(1)
    return math.nan
