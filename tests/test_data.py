"""Datasets: the embedded digits, local mirrors (skipped when ../shared is absent), clear errors."""
import os
from pathlib import Path

import numpy as np
import pytest

from qresearch import data
from qresearch.paths import REPO_DIR

SHARED = Path(os.environ.get(data.DATA_DIR_ENV) or REPO_DIR.parent / "shared" / "datasets")


def test_digits_split_is_stratified_and_fixed():
    a = data.load_dataset({"name": "digits"})
    b = data.load_dataset({"name": "digits"})
    assert a.x_train.shape[1:] == (8, 8, 1) and a.num_classes == 10
    assert len(a.x_train) + len(a.x_test) == 1797
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert set(np.unique(a.y_test)) == set(range(10))


def test_subsets_and_pipelines():
    ds = data.load_dataset({"name": "digits", "train_samples": 100, "test_samples": 50})
    assert (len(ds.x_train), len(ds.x_test)) == (100, 50)
    batches = list(ds.train_pipeline(32, seed=1))
    assert len(batches) == 4 and batches[0][0].shape == (32, 8, 8, 1)
    again = list(ds.train_pipeline(32, seed=1))
    np.testing.assert_array_equal(batches[0][1].numpy(), again[0][1].numpy())
    assert len(list(ds.train_pipeline(32, seed=1, steps_per_epoch=2))) == 2
    assert ds.calibration(10, seed=0).shape == (10, 8, 8, 1)


def test_augmentation_keeps_shapes():
    ds = data.load_dataset({"name": "digits", "train_samples": 16, "augment": True})
    x, y = next(iter(ds.train_pipeline(16, seed=0)))
    assert x.shape == (16, 8, 8, 1) and y.shape == (16,)


def test_unknown_dataset_lists_known():
    with pytest.raises(KeyError, match="digits"):
        data.load_dataset({"name": "imagenet"})


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "REPO_DIR", tmp_path / "nowhere")
    with pytest.raises(data.DataUnavailableError) as e:
        data.load_dataset({"name": "mnist", "data_dir": str(tmp_path), "download": False})
    msg = str(e.value)
    assert "mnist.npz" in msg and "dataset.data_dir" in msg and data.DATA_DIR_ENV in msg


def test_missing_mirror_folder_is_reported(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "REPO_DIR", tmp_path / "nowhere")
    with caplog.at_level("WARNING", logger="qresearch.data"):
        with pytest.raises(data.DataUnavailableError):
            data.load_dataset({"name": "mnist", "data_dir": str(tmp_path / "typo"), "download": False})
    assert "dataset.data_dir=" in caplog.text and "typo is not a folder" in caplog.text


def test_plugin_dataset(tmp_path):
    @data.register_dataset("tiny_random_test", overwrite=True)
    def tiny(cfg):
        rng = np.random.default_rng(0)
        return data.Dataset("tiny", rng.random((20, 4, 4, 1), np.float32), rng.integers(0, 2, 20).astype(np.int32),
                            rng.random((10, 4, 4, 1), np.float32), rng.integers(0, 2, 10).astype(np.int32), 2)

    assert data.load_dataset({"name": "tiny_random_test"}).input_shape == (4, 4, 1)


@pytest.mark.skipif(not (SHARED / "mnist.npz").is_file(), reason="no local MNIST mirror")
def test_mnist_from_local_mirror():
    ds = data.load_dataset({"name": "mnist", "data_dir": str(SHARED), "download": False, "test_samples": 1000})
    assert ds.x_train.shape == (60000, 28, 28, 1) and len(ds.x_test) == 1000
    assert abs(float(ds.x_train.mean()) - 0.1307) < 0.01


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-jpeg.tar.gz").is_file(), reason="no local CIFAR-10 mirror")
def test_cifar10_jpeg_decoded_once_and_cached(tmp_path):
    cfg = {"name": "cifar10", "data_dir": str(SHARED), "download": False}
    ds = data.load_dataset(cfg, cache_dir=str(tmp_path))
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    cached = list((tmp_path / "data").glob("cifar10-jpeg-*.npz"))
    assert len(cached) == 1
    again = data.load_dataset(cfg, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.y_train, again.y_train)
