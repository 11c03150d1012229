"""``python -m benchmarks [--only steps|sweep] [--model lenet5] [--steps 30]``.

1. QAT step time over float step time for every built-in scheme preset and for tfmot's stock
   ``quantize_model``, all measured in this one process on the same model, data and optimizer
   (median training-step time; the float model is timed before and after the quantized ones,
   and its mean is the denominator).
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


def _time_steps(model, x, y, steps: int, batch_size: int) -> float:
    from qresearch import training
    from qresearch._compat import keras, tf

    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True).repeat().prefetch(2)
    timer = training.BatchTimer()
    model.fit(ds, epochs=1, steps_per_epoch=steps + 3, callbacks=[timer], verbose=0)
    return timer.median(skip=3)


def step_times(model_name: str, input_shape, steps: int, batch_size: int) -> List[Dict[str, Any]]:
    import numpy as np

    import qresearch
    from qresearch import models, schemes
    from qresearch._compat import keras, tfmot

    rng = np.random.default_rng(0)
    n = batch_size * 8
    x = rng.random((n,) + tuple(input_shape), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)

    def fresh():
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        return models.build_model({"name": model_name}, input_shape, 10)

    rows = []
    float_before = _time_steps(fresh(), x, y, steps, batch_size)
    candidates = [("tfmot quantize_model (stock 8-bit)", lambda m: tfmot.quantization.keras.quantize_model(m))]
    for preset in schemes.names():
        candidates.append((f"qresearch {preset}",
                           lambda m, p=preset: qresearch.quantize(m, p, calibration_data=x[:batch_size])))
    for name, make in candidates:
        try:
            t = _time_steps(make(fresh()), x, y, steps, batch_size)
            rows.append({"name": name, "step_s": t})
        except Exception as exc:  # report, keep measuring the others
            rows.append({"name": name, "step_s": None, "error": f"{type(exc).__name__}: {exc}"[:200]})
        print(f"  {name:42s} {('%.2f ms' % (1e3 * rows[-1]['step_s'])) if rows[-1]['step_s'] else 'failed'}",
              flush=True)
    float_after = _time_steps(fresh(), x, y, steps, batch_size)
    base = (float_before + float_after) / 2
    out = [{"name": "float (before)", "step_s": float_before}, {"name": "float (after)", "step_s": float_after}]
    for r in rows:
        r["ratio"] = r["step_s"] / base if r.get("step_s") else None
    for r in out:
        r["ratio"] = r["step_s"] / base
    return out + rows


def sweep_times(work: Path) -> List[Dict[str, Any]]:
    """Wall time of one small sweep: cold cache, warm cache (fresh sweep folder), resumed (same folder)."""
    cache = work / "cache"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    common = ["+sweep=smoke", "model=lenet5", "training.float.epochs=15", "seed=0,1", "logger=disabled",
              f"paths.cache_dir={cache}"]
    rows = []
    for label, out in (("cold baseline cache", "a"), ("warm baseline cache", "b"), ("resumed (all completed)", "b")):
        cmd = [sys.executable, "-m", "qresearch.run", "-m", *common, f"paths.output_dir={work / out}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"sweep failed ({label}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        rows.append({"name": label, "wall_s": wall, "jobs": 8})
        print(f"  {label:28s} {wall:6.1f} s", flush=True)
    for r in rows:
        r["ratio_to_cold"] = r["wall_s"] / rows[0]["wall_s"]
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["steps", "sweep"], default=None)
    ap.add_argument("--model", default="lenet5", help="zoo model for step times (default lenet5)")
    ap.add_argument("--input", default="28,28,1", help="input shape, e.g. 32,32,3")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per model (median)")
    args = ap.parse_args(argv)
    report: Dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count()}

    if args.only in (None, "steps"):
        shape = tuple(int(s) for s in args.input.split(","))
        print(f"QAT step time / float step time: {args.model}, input {shape}, batch {args.batch}, "
              f"median of {args.steps} steps, Adam", flush=True)
        rows = step_times(args.model, shape, args.steps, args.batch)
        report["step_times"] = {"model": args.model, "input": shape, "batch": args.batch, "rows": rows}
        print(f"\n| {'training step':42s} | ms/step | x float |\n|{'-' * 44}|--------:|--------:|")
        for r in rows:
            ms = f"{1e3 * r['step_s']:.2f}" if r.get("step_s") else "failed"
            ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "–"
            print(f"| {r['name']:42s} | {ms:>7s} | {ratio:>7s} |")
            if r.get("error"):
                print(f"|   {r['error'][:100]}")

    if args.only in (None, "sweep"):
        print("\nSweep wall time (smoke sweep: 2 schemes x 2 bit widths x 2 seeds = 8 jobs, lenet5 on digits, "
              "basic launcher)", flush=True)
        work = Path(tempfile.mkdtemp(prefix="qresearch-bench-"))
        try:
            rows = sweep_times(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report["sweep_times"] = rows
        print(f"\n| {'sweep':28s} | wall s | x cold |\n|{'-' * 30}|-------:|-------:|")
        for r in rows:
            print(f"| {r['name']:28s} | {r['wall_s']:6.1f} | {r['ratio_to_cold']:6.2f} |")

    out = Path(os.environ.get("QRESEARCH_OUTPUT_DIR", "outputs")) / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
