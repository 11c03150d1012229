"""Input-pipeline throughput: images/s of the streamed datasets (a folder of JPEGs, TFRecord shards of
the same files) against the same images decoded into memory, and whether streaming starves training.

``python -m benchmarks.stream [--images 5000] [--batch 128] [--epochs 3] [--model mobilenet_tiny] [--steps 30]``

Data: the first ``--images`` training JPEGs of ``cifar10-jpeg.tar.gz`` (a local mirror: dataset.data_dir,
$QRESEARCH_DATA_DIR or ../shared/datasets), copied into a temporary folder, else as many random 32x32
JPEGs written there. The in-memory contestant holds the same images as decoded by the folder pipeline.

1. pipeline alone: images/s of one training epoch (shuffle, decode, flip + pad-and-crop, batch), the
   median over ``--epochs`` epochs after a warm-up epoch; no model.
2. training: median step time of ``--model`` fed by each pipeline (same batches, Adam). Streaming
   starves training when its step time exceeds the in-memory one: the "x memory" column says by how much.
3. evaluation of in-memory data: test accuracy through the test pipeline (``qresearch.evaluation``, what
   the runner uses) against ``model.predict`` on the arrays (the runner's former path), float and
   tflite_int8 QAT ``--model``, in interleaved rounds; the accuracies must be equal.
Also the process's resident memory after each contestant (streaming first: it must not grow with the data).
Writes JSON under ``outputs/benchmarks/stream.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

PREPROCESS = {"image_size": [32, 32], "flip": True, "pad": 4, "crop": "random",
              "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def make_folder(root: Path, n: int) -> str:
    """``n`` training JPEGs (train/<class>/) and n/5 test JPEGs; returns where they came from."""
    from qresearch import data

    tar = data._find({}, ["cifar10-jpeg.tar.gz"])
    if tar is not None:
        want = {"train": n, "test": max(10, n // 5)}
        per_class = {s: -(-k // 10) for s, k in want.items()}
        taken: Dict[Any, int] = {}
        with tarfile.open(tar, "r:gz") as tf_:
            for m in tf_:
                parts = m.name.strip("./").split("/")
                if not m.isfile() or len(parts) != 3 or parts[0] not in want:
                    continue
                key = (parts[0], parts[1])
                if taken.get(key, 0) < per_class[parts[0]]:
                    taken[key] = taken.get(key, 0) + 1
                    (root / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
                    (root / parts[0] / parts[1] / parts[2]).write_bytes(tf_.extractfile(m).read())
        return f"{tar} (first {per_class['train']} training JPEGs of each class)"
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, k in (("train", n), ("test", max(10, n // 5))):
        for i in range(k):
            d = root / split / f"c{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:05d}.jpg", quality=90)
    return "random 32x32 JPEGs (no CIFAR-10 mirror found)"


def _epoch_rate(pipe, epochs: int) -> float:
    """Images/s of whole passes over ``pipe`` (the first pass warms up and is not counted)."""
    rates = []
    for i in range(epochs + 1):
        n, t0 = 0, time.perf_counter()
        for x, _ in pipe:
            n += int(x.shape[0])
        if i:
            rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def _step_time(model_name: str, pipe, steps: int) -> float:
    from qresearch import models, training
    from qresearch._compat import keras

    keras.utils.set_random_seed(0)
    model = models.build_model({"name": model_name}, (32, 32, 3), 10)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(pipe.repeat(), epochs=1, steps_per_epoch=3, verbose=0)  # trace, warm up
    timer = training.BatchTimer()
    model.fit(pipe.repeat(), epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return timer.median(skip=0)


def eval_paths(model_name: str, n: int = 2000, rounds: int = 3) -> List[Dict[str, Any]]:
    """Seconds per test-set evaluation of in-memory data: the pipeline path against predict on arrays."""
    import qresearch
    from qresearch import data, models, training
    from qresearch._compat import keras
    from qresearch.evaluation import test_accuracy

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    ds = data.Dataset("random", x[:256], y[:256], x, y, 10)
    keras.utils.set_random_seed(0)
    fm = models.build_model({"name": model_name}, (32, 32, 3), 10)
    qm = qresearch.quantize(models.build_model({"name": model_name}, (32, 32, 3), 10), "tflite_int8",
                            hardware="tflite_int8", calibration_data=x[:256])
    rows = []
    for label, m in (("float", fm), ("tflite_int8 QAT", qm)):
        t_old, t_new = [], []
        for _ in range(rounds):  # interleaved; each call traces anew, as each runner stage does
            t0 = time.perf_counter()
            a_old = training.accuracy(m, x, y, 256)
            t_old.append(time.perf_counter() - t0)
            m.predict_function = None  # predict would otherwise reuse the first call's trace
            t0 = time.perf_counter()
            a_new = test_accuracy(m, ds, 256)
            t_new.append(time.perf_counter() - t0)
        rows.append({"model": f"{model_name} {label}", "predict_s": statistics.median(t_old),
                     "pipeline_s": statistics.median(t_new), "equal": a_old == a_new})
        print(f"  eval {model_name} {label}: predict {rows[-1]['predict_s']:.2f} s, pipeline "
              f"{rows[-1]['pipeline_s']:.2f} s, equal accuracy: {a_old == a_new}", flush=True)
    return rows


def run(images: int, batch: int, epochs: int, model: str, steps: int, eval_rounds: int = 3) -> Dict[str, Any]:
    from qresearch import data
    from qresearch.data import tfrecord

    work = Path(tempfile.mkdtemp(prefix="qresearch-stream-"))
    try:
        source = make_folder(work / "folder", images)
        folder_cfg = {"name": "image_folder", "path": str(work / "folder"), **PREPROCESS}
        for split in ("train", "test"):
            tfrecord.folder_to_tfrecords(str(work / "folder"), str(work / "shards" / split), 8, split)
        tfr_cfg = {"name": "tfrecord", "train": str(work / "shards" / "train-*"),
                   "test": str(work / "shards" / "test-*"), "num_classes": 10, "cache_dir": str(work), **PREPROCESS}
        rss0 = _rss_mib()
        contestants = {"image_folder (JPEG files)": data.load_dataset(folder_cfg),
                       "tfrecord (8 shards)": data.load_dataset(tfr_cfg)}
        rows: List[Dict[str, Any]] = []
        for name, ds in contestants.items():
            rate = _epoch_rate(ds.train_pipeline(batch, seed=0), epochs)
            rows.append({"name": name, "images_per_s": rate, "rss_mib": _rss_mib() - rss0, "ds": ds})
            print(f"  {name:28s} {rate:9.0f} images/s", flush=True)
        folder = contestants["image_folder (JPEG files)"]
        # the same pixels, decoded once (all training images, in listed order) and their labels
        x = folder.calibration(folder.train_size)
        y = np.array([e[3] for e in folder.train.entries], np.int32)
        mem = data.Dataset("memory", x, y, x[:10], y[:10], 10, augment=True)
        rate = _epoch_rate(mem.train_pipeline(batch, seed=0), epochs)
        rows.insert(0, {"name": "in memory (decoded arrays)", "images_per_s": rate, "rss_mib": _rss_mib() - rss0,
                        "ds": mem})
        print(f"  {'in memory (decoded arrays)':28s} {rate:9.0f} images/s", flush=True)
        for r in rows:
            r["ratio"] = r["images_per_s"] / rows[0]["images_per_s"]
        if steps:
            for r in rows:
                r["step_s"] = _step_time(model, r["ds"].train_pipeline(batch, seed=0), steps)
                r["train_images_per_s"] = batch / r["step_s"]
                r["step_ratio"] = r["step_s"] / rows[0]["step_s"]
                print(f"  {model} fed by {r['name']:28s} {1e3 * r['step_s']:8.1f} ms/step", flush=True)
        for r in rows:
            r.pop("ds")
        return {"source": source, "images": images, "batch": batch, "model": model, "cpus": os.cpu_count(),
                "rows": rows, "eval": eval_paths(model, rounds=eval_rounds) if eval_rounds else [], "rss_note": "MiB over the start"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_table(rep: Dict[str, Any]) -> None:
    print(f"\nInput pipeline, {rep['images']} training images from {rep['source']}, batch {rep['batch']}, "
          f"{rep['cpus']} CPUs\n| {'pipeline':28s} | images/s | x memory | {rep['model']} ms/step | x memory | RSS MiB |"
          f"\n|{'-' * 30}|---------:|---------:|{'-' * (len(rep['model']) + 10)}:|---------:|--------:|")
    for r in rep["rows"]:
        step = f"{1e3 * r['step_s']:.1f}" if r.get("step_s") else "–"
        sr = f"{r['step_ratio']:.2f}" if r.get("step_ratio") else "–"
        print(f"| {r['name']:28s} | {r['images_per_s']:8.0f} | {r['ratio']:8.2f} | {step:>{len(rep['model']) + 8}s} "
              f"| {sr:>8s} | {r['rss_mib']:7.0f} |")
    print("(RSS: the process's resident memory over its start, after each pipeline's passes: streaming first)")
    if rep.get("eval"):
        print("\nTest accuracy of in-memory data, 2000 images: the pipeline path (the runner's) against predict on arrays"
              "\n| model                          | predict s | pipeline s | equal |\n|--------------------------------|"
              "----------:|-----------:|:-----:|")
        for r in rep["eval"]:
            print(f"| {r['model']:30s} | {r['predict_s']:9.2f} | {r['pipeline_s']:10.2f} | {'yes' if r['equal'] else 'NO'} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="timed passes (after one warm-up pass)")
    ap.add_argument("--model", default="mobilenet_tiny", help="zoo model trained from each pipeline")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per pipeline (0: none)")
    ap.add_argument("--eval-rounds", type=int, default=3, help="rounds of the evaluation comparison (0: none)")
    args = ap.parse_args(argv)
    rep = run(args.images, args.batch, args.epochs, args.model, args.steps, args.eval_rounds)
    print_table(rep)
    out = Path(os.environ.get("QRESEARCH_OUTPUT_DIR", "outputs")) / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream.json").write_text(json.dumps(rep, indent=2, default=str))
    print(f"written: {out / 'stream.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
