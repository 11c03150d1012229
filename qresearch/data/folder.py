"""``dataset=image_folder``: a folder of images, one sub-folder per class, streamed by tf.data.

Layouts (class index = position of the folder name in the sorted list of class folders):

    PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg   a fixed split (``train_dir``/``test_dir``:
                                                           e.g. ``dataset.test_dir=val`` for ImageNet)
    PATH/<class>/*.jpg                                     split here: ``validation_fraction`` of each
                                                           class (seeded by ``split_seed``) is the test set

Images: .jpg .jpeg .png .gif .bmp (case-insensitive); other files and hidden entries are ignored.
Only the listing is read at load (names, sizes, modification times); pixels are read while training.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qresearch._compat import tf
from qresearch.checks import DataError
from qresearch.errors import ConfigError
from qresearch.data import DataUnavailableError, register_dataset
from qresearch.data.preprocess import Preprocess
from qresearch.data.stream import AUTOTUNE, DEPLOY_SAMPLES, Source, StreamingDataset, files_digest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
#: (path relative to the dataset folder, size, mtime_ns, label)
Entry = Tuple[str, int, int, int]


class FileList(Source):
    """Image files and their labels, read (and decoded by the pipeline) pass after pass."""

    def __init__(self, root: Path, entries: Sequence[Entry]):
        self.root, self.entries = root, list(entries)
        self.size = len(self.entries)

    def records(self, shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
        paths = [str(self.root / e[0]) for e in self.entries]
        labels = np.array([e[3] for e in self.entries], np.int32)
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if shuffle_seed is not None:  # the list of names, not the images: a full shuffle costs little
            ds = ds.shuffle(max(1, len(paths)), seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds.map(lambda p, y: (tf.io.read_file(p), y, p), num_parallel_calls=AUTOTUNE, deterministic=True)

    def pick(self, indices: Sequence[int]) -> "FileList":
        return FileList(self.root, [self.entries[int(i)] for i in indices])

    def digest(self) -> str:
        return files_digest([(e[0], e[1], e[2]) for e in self.entries])

    def describe(self) -> Dict[str, Any]:
        return {"folder": str(self.root), "images": self.size}


def _folder(cfg: Mapping[str, Any]) -> Path:
    given = cfg.get("path")
    if not given:
        raise ConfigError("dataset=image_folder needs dataset.path=/path/to/images: a folder with train/<class>/ "
                          "and test/<class>/ sub-folders, or <class>/ sub-folders and dataset.validation_fraction")
    path = Path(os.path.expanduser(str(given)))
    if not path.is_dir():
        raise DataUnavailableError(f"dataset.path={given}: no such folder ({path.resolve()}). Fix: give the folder "
                                   f"that holds the class sub-folders (or train/ and test/)")
    return path


def check_config(cfg: Mapping[str, Any]) -> None:
    """Before any job starts: the folder exists and the preprocessing config is valid."""
    _folder(cfg)
    Preprocess.from_config(cfg)


def _class_dirs(split_dir: Path) -> List[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _images(root: Path, split: str, cls: str, label: int) -> List[Entry]:
    """The class folder's images (sorted by name) with their sizes and mtimes: a stat each, no read."""
    folder = root / split / cls if split else root / cls
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith(".") or not e.name.lower().endswith(IMAGE_EXTENSIONS) or not e.is_file():
                continue
            st = e.stat()
            out.append((str(Path(split, cls, e.name)) if split else str(Path(cls, e.name)), st.st_size,
                        st.st_mtime_ns, label))
    if not out:
        raise DataError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}). Fix: add images or "
                        f"remove the folder (every sub-folder is a class)")
    return sorted(out)


def _split_by_fraction(entries: List[Entry], num_classes: int, fraction: float, seed: int
                       ) -> Tuple[List[Entry], List[Entry]]:
    """A seeded ``fraction`` of each class held out (stratified, so small classes are in both splits)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(num_classes):
        mine = [e for e in entries if e[3] == c]
        idx = rng.permutation(len(mine))
        n_test = int(round(len(mine) * fraction))
        held = set(idx[:n_test].tolist())
        for i, e in enumerate(mine):
            (test if i in held else train).append(e)
    return train, test


def _subset(entries: List[Entry], n: Optional[int], seed: int) -> List[Entry]:
    """A seeded random ``n`` of the entries, in their listed order (as the in-memory subsets)."""
    if not n or int(n) >= len(entries):
        return entries
    idx = np.sort(np.random.default_rng(seed).permutation(len(entries))[: int(n)])
    return [entries[i] for i in idx]


def scan(cfg: Mapping[str, Any]) -> Tuple[Path, List[str], List[Entry], List[Entry]]:
    """(folder, classes, train entries, test entries) for an image_folder config node."""
    root = _folder(cfg)
    train_dir, test_dir = str(cfg.get("train_dir") or "train"), str(cfg.get("test_dir") or "test")
    fraction = cfg.get("validation_fraction")
    seed = int(cfg.get("split_seed") or 0)
    if (root / train_dir).is_dir() and (root / test_dir).is_dir():
        classes = _class_dirs(root / train_dir)
        if not classes:
            raise DataError(f"{root / train_dir} has no class sub-folders. Fix: put each class's images in "
                            f"{root / train_dir}/<class name>/")
        extra = sorted(set(_class_dirs(root / test_dir)) - set(classes))
        if extra:
            raise DataError(f"{root / test_dir} has class folders that {root / train_dir} lacks: {', '.join(extra)}. "
                            f"Fix: the test classes must be among the training classes (same folder names)")
        train = [e for i, c in enumerate(classes) for e in _images(root, train_dir, c, i)]
        test = [e for c in _class_dirs(root / test_dir) for e in _images(root, test_dir, c, classes.index(c))]
    else:
        classes = _class_dirs(root)
        if not classes:
            raise DataError(f"dataset.path={root} has no class sub-folders (one folder of images per class). "
                            f"Fix: arrange it as {root}/<class>/*.jpg, or {root}/{train_dir}/<class>/ and "
                            f"{root}/{test_dir}/<class>/")
        if fraction is None or not 0 < float(fraction) < 1:
            raise ConfigError(f"{root} has no {train_dir}/ and {test_dir}/ sub-folders, so the test set is held out "
                              f"from the class folders: set dataset.validation_fraction (e.g. 0.1), got {fraction!r}")
        entries = [e for i, c in enumerate(classes) for e in _images(root, "", c, i)]
        train, test = _split_by_fraction(entries, len(classes), float(fraction), seed)
    return root, classes, _subset(train, cfg.get("train_samples"), seed), _subset(test, cfg.get("test_samples"), seed)


@register_dataset("image_folder")
def load_image_folder(cfg: Mapping[str, Any]) -> StreamingDataset:
    pre = Preprocess.from_config(cfg)
    root, classes, train, test = scan(cfg)
    deploy = cfg.get("deploy_samples", DEPLOY_SAMPLES)
    return StreamingDataset(root.name, FileList(root, train), FileList(root, test), len(classes), pre,
                            classes=classes, kind="image_folder", deploy_samples=deploy)


load_image_folder.check_config = check_config
