"""dataset=tfrecord: shards written here read back to the same images and labels; counts; errors."""
import numpy as np
import pytest

from qresearch import data
from qresearch.data import tfrecord
from qresearch.errors import ConfigError


@pytest.fixture(scope="module")
def shards(tmp_path_factory, digits_folder):
    """The digits folder copied into 3 train and 2 test shards, in its listing order."""
    out = tmp_path_factory.mktemp("shards")
    tfrecord.folder_to_tfrecords(str(digits_folder.root), str(out / "train"), shards=3, split="train")
    tfrecord.folder_to_tfrecords(str(digits_folder.root), str(out / "test"), shards=2, split="test")
    return out


def _cfg(shards, tmp_path, **kw):
    return {"name": "tfrecord", "train": str(shards / "train-*"), "test": str(shards / "test-*.tfrecord"),
            "num_classes": 10, "image_size": [8, 8], "channels": 1, "cache_dir": str(tmp_path), **kw}


def test_shards_read_back_to_the_folders_images_and_labels(shards, digits_folder, tmp_path):
    ds = data.load_dataset(_cfg(shards, tmp_path))
    folder = data.load_dataset(digits_folder.cfg())
    assert (ds.train_size, ds.test_size, ds.num_classes, ds.input_shape) == (300, 100, 10, (8, 8, 1))
    # written round-robin, read interleaved one record per shard: the folder's order again
    x, y = ds.test_arrays(None)
    fx, fy = folder.test_arrays(None)
    np.testing.assert_array_equal(x, fx)
    np.testing.assert_array_equal(y, fy)
    # training: every image once per epoch, reshuffled by epoch, reproducible from the seed
    epoch = lambda pipe: np.concatenate([b.numpy() for _, b in pipe])  # noqa: E731
    pipe = ds.train_pipeline(64, seed=1)
    e1, e2 = epoch(pipe), epoch(pipe)
    assert sorted(e1) == sorted(folder.train_pipeline(64, seed=1).unbatch().map(lambda a, b: b).as_numpy_iterator())
    assert len(e1) == 300 and not np.array_equal(e1, e2)
    np.testing.assert_array_equal(e1, epoch(ds.train_pipeline(64, seed=1)))
    assert ds.calibration(50, seed=0).shape == (50, 8, 8, 1)
    assert ds.describe()["kind"] == "tfrecord"


def test_counts_are_remembered_and_sizes_can_be_given(shards, tmp_path):
    data.load_dataset(_cfg(shards, tmp_path))
    counts = tmp_path / "data" / "tfrecord-counts.json"
    assert counts.is_file() and len(__import__("json").loads(counts.read_text())) == 5
    ds = data.load_dataset(_cfg(shards, tmp_path / "other", train_size=300, test_size=100, train_samples=40))
    assert not (tmp_path / "other" / "data").exists()  # given: nothing counted
    assert ds.train_size == 40 and len(np.concatenate([b for _, b in ds.train_pipeline(16, seed=0)])) == 40


def test_fingerprint_from_shard_metadata(shards, tmp_path):
    a = data.load_dataset(_cfg(shards, tmp_path)).fingerprint()
    assert data.load_dataset(_cfg(shards, tmp_path)).fingerprint() == a
    assert data.load_dataset(_cfg(shards, tmp_path, label_offset=0, flip=True)).fingerprint() != a
    assert data.load_dataset(_cfg(shards, tmp_path, test="{}/test-00000-*".format(shards))).fingerprint() != a


def test_custom_keys_and_label_offset(tmp_path, digits_folder):
    from PIL import Image
    import io

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    x, y = digits_folder.x_test[::5, ..., 0], digits_folder.y_test[::5]  # 20 images, every class
    with __import__("qresearch")._compat.tf.io.TFRecordWriter(str(tmp_path / "s.tfrecord")) as w:
        for a, b in zip(x, y):
            w.write(tfrecord.example(png(a), int(b) + 1, image_key="img", label_key="cls"))
    cfg = {"name": "tfrecord", "train": str(tmp_path / "s.tfrecord"), "test": str(tmp_path / "s.tfrecord"),
           "num_classes": 10, "image_size": [8, 8], "channels": 1, "image_key": "img", "label_key": "cls",
           "cache_dir": str(tmp_path)}
    ds = data.load_dataset({**cfg, "label_offset": -1})
    got_x, got_y = ds.test_arrays(None)
    np.testing.assert_array_equal(got_y, y)
    np.testing.assert_array_equal(got_x[..., 0], x.astype(np.float32) * np.float32(1 / 255))  # as decoding scales
    from qresearch._compat import tf

    bad = data.load_dataset({**cfg, "train_size": 20, "test_size": 20})  # labels 1..10 without the offset
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"s.tfrecord.* has label 10 .*outside \[0, 10\)"):
        bad.test_arrays(None)


def test_config_errors(shards, tmp_path):
    with pytest.raises(ConfigError, match="needs dataset.num_classes"):
        data.load_dataset(_cfg(shards, tmp_path, num_classes=None))
    with pytest.raises(ConfigError, match="needs dataset.train=GLOB"):
        data.load_dataset(_cfg(shards, tmp_path, train=None))
    with pytest.raises(data.DataUnavailableError, match="matches no file"):
        data.load_dataset(_cfg(shards, tmp_path, test=str(tmp_path / "nothing-*")))
