"""``python -m benchmarks [--only steps|sweep] [--model lenet5] [--steps 30]``.

1. QAT step time over float step time for every built-in scheme preset and for tfmot's stock
   ``quantize_model``, all measured in this one process on the same model, data and optimizer
   (median training-step time, in interleaved rounds so that a change of machine load hits
   every model alike; each ratio is the median over rounds of time / float time in that round).
2. A sweep's wall time with a cold and a warm float-baseline cache (and a resumed re-run),
   each a real ``python -m qresearch.run -m`` in a subprocess.

Prints tables of ratios and writes them as JSON under ``outputs/benchmarks/``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


def _compile(model):
    from qresearch._compat import keras

    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _time_steps(model, ds, steps: int) -> float:
    from qresearch import training

    timer = training.BatchTimer()
    model.fit(ds, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return timer.median(skip=0)


def step_times(model_name: str, input_shape, steps: int, batch_size: int, rounds: int = 3) -> List[Dict[str, Any]]:
    """Median step time of every model, in ``rounds`` interleaved rounds (float first in each), so a
    change of machine load hits every model alike; the ratio is taken per round, then the median."""
    import statistics

    import numpy as np

    import qresearch
    import qresearch.run  # noqa: F401  (drops Keras' expected "retracing" warnings)
    from qresearch import models, schemes
    from qresearch._compat import keras, tf, tfmot

    rng = np.random.default_rng(0)
    n = batch_size * 8
    x = rng.random((n,) + tuple(input_shape), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True).repeat().prefetch(2)
    keras.backend.clear_session()

    def fresh():
        keras.utils.set_random_seed(0)
        return models.build_model({"name": model_name}, input_shape, 10)

    built: Dict[str, Any] = {"float": _compile(fresh())}
    errors: Dict[str, str] = {}
    candidates = [("tfmot quantize_model (stock 8-bit)", lambda m: tfmot.quantization.keras.quantize_model(m))]
    for preset in schemes.names():
        candidates.append((f"qresearch {preset}",
                           lambda m, p=preset: qresearch.quantize(m, p, calibration_data=x[:batch_size])))
    for name, make in candidates:
        try:
            built[name] = _compile(make(fresh()))
        except Exception as exc:  # report, keep measuring the others
            errors[name] = f"{type(exc).__name__}: {exc}"[:200]
    for name, model in built.items():  # trace and warm up
        _time_steps(model, ds, 3)
    times: Dict[str, List[float]] = {name: [] for name in built}
    ratios: Dict[str, List[float]] = {name: [] for name in built}
    for r in range(rounds):
        base = _time_steps(built["float"], ds, steps)
        times["float"].append(base)
        ratios["float"].append(1.0)
        for name, model in built.items():
            if name != "float":
                t = _time_steps(model, ds, steps)
                times[name].append(t)
                ratios[name].append(t / base)
        print(f"  round {r + 1}/{rounds}: float {1e3 * base:.2f} ms/step", flush=True)
    rows = [{"name": name, "step_s": statistics.median(times[name]), "ratio": statistics.median(ratios[name]),
             "ratios": ratios[name]} for name in built]
    rows += [{"name": name, "step_s": None, "ratio": None, "error": err} for name, err in errors.items()]
    return rows


def sweep_times(work: Path, float_epochs: int = 60) -> List[Dict[str, Any]]:
    """Wall time of one small sweep: cold cache, warm cache (fresh sweep folder), resumed (same folder).

    Also the float stage's seconds summed over the jobs each sweep ran (read from their
    result.json files): the part the cache removes, free of the machine's load noise elsewhere.
    """
    from qresearch.results import load_results

    cache = work / "cache"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    common = ["+sweep=smoke", "model=lenet5", f"training.float.epochs={float_epochs}", "seed=0,1",
              "logger=disabled", f"paths.cache_dir={cache}"]
    rows = []
    for label, out in (("cold baseline cache", "a"), ("warm baseline cache", "b"), ("resumed (all completed)", "b")):
        cmd = [sys.executable, "-m", "qresearch.run", "-m", *common, f"paths.output_dir={work / out}"]
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"sweep failed ({label}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        ran = [r for r in load_results([work / out]) if os.path.getmtime(r["_path"]) >= started]
        float_s = sum((r.get("times") or {}).get("float_s", 0.0) for r in ran)
        rows.append({"name": label, "wall_s": wall, "jobs_run": len(ran), "float_stage_s": float_s})
        print(f"  {label:28s} {wall:6.1f} s  ({len(ran)} jobs ran, float stage {float_s:.1f} s)", flush=True)
    for r in rows:
        r["ratio_to_cold"] = r["wall_s"] / rows[0]["wall_s"]
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["steps", "sweep"], default=None)
    ap.add_argument("--model", default="lenet5", help="zoo model for step times (default lenet5)")
    ap.add_argument("--input", default="28,28,1", help="input shape, e.g. 32,32,3")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per model and round (median)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--float-epochs", type=int, default=60, help="float epochs in the sweep benchmark")
    args = ap.parse_args(argv)
    report: Dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count()}

    if args.only in (None, "steps"):
        shape = tuple(int(s) for s in args.input.split(","))
        print(f"QAT step time / float step time: {args.model}, input {shape}, batch {args.batch}, "
              f"median of {args.steps} steps x {args.rounds} rounds, Adam", flush=True)
        rows = step_times(args.model, shape, args.steps, args.batch, args.rounds)
        report["step_times"] = {"model": args.model, "input": shape, "batch": args.batch, "rows": rows}
        print(f"\n| {'training step':42s} | ms/step | x float |\n|{'-' * 44}|--------:|--------:|")
        for r in rows:
            ms = f"{1e3 * r['step_s']:.2f}" if r.get("step_s") else "failed"
            ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "–"
            print(f"| {r['name']:42s} | {ms:>7s} | {ratio:>7s} |")
            if r.get("error"):
                print(f"|   {r['error'][:100]}")

    if args.only in (None, "sweep"):
        print(f"\nSweep wall time (smoke sweep: 2 schemes x 2 bit widths x 2 seeds = 8 jobs, lenet5 on digits, "
              f"{args.float_epochs} float epochs, 1 QAT epoch, basic launcher)", flush=True)
        work = Path(tempfile.mkdtemp(prefix="qresearch-bench-"))
        try:
            rows = sweep_times(work, args.float_epochs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report["sweep_times"] = rows
        print(f"\n| {'sweep':28s} | wall s | x cold | jobs run | float stage s |\n"
              f"|{'-' * 30}|-------:|-------:|---------:|--------------:|")
        for r in rows:
            print(f"| {r['name']:28s} | {r['wall_s']:6.1f} | {r['ratio_to_cold']:6.2f} | {r['jobs_run']:8d} | "
                  f"{r['float_stage_s']:13.1f} |")

    out = Path(os.environ.get("QRESEARCH_OUTPUT_DIR", "outputs")) / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
