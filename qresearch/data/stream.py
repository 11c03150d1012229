"""Datasets streamed from files by tf.data on every pass: never held in memory as a whole.

A ``StreamingDataset`` has the in-memory ``Dataset``'s interface the runner uses (``train_pipeline``,
``test_pipeline``, ``calibration``, ``train_sample``, ``test_arrays``, ``train_size``/``test_size``, ``input_shape``,
``num_classes``, ``fingerprint``, ``describe``, ``validate``), so training, calibration, evaluation and
deployment take either. What differs per format is a ``Source`` per split: it hands out records
``(encoded image bytes, label, origin)`` (``origin``: the file or shard, named in errors) and a
listing digest for the fingerprint. ``qresearch.data.folder`` and ``qresearch.data.tfrecord`` are the two.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from qresearch._compat import tf
from qresearch.checks import DataError
from qresearch.data.preprocess import Preprocess, assertion_text

AUTOTUNE = tf.data.AUTOTUNE
#: Test images a deployment check (TFLite interpreter, in memory) runs on by default.
DEPLOY_SAMPLES = 2000


class Source:
    """One split of a streaming dataset: its records and what identifies them without reading them."""
    size: int = 0

    def records(self, shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
        """``(encoded, label int32, origin)``; seeded and reshuffled every pass when ``shuffle_seed`` is given."""
        raise NotImplementedError

    def digest(self) -> str:
        """A hash of what the split reads, from file metadata only (paths, sizes, modification times)."""
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        return {}


class StreamingDataset:
    """Images decoded and preprocessed in the input pipeline, batch by batch."""

    def __init__(self, name: str, train: Source, test: Source, num_classes: int, preprocess: Preprocess,
                 classes: Optional[Sequence[str]] = None, kind: str = "stream", augment: bool = True,
                 deploy_samples: Optional[int] = DEPLOY_SAMPLES):
        self.name, self.train, self.test, self.kind = name, train, test, kind
        self.num_classes, self.preprocess = int(num_classes), preprocess
        self.classes = list(classes) if classes is not None else None
        self.augment, self.deploy_samples = augment, deploy_samples
        self._fingerprint: Optional[str] = None

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return self.preprocess.input_shape

    @property
    def train_size(self) -> int:
        return int(self.train.size)

    @property
    def test_size(self) -> int:
        return int(self.test.size)

    # ---------------------------------------------------------------- pipelines
    def train_pipeline(self, batch_size: int, seed: int, steps_per_epoch: Optional[int] = None,
                       augment: Optional[bool] = None) -> tf.data.Dataset:
        """Seeded shuffle (reshuffled each epoch), parallel decode, augmentation, batched, prefetched."""
        pre = self.preprocess
        ds = self.train.records(shuffle_seed=int(seed))
        if self.augment if augment is None else augment:
            s = tf.cast(int(seed), tf.int64)
            # stateless per-image seeds (seed, position in the epoch): reproducible under parallel maps
            ds = ds.enumerate().map(lambda i, r: (pre.train_image(r[0], r[2], tf.stack([s, i])), r[1]),
                                    num_parallel_calls=AUTOTUNE, deterministic=True)
        else:
            ds = ds.map(lambda e, y, o: (pre.eval_image(e, o), y), num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(int(batch_size))
        if steps_per_epoch:
            ds = ds.take(int(steps_per_epoch))
        return ds.prefetch(AUTOTUNE)

    def _eval_pipeline(self, source: Source, batch_size: int, shuffle_seed: Optional[int] = None,
                       limit: Optional[int] = None) -> tf.data.Dataset:
        pre = self.preprocess
        ds = source.records(shuffle_seed=shuffle_seed)
        if limit is not None:
            ds = ds.take(int(limit))
        ds = ds.map(lambda e, y, o: (pre.eval_image(e, o), y), num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.batch(int(batch_size)).prefetch(AUTOTUNE)

    def test_pipeline(self, batch_size: int = 256) -> tf.data.Dataset:
        """The test split in its listed order (folder: class, then file name), center-cropped."""
        return self._eval_pipeline(self.test, batch_size)

    def train_sample(self, n: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """``n`` training images and labels with evaluation's preprocessing, as arrays (``n`` is small). A
        split whose files can be picked (a folder) gives the in-memory rule's images: ``n`` indices drawn
        by ``seed``, in listed order; shards give the first ``n`` of the stream shuffled by ``seed`` (the
        listed order alone, sorted by class, would give one class)."""
        n = max(1, int(n))
        pick = getattr(self.train, "pick", None)
        if pick is not None:
            idx = np.sort(np.random.default_rng(seed).permutation(self.train_size)[:n])
            ds = self._eval_pipeline(pick(idx), 256)
        else:
            ds = self._eval_pipeline(self.train, 256, shuffle_seed=int(seed), limit=n)
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
        return np.concatenate(xs), np.concatenate(ys)

    def calibration(self, n: int, seed: int = 0) -> np.ndarray:
        """``train_sample``'s images: for PTQ range calibration."""
        return self.train_sample(n, seed)[0]

    def test_arrays(self, limit: Optional[int] = -1) -> Tuple[np.ndarray, np.ndarray]:
        """The first ``limit`` test images and labels as arrays (default ``deploy_samples``; None: all),
        for what needs arrays in memory (the TFLite interpreter of a deployment check)."""
        limit = self.deploy_samples if limit == -1 else limit
        xs, ys = [], []
        for x, y in self._eval_pipeline(self.test, 256, limit=limit):
            xs.append(x.numpy())
            ys.append(y.numpy())
        return np.concatenate(xs), np.concatenate(ys)

    # ---------------------------------------------------------------- identity and checks
    def fingerprint(self) -> str:
        """sha256 of the listings (relative paths, sizes, modification times: no file is read), the
        classes and the preprocessing. A file rewritten with the same size and mtime goes unnoticed;
        touching it, or any edit that changes its size, is seen (notes/data.md)."""
        if self._fingerprint is None:
            text = json.dumps({"kind": self.kind, "num_classes": self.num_classes, "classes": self.classes,
                               "preprocess": self.preprocess.as_dict(), "train": self.train.digest(),
                               "test": self.test.digest()}, sort_keys=True, default=list)
            self._fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        out = {"name": self.name, "kind": self.kind, "train": self.train_size, "test": self.test_size,
               "input_shape": list(self.input_shape), "num_classes": self.num_classes,
               "fingerprint": self.fingerprint(), "preprocess": self.preprocess.as_dict()}
        if self.classes is not None:
            out["classes"] = self.classes if len(self.classes) <= 100 else self.classes[:100] + ["..."]
        return out

    def validate(self) -> "StreamingDataset":
        """Cheap checks at load, before anything trains: both splits hold images, and the first training
        image decodes to the configured size (a wrong ``image_size`` fails here, naming the file)."""
        for split, src in (("train", self.train), ("test", self.test)):
            if src.size < 1:
                raise DataError(f"dataset {self.name!r}: the {split} split has no images. "
                                f"Fix: check the dataset's path or globs ({src.describe()})")
        try:  # through the pipeline (graph mode), as training will read it
            next(iter(self._eval_pipeline(self.train, 1, limit=1)))
        except tf.errors.InvalidArgumentError as exc:
            raise DataError(f"dataset {self.name!r}: {assertion_text(exc)}") from None
        return self


def files_digest(rows: List[Tuple[str, int, int]]) -> str:
    """sha256 of sorted ``(relative path, size, mtime_ns)`` rows."""
    h = hashlib.sha256()
    for rel, size, mtime in sorted(rows):
        h.update(f"{rel}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()
