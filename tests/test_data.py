"""Datasets: the embedded digits, local mirrors (skipped when ../shared is absent), clear errors."""
import os
from pathlib import Path

import numpy as np
import pytest

import qresearch
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


# ------------------------------------------------------------------ data safety
def _digits_with(change):
    """A plugin dataset: the digits, edited by ``change(ds)`` the way a broken file or loader would be."""
    @data.register_dataset("digits_edited_test", overwrite=True)
    def edited(cfg):
        ds = data.load_digits(cfg)
        change(ds)
        return ds

    return {"name": "digits_edited_test"}


def test_nan_in_training_images_is_refused_with_array_count_and_sample(caplog):
    def change(ds):
        ds.x_train[17, 3, 4, 0] = np.nan

    with pytest.raises(data.DataError) as e:
        data.load_dataset({**_digits_with(change), "train_samples": 100})  # refused whole, before the subset
    msg = str(e.value)
    assert "x_train holds 1 non-finite value" in msg and "sample 17 (element [17, 3, 4, 0])" in msg
    assert "Fix:" in msg and isinstance(e.value, ValueError) and isinstance(e.value, qresearch.QResearchError)


def test_infinity_in_test_images_is_refused():
    def change(ds):
        ds.x_test[40, 0, 0, 0] = np.inf
        ds.x_test[41, 2, 2, 0] = -np.inf

    with pytest.raises(data.DataError, match=r"x_test holds 2 non-finite values .* sample 40 \(element \[40, 0, 0, 0"):
        data.load_dataset(_digits_with(change))


def test_label_out_of_range_is_refused_naming_value_index_and_split():
    def change(ds):
        ds.y_test[35] = 12

    with pytest.raises(data.DataError) as e:
        data.load_dataset(_digits_with(change))
    msg = str(e.value)
    assert "y_test[35] = 12 is outside [0, 10)" in msg and "test split" in msg
    assert "num_classes=13" in msg and "remap" in msg


def test_fractional_labels_are_refused():
    def change(ds):
        ds.y_train = ds.y_train.astype(np.float32)
        ds.y_train[3] = 2.5

    with pytest.raises(data.DataError, match=r"y_train\[3\] = 2.5 is not a class index"):
        data.load_dataset(_digits_with(change))


def test_whole_float_labels_and_column_labels_are_accepted():
    def change(ds):  # Keras takes both; only their values matter
        ds.y_train = ds.y_train.astype(np.float32)
        ds.y_test = ds.y_test[:, None]

    assert data.load_dataset(_digits_with(change)).num_classes == 10


def test_fingerprint_is_stable_and_changes_with_one_label():
    a = data.load_dataset({"name": "digits", "train_samples": 300})
    b = data.load_dataset({"name": "digits", "train_samples": 300})
    assert a.fingerprint() == b.fingerprint() == a.describe()["fingerprint"] and len(a.fingerprint()) == 16
    y = a.y_train.copy()
    y[7] = (y[7] + 1) % 10
    b.y_train = y  # a replaced array is fingerprinted again, not served from the cached value
    assert b.fingerprint() != a.fingerprint()
    assert data.load_dataset({"name": "digits", "train_samples": 299}).fingerprint() != a.fingerprint()


def _tiny_model():
    from qresearch import keras

    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(inp))
    return keras.Model(inp, out)


def test_nan_calibration_data_is_refused():
    x = data.load_dataset({"name": "digits"}).x_train[:64].copy()
    x[:] = np.nan
    with pytest.raises(data.DataError, match=r"calibration_data holds 4096 non-finite values .* sample 0 "):
        qresearch.quantize(_tiny_model(), "tflite_int8", calibration_data=x)


def test_nan_in_a_later_calibration_batch_names_its_sample():
    import qresearch.schemes

    x = data.load_dataset({"name": "digits"}).x_train[:64].copy()
    x[37, 1, 1, 0] = np.nan
    q = qresearch.quantize(_tiny_model(), "tflite_int8")
    with pytest.raises(data.DataError, match=r"1 non-finite value .* sample 37 \(element \[37, 1, 1, 0\]\)"):
        qresearch.schemes.calibrate(q, [x[:32], x[32:]])
