"""The runner in-process on streamed datasets: the same numbers as the same images in memory, TFRecord with a
deployment check, and (when ../shared holds it) a folder of real CIFAR-10 JPEGs."""
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from qresearch import config as qconfig  # noqa: F401  (registers the schema)
from qresearch import data
from qresearch.paths import CONF_DIR, REPO_DIR
from qresearch.run import run_job

SHARED = Path(os.environ.get(data.DATA_DIR_ENV) or REPO_DIR.parent / "shared" / "datasets")
FAST = ["model=mlp", "model.hidden=[32]", "training=fast", "training.calibration_samples=64", "logger=disabled",
        "scheme=minmax_nbit", "bits=4"]
TRAIN = ["training.float.epochs=8", "training.float.learning_rate=0.01"]  # 300 images: 40 steps


def _run(tmp_path, name, overrides):
    GlobalHydra.instance().clear()
    out = tmp_path / name
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=FAST + [f"paths.output_dir={out}",
                                                                f"paths.cache_dir={tmp_path}/cache"] + overrides)
    run_job(cfg)
    (path,) = (out / "runs").rglob("result.json")
    return json.loads(path.read_text())


def test_folder_gives_the_numbers_of_the_same_images_in_memory(tmp_path, digits_folder):
    d = digits_folder
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    folder = _run(tmp_path, "folder", ["dataset=image_folder", f"dataset.path={d.root}", "dataset.image_size=[8,8]",
                                       "dataset.channels=1", *TRAIN])
    memory = _run(tmp_path, "memory", ["dataset=npz", f"dataset.path={npz}", "dataset.scale=1/255", *TRAIN])
    for rec in (folder, memory):
        assert rec["status"] == "completed", rec.get("error")
    assert folder["dataset"]["kind"] == "image_folder" and folder["dataset"]["train"] == 300
    for key in ("float_accuracy", "ptq_accuracy", "qat_accuracy"):  # same batches, same calibration images
        assert folder["metrics"][key] == memory["metrics"][key], key
    assert folder["metrics"]["qat_accuracy"] > 0.3
    assert folder["qat_history"]["loss"] == memory["qat_history"]["loss"]


def test_tfrecord_run_with_deployment(tmp_path, digits_folder):
    from qresearch.data import tfrecord

    tfrecord.folder_to_tfrecords(str(digits_folder.root), str(tmp_path / "s" / "train"), 2, "train")
    tfrecord.folder_to_tfrecords(str(digits_folder.root), str(tmp_path / "s" / "test"), 2, "test")
    rec = _run(tmp_path, "tfr", ["dataset=tfrecord", f"dataset.train={tmp_path}/s/train-*",
                                 f"dataset.test={tmp_path}/s/test-*", "dataset.num_classes=10",
                                 "dataset.image_size=[8,8]", "dataset.channels=1", "dataset.deploy_samples=60",
                                 "hardware=tflite_int8", "scheme=tflite_int8", "bits=8"])
    assert rec["status"] == "completed", rec.get("error")
    assert rec["deploy"]["n_samples"] == 60 and rec["metrics"]["deployed_accuracy"] is not None
    assert rec["dataset"]["kind"] == "tfrecord" and rec["dataset"]["test"] == 100


def _cifar_subset(tar_path: Path, root: Path, per_class: dict) -> None:
    """The first ``per_class[split]`` JPEGs of each class of each split, copied out of the tarball."""
    taken: dict = {}
    with tarfile.open(tar_path, "r:gz") as tf_:
        for m in tf_:
            parts = m.name.strip("./").split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] not in per_class:
                continue
            key = (parts[0], parts[1])
            if taken.get(key, 0) >= per_class[parts[0]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            (root / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
            (root / parts[0] / parts[1] / parts[2]).write_bytes(tf_.extractfile(m).read())


@pytest.mark.skipif(not (SHARED / "cifar10-jpeg.tar.gz").is_file(), reason="no local CIFAR-10 mirror")
def test_real_cifar10_jpegs_end_to_end(tmp_path):
    from PIL import Image

    root = tmp_path / "cifar"
    _cifar_subset(SHARED / "cifar10-jpeg.tar.gz", root, {"train": 30, "test": 10})
    ds = data.load_dataset({"name": "image_folder", "path": str(root), "image_size": [32, 32],
                            "mean": data.CIFAR10_MEAN.tolist(), "std": data.CIFAR10_STD.tolist()})
    assert ds.classes == list(data.CIFAR10_CLASSES) and (ds.train_size, ds.test_size) == (300, 100)
    x, y = ds.test_arrays(None)
    first = sorted((root / "test" / "airplane").iterdir())[0]
    ref = (np.asarray(Image.open(first).convert("RGB"), np.float32) / 255 - data.CIFAR10_MEAN) / data.CIFAR10_STD
    assert y[0] == 0 and np.abs(x[0] - ref).mean() < 0.05  # libjpeg builds may differ by a unit or so
    rec = _run(tmp_path, "cifar", ["dataset=image_folder", f"dataset.path={root}", "dataset.image_size=[32,32]",
                                   "dataset.flip=true", "dataset.pad=4", "dataset.crop=random",
                                   "training.float.epochs=2"])
    assert rec["status"] == "completed", rec.get("error")
    assert rec["dataset"]["classes"][0] == "airplane" and 0.0 <= rec["metrics"]["qat_accuracy"] <= 1.0
