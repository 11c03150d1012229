"""dataset=image_folder: the same images and labels as in memory, the listing fingerprint, clear errors."""
import os
import shutil

import numpy as np
import pytest

from qresearch import data
from qresearch.checks import DataError
from qresearch.errors import ConfigError

from image_fixtures import N_TEST, N_TRAIN, write_folder


def _memory(d):
    """The folder's images as the in-memory dataset npz would load them (uint8 x 1/255)."""
    return data.dataset_from_arrays("mem", d.x_train, d.y_train, d.x_test, d.y_test, num_classes=10, scale="1/255")


def test_layout_classes_and_sizes(digits_folder):
    ds = data.load_dataset(digits_folder.cfg())
    assert isinstance(ds, data.StreamingDataset)
    assert (ds.train_size, ds.test_size, ds.num_classes) == (N_TRAIN, N_TEST, 10)
    assert ds.input_shape == (8, 8, 1) and ds.classes == [str(i) for i in range(10)]
    rec = ds.describe()
    assert rec["kind"] == "image_folder" and rec["train"] == N_TRAIN and len(rec["fingerprint"]) == 16


def test_same_images_labels_and_order_as_in_memory(digits_folder):
    ds, mem = data.load_dataset(digits_folder.cfg()), _memory(digits_folder)
    x, y = ds.test_arrays(None)
    np.testing.assert_array_equal(x, mem.x_test)  # bit-identical pixels
    np.testing.assert_array_equal(y, mem.y_test)
    batches = [(a.numpy(), b.numpy()) for a, b in ds.test_pipeline(64)]
    assert [len(b) for _, b in batches] == [64, 36]
    np.testing.assert_array_equal(np.concatenate([a for a, _ in batches]), mem.x_test)
    # the same seeded shuffle and calibration picks as the arrays: training sees the same batches
    for (fa, fb), (ma, mb) in zip(ds.train_pipeline(32, seed=5), mem.train_pipeline(32, seed=5)):
        np.testing.assert_array_equal(fa.numpy(), ma.numpy())
        np.testing.assert_array_equal(fb.numpy(), mb.numpy())
    np.testing.assert_array_equal(ds.calibration(40, seed=2), mem.calibration(40, seed=2))
    assert ds.calibration(40, seed=2).shape == (40, 8, 8, 1)


def test_equal_accuracy_folder_and_memory(digits_folder):
    from qresearch import models, training
    from qresearch._compat import keras
    from qresearch.evaluation import test_accuracy

    ds, mem = data.load_dataset(digits_folder.cfg()), _memory(digits_folder)
    keras.utils.set_random_seed(0)
    model = models.build_model({"name": "mlp", "hidden": [16]}, ds.input_shape, 10)
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ds.train_pipeline(32, seed=0), epochs=8, verbose=0)
    acc = test_accuracy(model, ds)
    assert acc == test_accuracy(model, mem) == training.accuracy(model, mem.x_test, mem.y_test)
    assert acc > 0.5


def test_validation_fraction_split(tmp_path, digits_folder):
    d = digits_folder
    write_folder(tmp_path, d.x_train[..., 0], d.y_train)  # <class>/ directly under the folder
    cfg = {"name": "image_folder", "path": str(tmp_path), "image_size": [8, 8], "channels": 1}
    with pytest.raises(ConfigError, match="validation_fraction"):
        data.load_dataset(cfg)
    a = data.load_dataset({**cfg, "validation_fraction": 0.2})
    b = data.load_dataset({**cfg, "validation_fraction": 0.2})
    assert a.train_size + a.test_size == N_TRAIN and abs(a.test_size - 0.2 * N_TRAIN) <= 10
    names = lambda src: {e[0] for e in src.entries}  # noqa: E731
    assert not names(a.train) & names(a.test) and names(a.test) == names(b.test)
    assert {e[3] for e in a.test.entries} == set(range(10))  # every class held out in part (stratified)
    c = data.load_dataset({**cfg, "validation_fraction": 0.2, "split_seed": 1})
    assert names(c.test) != names(a.test)
    sub = data.load_dataset({**cfg, "validation_fraction": 0.2, "train_samples": 50, "test_samples": 7})
    assert (sub.train_size, sub.test_size) == (50, 7)


def test_fingerprint_from_the_listing_only(tmp_path, digits_folder):
    root = tmp_path / "copy"
    shutil.copytree(digits_folder.root, root)
    cfg = {**digits_folder.cfg(), "path": str(root)}
    fp = data.load_dataset(cfg).fingerprint()
    assert data.load_dataset(cfg).fingerprint() == fp
    # contents are not read: same size and mtime, other bytes -> same fingerprint (the documented trade-off)
    f = root / "train" / "3" / os.listdir(root / "train" / "3")[0]
    st = f.stat()
    f.write_bytes(bytes(reversed(f.read_bytes())))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data.load_dataset(cfg).fingerprint() == fp
    # ... and no file needs to be readable to compute it (only the folders are listed)
    from qresearch.data.folder import FileList, scan

    _, _, train, _ = scan(cfg)
    assert FileList(root / "nowhere", train).digest() == data.load_dataset(cfg).train.digest()
    # a touched file, a file of another size, an added file, other preprocessing: another fingerprint
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    fp_touched = data.load_dataset(cfg).fingerprint()
    assert fp_touched != fp
    g = root / "test" / "0" / os.listdir(root / "test" / "0")[0]
    shutil.copy(g, root / "test" / "0" / "extra.png")
    fp_added = data.load_dataset(cfg).fingerprint()
    assert fp_added not in (fp, fp_touched)
    assert data.load_dataset({**cfg, "mean": [0.5]}).fingerprint() != fp_added
    assert data.load_dataset({**cfg, "test_samples": 50}).fingerprint() != fp_added


def test_resume_check_sees_an_added_file(tmp_path, digits_folder):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from qresearch import stages
    from qresearch.config import experiment
    from qresearch.paths import CONF_DIR

    root = tmp_path / "copy"
    shutil.copytree(digits_folder.root, root)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        exp = experiment(compose(config_name="config", overrides=[
            "dataset=image_folder", f"dataset.path={root}", "dataset.image_size=[8,8]", "dataset.channels=1"]))
    prev = {"dataset": {"fingerprint": stages.load_data(exp).fingerprint()}}
    assert stages.same_data(exp, prev)
    shutil.copy(root / "train" / "1" / os.listdir(root / "train" / "1")[0], root / "train" / "1" / "new.png")
    assert not stages.same_data(exp, prev)


# ------------------------------------------------------------------ errors
def _tiny(root, shape=(8, 8)):
    x = np.zeros((4, *shape), np.uint8)
    for split in ("train", "test"):
        write_folder(root, x, np.array([0, 0, 1, 1]), split)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="no such folder"):
        data.load_dataset({"name": "image_folder", "path": str(tmp_path / "none"), "image_size": [8, 8]})
    with pytest.raises(ConfigError, match="needs dataset.path"):
        data.load_dataset({"name": "image_folder", "image_size": [8, 8]})
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        data.load_dataset({"name": "image_folder", "path": str(tmp_path), "image_size": [8, 8]})


def test_class_folder_without_images(tmp_path):
    _tiny(tmp_path)
    (tmp_path / "train" / "2").mkdir()
    (tmp_path / "train" / "2" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder .*train/2 has no images"):
        data.load_dataset({"name": "image_folder", "path": str(tmp_path), "image_size": [8, 8]})


def test_test_class_unknown_to_training(tmp_path):
    _tiny(tmp_path)
    write_folder(tmp_path, np.zeros((1, 8, 8), np.uint8), np.array([7]), "test")
    with pytest.raises(DataError, match="lacks: 7"):
        data.load_dataset({"name": "image_folder", "path": str(tmp_path), "image_size": [8, 8]})


def test_mismatched_image_size_names_the_file(tmp_path):
    _tiny(tmp_path, shape=(10, 12))
    with pytest.raises(DataError, match=r"image .*train/0/0000.png\" is \[10 12 3\] \(height, width, channels\) but dataset.image_size is \[8, 8\]"):
        data.load_dataset({"name": "image_folder", "path": str(tmp_path), "image_size": [8, 8]})
    # resized on the way in: accepted
    ds = data.load_dataset({"name": "image_folder", "path": str(tmp_path), "image_size": [8, 8], "resize": [8, 8]})
    assert ds.test_arrays(None)[0].shape == (4, 8, 8, 3)


def test_unreadable_image_is_named(tmp_path):
    _tiny(tmp_path)
    bad = tmp_path / "train" / "1" / "0003.png"
    bad.write_text("this is not an image")
    ds = data.load_dataset({"name": "image_folder", "path": str(tmp_path), "image_size": [8, 8]})
    from qresearch._compat import tf

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"unreadable image.*train/1/0003.png"):
        list(ds.train_pipeline(4, seed=0))
    # the first training image is decoded at load: there, a DataError
    first = tmp_path / "train" / "0" / "0000.png"
    first.write_bytes(b"")
    with pytest.raises(DataError, match=r"unreadable image.*train/0/0000.png"):
        data.load_dataset({"name": "image_folder", "path": str(tmp_path), "image_size": [8, 8]})
