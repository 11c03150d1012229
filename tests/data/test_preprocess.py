"""Preprocessing against numpy: normalisation, center crop, resize, flip and crop only in training."""
import numpy as np
import pytest

from qresearch import data
from qresearch.data.preprocess import Preprocess
from qresearch.errors import ConfigError

from image_fixtures import write_folder


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """24 RGB 12x12 PNGs in 2 classes (train/ and test/ hold the same images)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 12, 12, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 12)
    root = tmp_path_factory.mktemp("rgb")
    for split in ("train", "test"):
        write_folder(root, x, y, split)
    return root, x, y


def _cfg(root, **kw):
    return {"name": "image_folder", "path": str(root), **kw}


def test_normalisation_per_channel(rgb):
    root, x, _ = rgb
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    ds = data.load_dataset(_cfg(root, image_size=[12, 12], mean=mean, std=std))
    got, _ = ds.test_arrays(None)
    want = (x.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_center_crop_and_exact_resize(rgb):
    root, x, _ = rgb
    ds = data.load_dataset(_cfg(root, image_size=[8, 6], resize=[12, 12]))  # resize to its own size: a no-op
    got, _ = ds.test_arrays(None)
    assert got.shape == (24, 8, 6, 3)
    np.testing.assert_allclose(got, x[:, 2:10, 3:9].astype(np.float32) / 255, atol=1e-6)
    # training with crop=center (the default) and no flip: the same images
    tr = data.load_dataset(_cfg(root, image_size=[8, 6], resize=[12, 12]))
    xb, yb = next(iter(tr.train_pipeline(24, seed=0)))
    assert sorted(map(bytes, np.round(xb.numpy() * 255).astype(np.uint8))) == \
        sorted(map(bytes, x[:, 2:10, 3:9]))


def test_shorter_side_resize(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    write_folder(tmp_path, img[None], np.array([0]), "train")
    write_folder(tmp_path, img[None], np.array([0]), "test")
    ds = data.load_dataset(_cfg(tmp_path, image_size=[10, 10], resize=10))
    got, _ = ds.test_arrays(None)
    # halving with half-pixel centers: each output pixel is the mean of a 2x2 block
    resized = (img.astype(np.float32) / 255).reshape(10, 2, 20, 2, 3).mean(axis=(1, 3))
    assert got.shape == (1, 10, 10, 3)
    np.testing.assert_allclose(got[0], resized[:, 5:15], atol=1e-6)


def test_flip_and_random_crop_in_training_only(rgb):
    root, x, _ = rgb
    ds = data.load_dataset(_cfg(root, image_size=[12, 12], flip=True, crop="random", pad=2))
    test, _ = ds.test_arrays(None)
    np.testing.assert_allclose(test, x / np.float32(255), atol=1e-6)  # evaluation: untouched
    xb, _ = next(iter(ds.train_pipeline(24, seed=3)))
    xb = xb.numpy()
    assert xb.shape == (24, 12, 12, 3)
    originals = {bytes(a) for a in x}
    changed = sum(bytes(np.round(a * 255).astype(np.uint8)) not in originals for a in xb)
    assert changed > 12  # flipped or shifted (a 1-in-25 chance per image of neither)
    again, _ = next(iter(ds.train_pipeline(24, seed=3)))
    np.testing.assert_array_equal(xb, again.numpy())  # reproducible from the seed
    off, _ = next(iter(ds.train_pipeline(24, seed=3, augment=False)))
    assert {bytes(np.round(a * 255).astype(np.uint8)) for a in off.numpy()} == originals


@pytest.mark.parametrize("cfg, match", [
    ({}, "image_size"),
    ({"image_size": [8, 0]}, "positive"),
    ({"image_size": [8, 8], "resize": 6}, "smaller than dataset.image_size"),
    ({"image_size": [8, 8], "crop": "middle"}, "center, random"),
    ({"image_size": [8, 8], "mean": [0.5, 0.5]}, "2 values for 3 channels"),
    ({"image_size": [8, 8], "std": 0}, "positive"),
])
def test_bad_preprocessing_config(cfg, match):
    with pytest.raises(ConfigError, match=match):
        Preprocess.from_config(cfg)
