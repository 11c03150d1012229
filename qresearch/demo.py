"""``make demo``: a small bit-width sweep on the embedded digits dataset, then the report.

Runs ``sweeps/demo.yaml`` (LeNet-5 on digits; minmax, LSQ and PACT+LSQ; 2 seeds) twice
into one sweep folder: on the ``academic`` target at 8, 4 and 2 bits, and on ``tflite_int8``
at 8 bits (the only width its int8 runtime takes), where each QAT model is also converted to
TFLite and run in the interpreter. Ends with the accuracy table per target and the plot.

Re-running resumes: completed jobs are skipped (``--fresh`` starts over; the float baselines
stay cached). Extra arguments are passed to every ``qresearch.run`` call as Hydra overrides,
e.g. ``python -m qresearch.demo seed=0`` or ``python -m qresearch.demo logger=disabled``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

SWEEP = "demo"
# (label, overrides) of the two multiruns; both write into <output_dir>/multirun/demo.
PARTS = (("academic target, bits 8/4/2", []),
         ("tflite_int8 target, bits 8 (+ TFLite deployment check)", ["hardware=tflite_int8", "bits=8"]))
NOISE = ("I0000 ", "W0000 ", "E0000 ", "WARNING: All log messages before absl", "INFO:tensorflow:Assets written",
         "  warnings.warn(")
NOISE_IN = ("UserWarning: Statistics for quantized inputs were expected",)


def _stream(cmd: List[str], env) -> int:
    """Run ``cmd``, echoing its output without TensorFlow's start-up chatter."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.startswith(NOISE) and not any(n in line for n in NOISE_IN):
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.wait()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qresearch.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--fresh", action="store_true", help="delete the demo's earlier results first")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = ap.parse_args(argv)

    output_dir = Path(os.environ.get("QRESEARCH_OUTPUT_DIR", "outputs")).resolve()
    sweep_dir = output_dir / "multirun" / SWEEP
    if args.fresh and sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.perf_counter()
    for i, (label, overrides) in enumerate(PARTS, 1):
        print(f"\n=== demo part {i}/{len(PARTS)}: {label} ===", flush=True)
        cmd = [sys.executable, "-m", "qresearch.run", "-m", f"+sweep={SWEEP}", f"paths.output_dir={output_dir}",
               *overrides, *args.overrides]
        print("$ python " + " ".join(cmd[1:]), flush=True)
        rc = _stream(cmd, env)
        if rc != 0:
            print(f"demo: the sweep stopped with exit code {rc} (results so far are kept in {sweep_dir})",
                  file=sys.stderr)
            return rc
    sweep_s = time.perf_counter() - t0

    print(f"\n=== report: {sweep_dir} ===\n", flush=True)
    from qresearch.report import make_report

    rep = make_report([sweep_dir])
    print(f"\ndemo: {len(rep['completed'])} runs completed, {len(rep['failed'])} failed; "
          f"sweep wall time {sweep_s / 60:.1f} min (total {(time.perf_counter() - t0) / 60:.1f} min).")
    print(f"plot: {rep['plot']}")
    return 0 if rep["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
