"""Datasets: real arrays in memory, and tf.data pipelines over them; or images streamed from files.

In memory (``Dataset``, this module): ``digits`` (scikit-learn's bundled 8x8 digits: needs nothing else), ``mnist`` and
``cifar10``. MNIST and CIFAR-10 come from a local mirror folder when one is given
(``dataset.data_dir``, else the ``QRESEARCH_DATA_DIR`` environment variable, else
``../shared/datasets`` next to the project when that exists), otherwise from
``keras.datasets`` (which downloads once into ``~/.keras/datasets``).

A plugin dataset is a function ``loader(cfg: dict) -> Dataset`` registered with
``@register_dataset("name")``; ``cfg`` is the ``dataset`` config node as a dict. Whatever the
loader returns is validated (``Dataset.validate``) before anything trains on it.

Streamed (``StreamingDataset``, ``qresearch.data.stream``): ``image_folder`` (``data/folder.py``) and
``tfrecord`` (``data/tfrecord.py``) read and decode images in the tf.data pipeline, batch by batch.
Both kinds hand the runner the same interface: ``train_pipeline``, ``test_pipeline``, ``calibration``,
``test_arrays``, ``train_size``, ``input_shape``, ``num_classes``, ``fingerprint``.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import logging
import os
import socket
import tarfile
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qresearch._compat import keras, tf
from qresearch.checks import DataError, require_finite
from qresearch.errors import ConfigError, QResearchError
from qresearch.paths import REPO_DIR
from qresearch.plugins import import_object
from qresearch.registry import Registry

log = logging.getLogger(__name__)

DATA_DIR_ENV = "QRESEARCH_DATA_DIR"
DATASETS: Registry = Registry(
    "dataset", how_to_add="dataset=npz dataset.path=/path/data.npz (arrays in a file), "
    "dataset._target_=your_module.load (a function returning the arrays), or "
    "@qresearch.data.register_dataset('NAME') on a loader(cfg) -> Dataset in a module passed as plugins=[your_module].")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


class DataUnavailableError(QResearchError, FileNotFoundError):
    """A dataset is neither in a local mirror nor downloadable."""


@dataclass
class Dataset:
    """Train and test arrays: images float32 (N, H, W, C) (or vectors (N, D)), labels int32 (N,)."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    augment: bool = False
    # (identities of the arrays, their fingerprint): recomputed when an array is replaced
    _fingerprint: Optional[Tuple[Tuple[int, ...], str]] = field(default=None, init=False, repr=False, compare=False)

    SPLITS = ("x_train", "y_train", "x_test", "y_test")

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def train_size(self) -> int:
        return int(len(self.x_train))

    @property
    def test_size(self) -> int:
        return int(len(self.x_test))

    def test_arrays(self, limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The test arrays (the first ``limit``; None: all), as a streaming dataset hands them out."""
        return (self.x_test, self.y_test) if limit is None else (self.x_test[:limit], self.y_test[:limit])

    def train_pipeline(self, batch_size: int, seed: int, steps_per_epoch: Optional[int] = None,
                       augment: Optional[bool] = None) -> tf.data.Dataset:
        """Shuffled (seeded, reshuffled each epoch), optionally augmented, batched, prefetched."""
        ds = tf.data.Dataset.from_tensor_slices((self.x_train, self.y_train))
        ds = ds.shuffle(len(self.x_train), seed=seed, reshuffle_each_iteration=True)
        if self.augment if augment is None else augment:
            if len(self.input_shape) != 3:
                raise ConfigError(f"dataset {self.name!r}: augment flips and crops images (H, W, C), but its samples "
                                  f"have shape {self.input_shape}. Fix: dataset.augment=false")
            ds = ds.enumerate().map(_augmenter(seed, self.input_shape), num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=True)
        ds = ds.batch(batch_size)
        if steps_per_epoch:
            ds = ds.take(int(steps_per_epoch))
        return ds.prefetch(tf.data.AUTOTUNE)

    def test_pipeline(self, batch_size: int = 256) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((self.x_test, self.y_test)).batch(batch_size).prefetch(
            tf.data.AUTOTUNE)

    def calibration(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` training images picked at random (seeded), for PTQ range calibration."""
        idx = np.random.default_rng(seed).permutation(len(self.x_train))[: max(1, int(n))]
        return self.x_train[np.sort(idx)]

    def train_sample(self, n: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """``n`` training images and their labels drawn by ``seed`` (in array order): ``calibration``'s rule."""
        idx = np.sort(np.random.default_rng(seed).permutation(len(self.x_train))[: max(1, int(n))])
        return self.x_train[idx], self.y_train[idx]

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "train": int(len(self.x_train)), "test": int(len(self.x_test)),
                "input_shape": list(self.input_shape), "num_classes": int(self.num_classes),
                "fingerprint": self.fingerprint()}

    def validate(self) -> "Dataset":
        """Refuse data that would train or evaluate silently wrong: NaN or infinite images, labels
        that are not class indices in ``[0, num_classes)``. Raises DataError naming the array, the
        offending value and its index in the arrays as the loader returned them."""
        _check_num_classes(self.name, self.num_classes)
        fix = (f"repair or drop those samples in the {self.name!r} dataset loader (or the file it reads), "
               f"e.g. with np.nan_to_num or a mask of np.isfinite")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            require_finite(f"dataset {self.name!r}: x_{split}", [x], fix)
            _check_labels(self.name, split, np.asarray(y), len(x), int(self.num_classes))
        return self

    def fingerprint(self) -> str:
        """A hash of the arrays (shapes, dtypes, bytes) and ``num_classes``: the identity of the data
        itself, which a config cannot give (a file rewritten in place keeps its path). Part of the
        float-baseline cache key and of the resume check. Cached until an array is replaced
        (CIFAR-10 as float32, 740 MB: about 0.6 s; MNIST: 0.15 s)."""
        arrays = [getattr(self, a) for a in self.SPLITS]
        ident = tuple(id(a) for a in arrays) + (int(self.num_classes),)
        if self._fingerprint is None or self._fingerprint[0] != ident:
            h = hashlib.sha256(f"num_classes={int(self.num_classes)}".encode())
            for name, a in zip(self.SPLITS, arrays):
                a = np.ascontiguousarray(a)
                h.update(f";{name}:{a.dtype.str}:{a.shape}:".encode())
                h.update(a.data if a.dtype.kind != "O" else repr(a.tolist()).encode())
            self._fingerprint = (ident, h.hexdigest()[:16])
        return self._fingerprint[1]


def _check_num_classes(name: str, num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DataError(f"dataset {name!r}: num_classes must be a positive integer, got {num_classes!r}. "
                        f"Fix: have the loader pass the number of classes (max label + 1)")


def _check_labels(name: str, split: str, y: np.ndarray, n: int, num_classes: int) -> None:
    """Labels must be one class index per sample: Keras would otherwise fail deep in a graph
    (``indices[35] = 12 is not in [0, 10)``) or, for fractional labels, train on truncated ones."""
    what = f"dataset {name!r}: y_{split}"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}: expected one class index per sample, shape ({n},). "
                        f"Fix: for one-hot labels pass y.argmax(axis=1) from the loader")
    if len(y) != n:
        raise DataError(f"{what} has {len(y)} labels for {n} samples in x_{split}. Fix: the loader must return "
                        f"one label per image")
    if y.dtype.kind not in "iubf":
        raise DataError(f"{what} holds {y.dtype} values ({y[0]!r} at index 0): labels must be integer class "
                        f"indices 0..{num_classes - 1}. Fix: map class names to indices in the loader")
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            fractional = ~np.isfinite(y) | (y != np.round(y))
        if fractional.any():
            i = int(np.argmax(fractional))
            raise DataError(f"{what}[{i}] = {y[i].item()!r} is not a class index ({int(fractional.sum())} of "
                            f"{len(y)} labels in the {split} split are not whole numbers). Fix: labels must be "
                            f"integers 0..{num_classes - 1}: repair them in the loader, then y.astype(np.int32)")
    outside = (y < 0) | (y >= num_classes)
    if outside.any():
        i = int(np.argmax(outside))
        top = int(np.max(y))
        raise DataError(
            f"{what}[{i}] = {y[i].item()!r} is outside [0, {num_classes}) ({int(outside.sum())} of {len(y)} labels "
            f"in the {split} split are out of range). Fix: labels must be class indices 0..{num_classes - 1}: remap them in "
            f"the loader, or have it declare num_classes={top + 1} if there are that many classes")


def _augmenter(seed: int, shape):
    """Random horizontal flip and 4-pixel pad-and-crop (the standard CIFAR recipe), stateless."""
    h, w = shape[0], shape[1]

    def aug(i, xy):
        x, y = xy
        s = tf.stack([tf.cast(seed, tf.int64), i])
        x = tf.image.stateless_random_flip_left_right(x, seed=s)
        x = tf.image.resize_with_crop_or_pad(x, h + 8, w + 8)
        x = tf.image.stateless_random_crop(x, size=shape, seed=s + 1)
        return x, y

    return aug


# ------------------------------------------------------------------ registry
def register_dataset(name: str, loader: Optional[Callable[[Mapping[str, Any]], Dataset]] = None, *,
                     overwrite: bool = False):
    """Register ``loader(cfg) -> Dataset`` under ``name`` (usable as a decorator)."""
    return DATASETS.register(name, loader, overwrite=overwrite)


def load_dataset(cfg: Mapping[str, Any], cache_dir: Optional[str] = None) -> "Dataset | StreamingDataset":
    """Build the dataset a ``dataset`` config node describes.

    Common keys: ``name``; ``data_dir`` (local mirror); ``train_samples``/``test_samples``
    (keep a seeded random subset; null = all); ``split_seed``; ``augment``; ``download``.
    """
    cfg = dict(cfg)
    if cache_dir is not None:
        cfg.setdefault("cache_dir", cache_dir)
    ds = DATASETS.get(cfg.get("name"))(cfg)
    if isinstance(ds, Dataset):
        ds = _subset(ds.validate(), cfg)  # validated whole: indices in errors are the loader's
    elif isinstance(ds, StreamingDataset):
        ds = ds.validate()  # subsets are the loader's: it lists the files
    else:
        raise DataError(f"dataset loader {cfg.get('name')!r} returned {type(ds).__name__}, expected a "
                        f"qresearch.data.Dataset or StreamingDataset")
    if cfg.get("augment") is not None:
        ds.augment = bool(cfg["augment"])
    return ds


def _subset(ds: Dataset, cfg: Mapping[str, Any]) -> Dataset:
    rng_seed = int(cfg.get("split_seed") or 0)
    for split in ("train", "test"):
        n = cfg.get(f"{split}_samples")
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if n and int(n) < len(x):
            idx = np.sort(np.random.default_rng(rng_seed).permutation(len(x))[: int(n)])
            setattr(ds, f"x_{split}", x[idx])
            setattr(ds, f"y_{split}", y[idx])
    return ds


def candidate_dirs(cfg: Mapping[str, Any]) -> List[Path]:
    """Local mirror folders to look in, in order."""
    dirs = []
    for what, d in (("dataset.data_dir", cfg.get("data_dir")), (DATA_DIR_ENV, os.environ.get(DATA_DIR_ENV))):
        if d:
            path = Path(os.path.expanduser(str(d)))
            if not path.is_dir():  # a typo would otherwise fall through to another copy or a download, silently
                log.warning("%s=%s is not a folder: looking for the dataset elsewhere", what, d)
            dirs.append(path)
    shared = REPO_DIR.parent / "shared" / "datasets"
    if shared.is_dir():
        dirs.append(shared)
    return dirs


def _find(cfg: Mapping[str, Any], filenames) -> Optional[Path]:
    for d in candidate_dirs(cfg):
        for f in filenames:
            if (d / f).is_file():
                return d / f
    return None


def _unavailable(name: str, cfg, files: str, exc: Optional[BaseException]) -> DataUnavailableError:
    looked = ", ".join(str(d) for d in candidate_dirs(cfg)) or "(no folder configured)"
    why = f"downloading with keras.datasets failed ({type(exc).__name__}: {exc})" if exc else \
        "downloading is off (dataset.download=false)"
    return DataUnavailableError(
        f"dataset {name!r} is not available: no {files} in the local mirror folders ({looked}), and {why}. "
        f"Fix: put {files} in a folder and pass dataset.data_dir=/that/folder (or set {DATA_DIR_ENV}), or run "
        f"once on a machine with internet access (keras caches the download in ~/.keras/datasets). "
        f"The 'digits' dataset needs no files."
    )


def _keras_download(fn: Callable, timeout: float = 60.0):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        return fn()
    finally:
        socket.setdefaulttimeout(old)


def _images(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 3 else x


# ------------------------------------------------------------------ built-ins
@register_dataset("digits")
def load_digits(cfg: Mapping[str, Any]) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images): a stratified, seeded train/test split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=float(cfg.get("test_fraction", 0.25)), random_state=int(cfg.get("split_seed") or 0),
        stratify=y)
    return Dataset("digits", x_tr, y_tr, x_te, y_te, num_classes=10)


@register_dataset("mnist")
def load_mnist(cfg: Mapping[str, Any]) -> Dataset:
    path = _find(cfg, ["mnist.npz"])
    if path is not None:
        with np.load(path) as f:
            (x_tr, y_tr), (x_te, y_te) = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    elif cfg.get("download", True):
        try:
            (x_tr, y_tr), (x_te, y_te) = _keras_download(keras.datasets.mnist.load_data)
        except Exception as exc:
            raise _unavailable("mnist", cfg, "mnist.npz", exc) from exc
    else:
        raise _unavailable("mnist", cfg, "mnist.npz", None)
    norm = lambda a: _images(a.astype(np.float32) / 255.0)  # noqa: E731
    return Dataset("mnist", norm(x_tr), y_tr.astype(np.int32).ravel(), norm(x_te), y_te.astype(np.int32).ravel(),
                   num_classes=10)


@register_dataset("cifar10")
def load_cifar10(cfg: Mapping[str, Any]) -> Dataset:
    arrays = None
    npz = _find(cfg, ["cifar10.npz"])
    tar = _find(cfg, ["cifar10-jpeg.tar.gz"])
    if npz is not None:
        with np.load(npz) as f:
            arrays = (f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    elif tar is not None:
        arrays = decode_cifar10_jpeg(tar, cfg.get("cache_dir"))
    elif cfg.get("download", True):
        try:
            (x_tr, y_tr), (x_te, y_te) = _keras_download(keras.datasets.cifar10.load_data, timeout=120.0)
            arrays = (x_tr, y_tr, x_te, y_te)
        except Exception as exc:
            raise _unavailable("cifar10", cfg, "cifar10.npz or cifar10-jpeg.tar.gz", exc) from exc
    else:
        raise _unavailable("cifar10", cfg, "cifar10.npz or cifar10-jpeg.tar.gz", None)
    x_tr, y_tr, x_te, y_te = arrays
    norm = lambda a: ((a.astype(np.float32) / 255.0) - CIFAR10_MEAN) / CIFAR10_STD  # noqa: E731
    return Dataset("cifar10", norm(x_tr), y_tr.astype(np.int32).ravel(), norm(x_te), y_te.astype(np.int32).ravel(),
                   num_classes=10, augment=True)


def decode_cifar10_jpeg(tar_path: Path, cache_dir: Optional[str] = None):
    """Decode ``train/<class>/NNNN.jpg`` and ``test/<class>/NNNN.jpg`` once; cache uint8 arrays as .npz."""
    from PIL import Image

    st = Path(tar_path).stat()
    cache_root = Path(cache_dir or Path.home() / ".cache" / "qresearch").expanduser()
    cache = cache_root / "data" / f"cifar10-jpeg-{st.st_size}-{int(st.st_mtime)}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    log.info("decoding %s once (cached in %s)", tar_path, cache)
    splits: Dict[str, List[Tuple[str, int, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(tar_path, "r:gz") as tf_:
        for member in tf_:
            parts = member.name.strip("./").split("/")
            if not member.isfile() or len(parts) != 3 or not parts[2].lower().endswith(".jpg"):
                continue
            split, cls, fname = parts
            if split not in splits or cls not in CIFAR10_CLASSES:
                continue
            img = Image.open(io.BytesIO(tf_.extractfile(member).read())).convert("RGB")
            splits[split].append((f"{CIFAR10_CLASSES.index(cls):02d}/{fname}", CIFAR10_CLASSES.index(cls),
                                  np.asarray(img, dtype=np.uint8)))
    out = []
    for split in ("train", "test"):
        items = sorted(splits[split], key=lambda t: t[0])
        if not items:
            raise DataUnavailableError(f"{tar_path} has no {split}/<class>/*.jpg images")
        out += [np.stack([t[2] for t in items]), np.array([t[1] for t in items], np.int32)]
    x_tr, y_tr, x_te, y_te = out
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    os.replace(tmp, cache)
    return x_tr, y_tr, x_te, y_te


# ------------------------------------------------------------------ your own data: a file, or a function
# A loader may carry ``check_config(cfg)``: ``config.validate`` calls it, so a missing file or
# target fails before any job starts (a sweep's shared config is validated once, up front).

#: Arrays a file (or a ``_target_`` function's dict) holds: a fixed split, or one set split here.
SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
SINGLE_KEYS = ("x", "y")
#: Keys of the dataset node qresearch itself reads; all others are options of a ``_target_`` function.
OWN_KEYS = ("name", "_target_", "num_classes", "scale", "test_fraction", "split_seed", "train_samples",
            "test_samples", "augment", "cache_dir")
TARGET_CONTRACT = ("load(**options) returning a qresearch.data.Dataset, a tuple (x_train, y_train, x_test, "
                   "y_test), or a dict of those arrays (or of x, y: split by dataset.test_fraction)")


def _scale(value: Any) -> Optional[float]:
    """``dataset.scale`` as a number; text fractions too ("1/255"), since an override cannot compute."""
    if value is None:
        return None
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"dataset.scale must be a number or a fraction like 1/255, got {value!r}") from None


def _labels(y: Any, split: str, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # (N, 1), as keras.datasets.cifar10 stores them
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ConfigError(f"y_{split}{where} has shape {y.shape}: labels must be class indices of shape ({n},), "
                          f"one per image (one-hot labels: save y.argmax(1))")
    if not np.issubdtype(y.dtype, np.integer):
        integral = np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
        if not integral:
            raise ConfigError(f"y_{split}{where} has dtype {y.dtype} with non-integer values: labels must be "
                              f"class indices 0..num_classes-1")
    if len(y) and y.min() < 0:
        raise ConfigError(f"y_{split}{where} has negative labels ({int(y.min())}): labels must be 0..num_classes-1")
    return y.astype(np.int32)


def dataset_from_arrays(name: str, x_train: Any, y_train: Any, x_test: Any, y_test: Any,
                        num_classes: Optional[int] = None, scale: Any = None, source: str = "") -> Dataset:
    """A Dataset from plain arrays: images (N, H, W) or (N, H, W, C), or vectors (N, D) (features, token ids), of
    any numeric dtype; integer labels. (Token ids become float32 like everything else: exact below 2^24, and an
    ``Embedding`` casts them back; ``verify`` feeds a model with an integer input whole numbers as integers.)

    Images become float32 multiplied by ``scale`` (None: the values as given); ``num_classes``
    defaults to the largest label + 1. ``source`` (a file, a function) is named in errors.
    """
    where = f" in {source}" if source else ""
    factor = _scale(scale)
    out = []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ConfigError(f"x_{split}{where} has dtype {x.dtype}: images must be numeric arrays")
        if x.ndim not in (2, 3, 4) or len(x) == 0:
            raise ConfigError(f"x_{split}{where} has shape {x.shape}: inputs must be a non-empty array of images "
                              f"(N, H, W) or (N, H, W, C), or of vectors (N, D): features, or token ids for an "
                              f"Embedding")
        x = _images(x).astype(np.float32)
        if factor is not None:
            x *= np.float32(factor)
        out += [x, _labels(y, split, len(x), where)]
    x_tr, y_tr, x_te, y_te = out
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ConfigError(f"x_train and x_test{where} have different image shapes: "
                          f"{x_tr.shape[1:]} and {x_te.shape[1:]}")
    top = int(max(y_tr.max(), y_te.max()))
    if num_classes is None:
        num_classes = top + 1
        _check_inferred_classes(y_tr, y_te, num_classes, where)
    elif not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"dataset.num_classes must be a positive integer or null (inferred), got {num_classes!r}")
    elif top >= num_classes:
        raise ConfigError(f"labels{where} go up to {top} but dataset.num_classes={num_classes}: set it to at least "
                          f"{top + 1}, or to null to infer it")
    return Dataset(name, x_tr, y_tr, x_te, y_te, num_classes=int(num_classes))


def _check_inferred_classes(y_train: np.ndarray, y_test: np.ndarray, num_classes: int, where: str) -> None:
    """Inferring ``num_classes`` from the largest label turns a stray label (12 among 0..9) into extra,
    empty classes, silently. So an inferred count must see every class in the data; a dataset whose
    classes really are sparse says so with ``dataset.num_classes``."""
    present = np.zeros(num_classes, bool)
    present[np.concatenate([y_train, y_test])] = True
    if present.all():
        return
    missing = np.flatnonzero(~present)
    top = num_classes - 1
    stray = [(split, int(i)) for split, y in (("train", y_train), ("test", y_test))
             for i in np.flatnonzero(y > missing[0])[:3]]
    first = ", ".join(f"y_{split}[{i}] = {(y_train if split == 'train' else y_test)[i]}" for split, i in stray)
    raise DataError(
        f"labels{where} go up to {top}, so {num_classes} classes would be inferred, but "
        f"{', '.join(str(m) for m in missing[:10])}{' ...' if len(missing) > 10 else ''} never occur: "
        f"a stray label? Labels above the gap: {first}{' ...' if len(stray) >= 3 else ''}. "
        f"Fix: correct those labels, or set dataset.num_classes={num_classes} if the classes really are sparse.")


def _split_single(x: Any, y: Any, cfg: Mapping[str, Any], source: str) -> Tuple[np.ndarray, ...]:
    """``x, y`` -> train and test sets: a seeded random ``test_fraction`` (default 0.2) held out."""
    x, y = np.asarray(x), np.asarray(y)
    frac = float(cfg.get("test_fraction") or 0.2)
    n_test = int(round(len(x) * frac))
    if not 0 < n_test < len(x) or len(y) != len(x):
        raise ConfigError(f"{source}: cannot hold out test_fraction={frac} of {len(x)} images ({len(y)} labels) "
                          f"as a test set; give more images, another dataset.test_fraction, or a fixed split "
                          f"(x_train, y_train, x_test, y_test)")
    idx = np.random.default_rng(int(cfg.get("split_seed") or 0)).permutation(len(x))
    test, train = np.sort(idx[:n_test]), np.sort(idx[n_test:])
    return x[train], y[train], x[test], y[test]


def _arrays_from_keys(found: Mapping[str, Any], keys: Sequence[str], cfg: Mapping[str, Any], source: str):
    if tuple(keys) == SINGLE_KEYS:
        return _split_single(found["x"], found["y"], cfg, source)
    return tuple(found[k] for k in SPLIT_KEYS)


def _layout(keys: Sequence[str]) -> Optional[Tuple[str, ...]]:
    for layout in (SPLIT_KEYS, SINGLE_KEYS):
        if all(k in keys for k in layout):
            return layout
    return None


def _npz_file(cfg: Mapping[str, Any]) -> Tuple[Path, Tuple[str, ...]]:
    """The file ``dataset.path`` names and the arrays to read from it; errors name the file, its keys and the fix."""
    given = cfg.get("path")
    if not given:
        raise ConfigError("dataset=npz needs dataset.path=/path/to/data.npz: a numpy file saved with "
                          "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) (or x=..., y=...)")
    path = Path(os.path.expanduser(str(given)))
    if not path.is_file():
        raise DataUnavailableError(f"dataset.path={given}: no such file ({path.resolve()}; a relative path is read "
                                   f"from the folder you run in, {os.getcwd()}). Fix: give the path of the .npz file.")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ConfigError(f"dataset.path={given} is not a numpy .npz file ({type(exc).__name__}: {exc}); save the "
                          f"arrays with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ConfigError(f"dataset.path={given} holds a single array (.npy), not named arrays; save them with "
                          f"np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) (or x=..., y=...)")
    with archive:
        keys = list(archive.files)
    layout = _layout(keys)
    if layout is None:
        missing = [k for k in SPLIT_KEYS if k not in keys]
        raise ConfigError(f"{path} has arrays {keys}, not x_train, y_train, x_test, y_test (missing: "
                          f"{', '.join(missing)}) nor x, y. Fix: save it with np.savez({str(path)!r}, x_train=..., "
                          f"y_train=..., x_test=..., y_test=...), or np.savez(..., x=..., y=...) to have "
                          f"dataset.test_fraction of it held out as the test set.")
    return path, layout


@register_dataset("npz")
def load_npz(cfg: Mapping[str, Any]) -> Dataset:
    """Arrays from a numpy .npz file (``dataset.path``): x_train, y_train, x_test, y_test, or x, y split here."""
    path, layout = _npz_file(cfg)
    with np.load(path, allow_pickle=False) as f:
        found = {k: f[k] for k in layout}
    arrays = _arrays_from_keys(found, layout, cfg, str(path))
    return dataset_from_arrays(path.stem, *arrays, num_classes=cfg.get("num_classes"), scale=cfg.get("scale"),
                               source=str(path))


load_npz.check_config = _npz_file


def _target_function(cfg: Mapping[str, Any]) -> Callable[..., Any]:
    target = cfg.get("_target_")
    if not target:
        raise ConfigError(f"dataset=custom needs dataset._target_=your_module.load: a function {TARGET_CONTRACT}")
    return import_object(target, "dataset._target_", TARGET_CONTRACT)


@register_dataset("custom")
def load_custom(cfg: Mapping[str, Any]) -> Dataset:
    """What a function of yours returns (``dataset._target_``); the node's other keys are its options."""
    fn, target = _target_function(cfg), str(cfg["_target_"])
    options = {k: v for k, v in cfg.items() if k not in OWN_KEYS}
    try:
        inspect.signature(fn).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"dataset._target_ {target!r} does not take the options {options}: {exc}. Its options are "
                          f"the dataset keys other than {', '.join(OWN_KEYS)}") from None
    except ValueError:  # no signature to check (a builtin): call it and see
        pass
    out = fn(**options)
    if isinstance(out, Dataset):
        return out
    if isinstance(out, Mapping):
        layout = _layout(list(out))
        if layout is None:
            raise ConfigError(f"dataset._target_ {target!r} returned a dict with keys {sorted(out)}; expected "
                              f"x_train, y_train, x_test, y_test (or x, y)")
        arrays = _arrays_from_keys(out, layout, cfg, target)
        num_classes = cfg.get("num_classes") if cfg.get("num_classes") is not None else out.get("num_classes")
    elif isinstance(out, (tuple, list)) and len(out) == 4:
        arrays, num_classes = tuple(out), cfg.get("num_classes")
    else:
        raise ConfigError(f"dataset._target_ {target!r} returned {type(out).__name__}; expected {TARGET_CONTRACT}")
    return dataset_from_arrays(target, *arrays, num_classes=num_classes, scale=cfg.get("scale"), source=target)


load_custom.check_config = _target_function


# ------------------------------------------------------------------ streamed from files
# Imported last: these modules import the registry above, and register themselves on import.
from qresearch.data.stream import StreamingDataset  # noqa: E402
from qresearch.data import folder as _folder, tfrecord as _tfrecord  # noqa: E402,F401
