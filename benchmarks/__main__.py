"""``python -m benchmarks [--only steps,eval,memory,sweep,mixed,stream] [--models lenet5,pkg.mod.fn:32x32x3]
[--steps 20]``.

1. steps: QAT step time over float step time for every built-in scheme preset and for tfmot's stock
   ``quantize_model`` and experimental n-bit scheme (4/4 bits), lsq with its 8-bit model input's step trained
   (``train_input_quantizers: true``; the preset keeps it calibrated) and lsq quantizing every op
   (``quantize_ops: all``, as tfmot's schemes do; the research presets quantize compute layers' inputs), all
   measured in one process per model on the same model, data and optimizer (median training-step time, in
   interleaved rounds so that a change of machine load hits every model alike; each ratio is the median over
   rounds of time / float time in that round). Models: LeNet-5 and mobilenet_tiny (depthwise convs,
   BatchNormalization, residual Add).
2. eval: inference of the tflite_int8 preset through the integer-kernel emulation, over the plain
   fake-quant graph (export mode) and the LiteRT interpreter (builtin kernels, as ``verify`` runs it) on
   the same images; graph (tf.function, as ``predict``/``evaluate``) and eager calls, and
   ``deploy.simulate`` (``verify``'s simulation).
3. memory: peak bytes in use during a training step (TF's allocator statistics; the CPU allocator is
   switched to BFC in a subprocess so that they exist), QAT over float, per model and contestant.
4. sweep: a sweep's wall time with a cold and a warm float-baseline cache (and a resumed re-run),
   each a real ``python -m qresearch.run -m`` in a subprocess.
5. mixed: mixed precision at uniform W3A3's BOPs (benchmarks/mixed.py).
6. stream: images/s of the streamed datasets (a JPEG folder, TFRecord shards) against the same images in
   memory, and the step time of a model fed by each (benchmarks/stream.py).

Prints tables of ratios and writes them as JSON under ``outputs/benchmarks/``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


def _compile(model):
    """Adam for every contestant; a qresearch model's with its scheme's quantizer-training settings (the
    learned presets' step learning-rate multiplier), as the runner trains it."""
    import qresearch
    from qresearch._compat import keras

    optimizer = keras.optimizers.Adam(1e-4)
    if isinstance(getattr(model, "qresearch_info", None), dict):
        optimizer = qresearch.configure_optimizer(optimizer, model)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _time_steps(model, ds, steps: int) -> float:
    from qresearch import training

    timer = training.BatchTimer()
    model.fit(ds, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return timer.median(skip=0)


#: zoo models measured, with their input shapes (10 classes)
MODELS = {"lenet5": (28, 28, 1), "mobilenet_tiny": (32, 32, 3)}


def parse_model_arg(entry: str) -> Tuple[str, Tuple[int, ...]]:
    """``--models`` entry ``NAME[:HxWxC]`` -> (name, input shape); the zoo's shapes by default, else 32x32x3."""
    name, _, shape = entry.partition(":")
    if shape:
        try:
            dims = tuple(int(d) for d in shape.lower().split("x"))
        except ValueError:
            dims = ()
        if len(dims) != 3 or min(dims) < 1:
            raise SystemExit(f"--models {entry!r}: the input shape must be HxWxC, e.g. {name}:32x32x3")
        return name, dims
    return name, MODELS.get(name, (32, 32, 3))


def _fresh(model_name: str, input_shape):
    from qresearch import models
    from qresearch._compat import keras

    keras.utils.set_random_seed(0)
    return models.build_model(models.model_config(model_name), input_shape, 10)


def _contestants(calibration) -> List[Any]:
    """(name, build(float model) -> QAT model): tfmot's stock 8-bit and experimental n-bit (4/4) schemes,
    then every built-in preset (calibrated on the same images), then lsq with its model input's step trained, lsq
    quantizing every op, and lsq at 2 bits (BN kept in training there)."""
    import qresearch
    from qresearch import schemes
    from qresearch._compat import tfmot
    from qresearch.config import with_bits

    from benchmarks.accuracy import tfmot_nbit

    out = [("tfmot quantize_model (stock 8-bit)", tfmot.quantization.keras.quantize_model),
           ("tfmot DefaultNBitQuantizeScheme 4/4", lambda m: tfmot_nbit(m, 4))]
    for preset in schemes.names():
        out.append((f"qresearch {preset}",
                    lambda m, p=preset: qresearch.quantize(m, p, calibration_data=calibration)))
    # what learning the 8-bit model input's step would cost: the first layer's input gradient (notes/performance.md)
    lsq_trained_input = dict(schemes.get("lsq").to_dict(), train_input_quantizers=True)
    out.append(("qresearch lsq, train_input_quantizers: true",
                lambda m: qresearch.quantize(m, lsq_trained_input, calibration_data=calibration)))
    # what the per-step MSE range search of the weights costs (``range_rule: mse``, notes/accuracy.md)
    int8_mse = dict(schemes.get("tflite_int8").to_dict())
    int8_mse["weights"] = dict(int8_mse["weights"], range_rule="mse")
    out.append(("qresearch tflite_int8, weights.range_rule: mse",
                lambda m: qresearch.quantize(m, int8_mse, calibration_data=calibration)))
    # every op's output quantized, as tfmot's schemes do (the research presets quantize compute inputs only)
    lsq_every_op = dict(schemes.get("lsq").to_dict(), quantize_ops="all")
    out.append(("qresearch lsq, quantize_ops: all",
                lambda m: qresearch.quantize(m, lsq_every_op, calibration_data=calibration)))
    # at 2-3 bits the learned presets keep BN in training (their scheme's low_bits): what that step costs on BN models
    lsq_2_bits = with_bits(schemes.get("lsq").to_dict(), 2)
    out.append(("qresearch lsq at 2 bits (BN kept: low_bits)",
                lambda m: qresearch.quantize(m, lsq_2_bits, calibration_data=calibration)))
    return out


def _data(input_shape, batch_size: int, batches: int = 8):
    import numpy as np

    rng = np.random.default_rng(0)
    n = batch_size * batches
    x = rng.random((n,) + tuple(input_shape), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return x, y


#: Without ``--rounds``, rounds run until this many seconds of timed steps are spent (at least ``MIN_ROUNDS``, at
#: most ``MAX_ROUNDS``): a LeNet-5 round takes ~2-3 s, so 3 rounds left its ratios ±0.1–0.3 apart between runs
#: (notes/performance.md, "tenth session"), and 15 still left lsq at 1.41 in one run and 1.24 in a 30-round run
#: minutes later (sixteenth session); a mobilenet_tiny round takes ~25 s.
ROUND_BUDGET_S, MIN_ROUNDS, MAX_ROUNDS = 90.0, 3, 30


def more_rounds(done: int, spent_s: float, rounds: Optional[int] = None) -> bool:
    """Whether to time another round: ``rounds`` when given, else until ``ROUND_BUDGET_S`` is spent."""
    if rounds is not None:
        return done < rounds
    return done < MIN_ROUNDS or (done < MAX_ROUNDS and spent_s < ROUND_BUDGET_S)


def step_times(model_name: str, input_shape, steps: int, batch_size: int,
               rounds: Optional[int] = None) -> List[Dict[str, Any]]:
    """Median step time of every model, in interleaved rounds (float first in each; ``rounds``, or as many as
    ``more_rounds`` allows), so a change of machine load hits every model alike; the ratio is taken per round,
    then the median."""
    import qresearch.run  # noqa: F401  (drops Keras' expected "retracing" warnings)
    from qresearch._compat import keras, tf

    x, y = _data(input_shape, batch_size)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True).repeat().prefetch(2)
    keras.backend.clear_session()

    built: Dict[str, Any] = {"float": _compile(_fresh(model_name, input_shape))}
    errors: Dict[str, str] = {}
    for name, make in _contestants(x[:batch_size]):
        try:
            built[name] = _compile(make(_fresh(model_name, input_shape)))
        except Exception as exc:  # report, keep measuring the others
            errors[name] = f"{type(exc).__name__}: {exc}"[:200]
    for name, model in built.items():  # trace and warm up
        _time_steps(model, ds, 3)
    times: Dict[str, List[float]] = {name: [] for name in built}
    ratios: Dict[str, List[float]] = {name: [] for name in built}
    r, started = 0, time.perf_counter()
    while more_rounds(r, time.perf_counter() - started, rounds):
        r += 1
        base = _time_steps(built["float"], ds, steps)
        times["float"].append(base)
        ratios["float"].append(1.0)
        for name, model in built.items():
            if name != "float":
                t = _time_steps(model, ds, steps)
                times[name].append(t)
                ratios[name].append(t / base)
        print(f"  round {r}: float {1e3 * base:.2f} ms/step", flush=True)
    rows = [{"name": name, "step_s": statistics.median(times[name]), "ratio": statistics.median(ratios[name]),
             "ratios": ratios[name]} for name in built]
    rows += [{"name": name, "step_s": None, "ratio": None, "error": err} for name, err in errors.items()]
    return rows


def eval_times(model_name: str, input_shape, batch_size: int, rounds: int = 5, preset: str = "tflite_int8",
               batches: int = 8) -> List[Dict[str, Any]]:
    """Inference time of ``preset`` on the same images: fake-quant graph (export mode), integer-kernel
    emulation, float model, LiteRT interpreter; graph calls (tf.function) and eager calls. Interleaved
    rounds; each ratio is the median over rounds of time / fake-quant graph time in that round."""
    import numpy as np

    import qresearch
    from qresearch._compat import keras, tf
    from qresearch.hardware import deploy
    from qresearch import kernels as integer  # export_mode (was schemes.integer before the kernels package)

    x, _ = _data(input_shape, batch_size, batches)
    keras.backend.clear_session()
    float_model = _fresh(model_name, input_shape)
    q = qresearch.quantize(_fresh(model_name, input_shape), preset, hardware=preset,
                           calibration_data=x[:batch_size])
    chunks = [tf.constant(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    spec = tf.TensorSpec((batch_size,) + tuple(input_shape), tf.float32)

    def graph(model, export=False):
        fn = tf.function(lambda t: model(t, training=False))
        if export:
            with integer.export_mode():  # traced here: the plain FakeQuant graph the converter reads
                fn.get_concrete_function(spec)
        else:
            fn.get_concrete_function(spec)
        return fn

    def eager(model, export=False):
        def run(t):
            if export:
                with integer.export_mode():
                    return model(t, training=False)
            return model(t, training=False)
        return run

    interp = deploy.make_interpreter(deploy.convert(q, preset))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [batch_size] + list(input_shape), strict=False)
    interp.allocate_tensors()
    s_in, z_in = inp["quantization"]
    xq = [deploy.quantize_input(c.numpy(), s_in, z_in, inp["dtype"]) for c in chunks]

    def litert(_):
        for c in xq:
            interp.set_tensor(inp["index"], c)
            interp.invoke()
            interp.get_tensor(out["index"])

    def over_chunks(fn):
        def run(_):
            for c in chunks:
                np.asarray(fn(c))
        return run

    modes = {
        "fake-quant eval, graph (export mode)": over_chunks(graph(q, export=True)),
        "emulated integer eval, graph": over_chunks(graph(q)),
        "float model eval, graph": over_chunks(graph(float_model)),
        "LiteRT interpreter (builtin kernels)": litert,
        "fake-quant eval, eager (export mode)": over_chunks(eager(q, export=True)),
        "emulated integer eval, eager calls": over_chunks(eager(q)),
        "emulated, deploy.simulate (as verify)": lambda _: deploy.simulate(q, x, batch_size),
    }
    for fn in modes.values():  # warm up
        fn(None)
    times: Dict[str, List[float]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, fn in modes.items():
            t0 = time.perf_counter()
            fn(None)
            times[name].append(time.perf_counter() - t0)
    base = next(iter(times))
    return [{"name": name, "s_per_image": statistics.median(ts) / len(x),
             "ratio": statistics.median([t / b for t, b in zip(ts, times[base])])} for name, ts in times.items()]


#: Memory-worker processes per model: on LeNet-5 one run's ratios moved by up to 0.4 from the next (the
#: executor's schedule decides which temporaries are alive together; notes/performance.md, twelfth session).
MEMORY_RUNS = 3


def memory_peaks(model_name: str, input_shape, batch_size: int, steps: int = 3,
                 runs: int = MEMORY_RUNS) -> List[Dict[str, Any]]:
    """Peak bytes in use during training steps, per contestant, measured in ``runs`` subprocesses whose CPU
    allocator keeps statistics (``TF_CPU_ALLOCATOR_USE_BFC``). For each contestant: bytes in use before
    it is built, then the peak over ``steps`` steps after a warm-up step; its footprint is the
    difference (weights, quantizer variables, optimizer slots, the step's activations and gradients).
    oneDNN's own scratch buffers are not in TF's allocator and not counted. Combined by ``combine_runs``."""
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "benchmarks", "--memory-worker", model_name,
           "--input", ",".join(map(str, input_shape)), "--batch", str(batch_size), "--steps", str(steps)]
    results = []
    for _ in range(runs):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
        if not lines:  # (TF may exit non-zero at interpreter shutdown after printing its result)
            raise RuntimeError(f"memory worker failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        results.append(json.loads(lines[-1]))
    return combine_runs(results)


def combine_runs(results: List[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """One row per contestant from several workers' rows (the float model first in each): the median peak,
    the median of the per-run ratios to that run's float peak (measured in the same process), and their
    range over the runs (``ratio_range``)."""
    rows = []
    for i, first in enumerate(results[0]):
        peaks = [run[i].get("peak_bytes") for run in results]
        if not all(peaks):   # failed in a run: no figure
            rows.append({"name": first["name"], "peak_bytes": None, "ratio": None, "ratio_range": None,
                         "runs": len(results)})
            continue
        ratios = [peak / run[0]["peak_bytes"] for peak, run in zip(peaks, results)]
        rows.append({"name": first["name"], "peak_bytes": statistics.median(peaks),
                     "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
                     "runs": len(results)})
    return rows


def _memory_worker(model_name: str, input_shape, batch_size: int, steps: int) -> None:
    import gc

    from qresearch._compat import keras, tf

    x, y = _data(input_shape, batch_size, 1)
    ds = tf.data.Dataset.from_tensors((tf.constant(x), tf.constant(y))).repeat()
    rows = []
    for name, make in [("float", lambda m: m)] + _contestants(x):
        keras.backend.clear_session()
        gc.collect()
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        model = _compile(make(_fresh(model_name, input_shape)))
        model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
        tf.config.experimental.reset_memory_stats("CPU:0")
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        rows.append({"name": name, "peak_bytes": peak - before})
        del model
    print(json.dumps(rows))


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


def _table(title: str, rows, value_key: str, value_label: str, scale: float, fmt: str) -> None:
    spread = any(r.get("ratio_range") for r in rows)   # several runs: their range beside the median
    extra = (" x ref over runs |", "----------------:|") if spread else ("", "")
    print(f"\n{title}\n| {'':44s} | {value_label:>9s} | x ref |{extra[0]}\n|{'-' * 46}|{'-' * 11}|------:|{extra[1]}")
    for r in rows:
        v = f"{scale * r[value_key]:{fmt}}" if r.get(value_key) else "failed"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "–"
        low, high = r.get("ratio_range") or (None, None)
        more = (f" {f'{low:.2f}–{high:.2f}' if low else '–':>16s} |") if spread else ""
        print(f"| {r['name']:44s} | {v:>9s} | {ratio:>5s} |{more}")
        if r.get("error"):
            print(f"|   {r['error'][:100]}")


#: What ``make bench`` runs (``--only`` picks a subset).
PARTS = ("steps", "eval", "memory", "sweep", "mixed", "stream")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None,
                    help="comma-separated subset of steps,eval,memory,sweep,mixed,stream (default: all)")
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"zoo models or importable builders pkg.mod.fn, each NAME[:HxWxC] (default "
                         f"{','.join(MODELS)}; other models' input 32x32x3 unless given)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model and round (median)")
    ap.add_argument("--rounds", type=int, default=None,
                    help=f"interleaved step-timing rounds (default: until {ROUND_BUDGET_S:.0f} s of timed steps, "
                         f"{MIN_ROUNDS} to {MAX_ROUNDS} rounds)")
    ap.add_argument("--float-epochs", type=int, default=60, help="float epochs in the sweep benchmark")
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--input", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        _memory_worker(args.memory_worker, tuple(int(s) for s in args.input.split(",")), args.batch, args.steps)
        return 0
    parts = set(args.only.split(",")) if args.only else set(PARTS)
    unknown = parts - set(PARTS)
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)}")
    names = [parse_model_arg(m) for m in args.models.split(",") if m]
    report: Dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count()}

    for model, shape in names:
        if "steps" in parts:
            print(f"\nQAT step time / float step time: {model}, input {shape}, batch {args.batch}, "
                  f"median of {args.steps} steps x {args.rounds or 'adaptive'} rounds, Adam", flush=True)
            rows = step_times(model, shape, args.steps, args.batch, args.rounds)
            report.setdefault("step_times", {})[model] = rows
            _table(f"training step, {model} (x ref = x float)", rows, "step_s", "ms/step", 1e3, ".2f")
        if "eval" in parts:
            print(f"\nInference of tflite_int8, {model}: 8 batches of {args.batch}", flush=True)
            rows = eval_times(model, shape, args.batch)
            report.setdefault("eval_times", {})[model] = rows
            _table(f"inference, {model} (x ref = x fake-quant graph eval)", rows, "s_per_image", "us/image",
                   1e6, ".1f")
        if "memory" in parts:
            print(f"\nPeak memory of a training step, {model}, batch {args.batch} (median of {MEMORY_RUNS} "
                  "subprocesses)", flush=True)
            rows = memory_peaks(model, shape, args.batch)
            report.setdefault("memory", {})[model] = rows
            _table(f"peak bytes in use during a training step, {model} (x ref = x float)", rows, "peak_bytes",
                   "MiB", 1 / 2 ** 20, ".2f")

    if "mixed" in parts:  # issue #14's comparison: mixed at uniform W3A3's BOPs vs uniform W3A3 and W4A4
        from benchmarks import mixed

        # issue #14: LeNet-5 on digits and MNIST, a ResNet-8 on a CIFAR-10 subset (data from keras.datasets, or
        # QRESEARCH_DATA_DIR / ../shared/datasets where there is no network); digits first: seconds, and no
        # download. LeNet-5 at uniform W3A3 is within ~1 pt of float (no room for a gain); ResNet-8 is 4.7 pt
        # under (notes/mixed.md, 2026-12-06)
        for dataset, model, extra in (
                ("digits", "LeNet-5", []),
                ("mnist", "LeNet-5", ["--float-epochs", "3", "--qat-epochs", "1"]),
                ("cifar10", "ResNet-8", ["--model", "resnet20", "--depth", "8", "--train-samples", "5000",
                                         "--test-samples", "2000", "--float-epochs", "15", "--qat-epochs", "2"])):
            print(f"\nMixed precision (benchmarks/mixed.py, {dataset} {model}, every layer allocated, 2 seeds)",
                  flush=True)
            try:
                mixed.main(["--dataset", dataset, "--all-layers", *extra])
            except Exception as exc:  # a dataset that cannot be loaded here must not lose the other results
                print(f"mixed precision on {dataset} skipped: {type(exc).__name__}: {exc}", flush=True)

    if "stream" in parts:  # issue #15: streamed datasets against the same images in memory
        from benchmarks import stream

        print("\nInput pipeline throughput (benchmarks/stream.py: JPEG folder, TFRecord, in memory)", flush=True)
        report["stream"] = stream.run(images=5000, batch=128, epochs=3, model="mobilenet_tiny", steps=30)
        stream.print_table(report["stream"])

    if "sweep" in parts:
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
