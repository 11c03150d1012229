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
# ------------------------------------------------------------------ your own data: dataset=npz, dataset._target_
from qresearch.errors import ConfigError  # noqa: E402
from user_code import write_data_and_models, write_npz  # noqa: E402


def test_npz_fixed_split_with_inferred_classes_and_scale(tmp_path):
    path = write_npz(tmp_path / "mine.npz", n=90, classes=5)
    ds = data.load_dataset({"name": "npz", "path": str(path), "scale": "1/255"})
    with np.load(path) as f:
        x_train, y_test = f["x_train"], f["y_test"]
    assert ds.num_classes == 5 and ds.name == "mine"  # the largest label + 1
    assert ds.x_train.shape == (60, 8, 8, 1) and ds.x_train.dtype == np.float32 and len(ds.x_test) == 30
    np.testing.assert_allclose(ds.x_train[..., 0], x_train / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.y_train.dtype == np.int32
    raw = data.load_dataset({"name": "npz", "path": str(path), "train_samples": 10})  # no scale: values as stored
    assert raw.x_train.max() > 1 and len(raw.x_train) == 10


def test_npz_single_set_is_split_by_a_seeded_fraction_and_classes_can_be_given(tmp_path):
    path = write_npz(tmp_path / "one.npz", n=100, classes=4, single=True)
    cfg = {"name": "npz", "path": str(path), "test_fraction": 0.25, "split_seed": 3, "num_classes": 10}
    a, b = data.load_dataset(cfg), data.load_dataset(cfg)
    assert (len(a.x_train), len(a.x_test), a.num_classes) == (75, 25, 10)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    other = data.load_dataset({**cfg, "split_seed": 4})
    assert not np.array_equal(a.x_test, other.x_test)
    with pytest.raises(ConfigError, match=r"labels in .*one.npz go up to 3 but dataset.num_classes=2.*at least 4"):
        data.load_dataset({**cfg, "num_classes": 2})


def test_npz_vectors_load_and_refuse_image_augmentation(tmp_path):
    """(N, D) arrays (features, token ids) are samples too: float32 like images, ids exactly; augmenting them is
    refused with the fix."""
    from user_code import write_tokens

    path = write_tokens(tmp_path / "tokens.npz", n=40, length=6)
    ds = data.load_dataset({"name": "npz", "path": str(path)})
    with np.load(path) as f:
        np.testing.assert_array_equal(ds.x_train, f["x_train"].astype(np.float32))
    assert ds.input_shape == (6,) and ds.num_classes == 2 and ds.x_train.dtype == np.float32
    with pytest.raises(ConfigError, match=r"augment flips and crops images .* shape \(6,\)\. "
                                          r"Fix: dataset.augment=false"):
        data.load_dataset({"name": "npz", "path": str(path), "augment": True}).train_pipeline(8, seed=0)


def test_a_stray_label_is_not_taken_for_extra_classes(tmp_path):
    # labels 0..9 plus one 12: inferring 13 classes would leave 10 and 11 empty, silently
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 4, 4), dtype=np.uint8), np.arange(60) % 10
    y_bad = y.copy()
    y_bad[35] = 12
    path = tmp_path / "stray.npz"
    np.savez(path, x_train=x[:40], y_train=y_bad[:40], x_test=x[40:], y_test=y[40:])
    with pytest.raises(data.DataError, match=r"up to 12, so 13 classes .* 10, 11 never occur.*y_train\[35\] = 12"
                                             r".*dataset.num_classes=13"):
        data.load_dataset({"name": "npz", "path": str(path)})
    sparse = data.load_dataset({"name": "npz", "path": str(path), "num_classes": 13})  # said on purpose
    assert sparse.num_classes == 13


def test_npz_file_errors_name_the_file_the_keys_and_the_fix(tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((4, 2, 2)), x_train=np.zeros((4, 2, 2)))
    with pytest.raises(ConfigError) as e:
        data.load_dataset({"name": "npz", "path": str(wrong)})
    msg = str(e.value)
    assert str(wrong) in msg and "['images', 'x_train']" in msg and "missing: y_train, x_test, y_test" in msg
    assert "np.savez(" in msg
    with pytest.raises(data.DataUnavailableError, match=r"dataset.path=nowhere.npz: no such file .*give the path"):
        data.load_dataset({"name": "npz", "path": "nowhere.npz"})
    with pytest.raises(ConfigError, match="dataset=npz needs dataset.path="):
        data.load_dataset({"name": "npz", "path": None})
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=np.zeros(10), y=np.zeros(10))
    with pytest.raises(ConfigError, match=r"shape \(\d+,\): inputs must be a non-empty array of images \(N, H, W\) "
                                          r"or \(N, H, W, C\), or of vectors \(N, D\)"):
        data.load_dataset({"name": "npz", "path": str(flat)})
    frac = tmp_path / "frac.npz"
    np.savez(frac, x=np.zeros((10, 2, 2)), y=np.full(10, 0.5))
    with pytest.raises(ConfigError, match="non-integer values"):
        data.load_dataset({"name": "npz", "path": str(frac)})


def test_dataset_target_returns_a_dict_a_tuple_or_a_dataset(tmp_path, monkeypatch):
    write_data_and_models(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = data.load_dataset({"name": "custom", "_target_": "user_data.as_dict", "n": 80, "classes": 4,
                            "test_fraction": 0.25, "scale": 0.5, "train_samples": 30})
    assert (len(ds.x_train), len(ds.x_test), ds.num_classes, ds.input_shape) == (30, 20, 4, (6, 6, 1))
    assert ds.name == "user_data.as_dict" and ds.x_train.max() <= 127.5
    ds = data.load_dataset({"name": "custom", "_target_": "user_data.as_tuple", "num_classes": 3})
    assert (len(ds.x_train), len(ds.x_test), ds.num_classes) == (40, 20, 3)
    ds = data.load_dataset({"name": "custom", "_target_": "user_data.as_dataset"})
    assert ds.name == "mine" and ds.num_classes == 3
    with pytest.raises(ConfigError, match=r"user_data.as_tuple' does not take the options \{'colour': 1\}"):
        data.load_dataset({"name": "custom", "_target_": "user_data.as_tuple", "colour": 1})
    with pytest.raises(ConfigError, match="returned list; expected load"):
        data.load_dataset({"name": "custom", "_target_": "user_data.wrong"})
    with pytest.raises(ConfigError, match=r"module 'user_data' has no 'missing' \(it has: .*as_dict"):
        data.load_dataset({"name": "custom", "_target_": "user_data.missing"})
    with pytest.raises(ConfigError, match="dataset=custom needs dataset._target_=your_module.load"):
        data.load_dataset({"name": "custom", "_target_": None})
