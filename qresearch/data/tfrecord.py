"""``dataset=tfrecord``: TFRecord shards of ``tf.train.Example`` records, streamed by tf.data.

Feature spec (keys configurable, defaults those of TensorFlow's ImageNet/TF-slim converters):

    image/encoded      bytes   one encoded image: JPEG, PNG, GIF or BMP     (dataset.image_key)
    image/class/label  int64   the class index, plus ``label_offset``       (dataset.label_key)

Other features in a record are ignored. Labels after ``label_offset`` must lie in [0, num_classes)
(TF-slim's ImageNet shards count from 1: ``dataset.label_offset=-1``). ``dataset.train`` and
``dataset.test`` are glob patterns (or lists of them); shards are read interleaved, in a seeded order
that changes every epoch, through a shuffle buffer of ``shuffle_buffer`` records.

The number of records of a split is ``train_size``/``test_size`` when given, else counted once by
reading the shards without decoding, and remembered per shard (path, size, mtime) in
``<cache_dir>/data/tfrecord-counts.json``. ``write_tfrecords`` writes shards in this format.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from qresearch._compat import tf
from qresearch.data import DataUnavailableError, register_dataset
from qresearch.data.preprocess import Preprocess
from qresearch.data.stream import AUTOTUNE, DEPLOY_SAMPLES, Source, StreamingDataset, files_digest
from qresearch.errors import ConfigError

log = logging.getLogger(__name__)
IMAGE_KEY, LABEL_KEY = "image/encoded", "image/class/label"
SHUFFLE_BUFFER = 10000


class Shards(Source):
    def __init__(self, files: Sequence[str], size: int, image_key: str, label_key: str, label_offset: int,
                 num_classes: int, shuffle_buffer: int, limit: Optional[int] = None):
        self.files, self.image_key, self.label_key = list(files), image_key, label_key
        self.label_offset, self.num_classes, self.shuffle_buffer = int(label_offset), int(num_classes), shuffle_buffer
        self.limit = int(limit) if limit else None
        self.size = min(size, self.limit) if self.limit else size

    def records(self, shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
        files = tf.data.Dataset.from_tensor_slices(self.files)
        if shuffle_seed is not None:
            files = files.shuffle(len(self.files), seed=shuffle_seed, reshuffle_each_iteration=True)
        # interleaved, each record with its shard's name (named in errors)
        ds = files.interleave(lambda f: tf.data.TFRecordDataset(f).map(lambda r: (r, f)),
                              cycle_length=min(8, len(self.files)), num_parallel_calls=AUTOTUNE, deterministic=True)
        if self.limit:
            ds = ds.take(self.limit)
        if shuffle_seed is not None and self.shuffle_buffer > 1:
            ds = ds.shuffle(self.shuffle_buffer, seed=shuffle_seed + 1, reshuffle_each_iteration=True)
        spec = {self.image_key: tf.io.FixedLenFeature([], tf.string),
                self.label_key: tf.io.FixedLenFeature([], tf.int64)}
        offset, n = self.label_offset, self.num_classes

        def parse(record, shard):
            ex = tf.io.parse_single_example(record, spec)
            label = tf.cast(ex[self.label_key], tf.int32) + offset
            ok = tf.logical_and(label >= 0, label < n)
            with tf.control_dependencies([tf.debugging.Assert(ok, [tf.strings.format(
                    "a record of {} has label {} (after label_offset=%d), outside [0, %d). Fix: set "
                    "dataset.num_classes or dataset.label_offset" % (offset, n), (shard, label))], summarize=1)]):
                return ex[self.image_key], tf.identity(label), shard

        return ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)

    def digest(self) -> str:
        root = os.path.commonpath(self.files) if len(self.files) > 1 else os.path.dirname(self.files[0])
        rows = []
        for f in self.files:
            st = os.stat(f)
            rows.append((os.path.relpath(f, root), st.st_size, st.st_mtime_ns))
        return files_digest(rows) + f":{self.limit}:{self.image_key}:{self.label_key}:{self.label_offset}"

    def describe(self) -> Dict[str, Any]:
        return {"shards": len(self.files), "records": self.size}


def _files(cfg: Mapping[str, Any], split: str) -> List[str]:
    patterns = cfg.get(split)
    if not patterns:
        raise ConfigError(f"dataset=tfrecord needs dataset.{split}=GLOB: the {split} shards (e.g. "
                          f"/data/imagenet/{split}-*.tfrecord)")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = sorted({f for p in patterns for f in glob.glob(os.path.expanduser(str(p)), recursive=True)
                    if os.path.isfile(f)})
    if not files:
        raise DataUnavailableError(f"dataset.{split}={cfg.get(split)} matches no file (from {os.getcwd()}). "
                                   f"Fix: give a glob of the TFRecord shards")
    return files


def check_config(cfg: Mapping[str, Any]) -> None:
    for split in ("train", "test"):
        _files(cfg, split)
    n = cfg.get("num_classes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"dataset=tfrecord needs dataset.num_classes (a positive integer: records carry no class "
                          f"list), got {n!r}")
    Preprocess.from_config(cfg)


def _counts_file(cfg: Mapping[str, Any]) -> Path:
    root = Path(cfg.get("cache_dir") or Path.home() / ".cache" / "qresearch").expanduser()
    return root / "data" / "tfrecord-counts.json"


def count_records(files: Sequence[str], cache: Optional[Path] = None) -> int:
    """Records in ``files`` (read, not decoded), remembered per (path, size, mtime_ns) in ``cache``."""
    known: Dict[str, int] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except ValueError:
            known = {}
    total, changed = 0, False
    for f in files:
        st = os.stat(f)
        key = f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}"
        if key not in known:
            known[key] = int(tf.data.TFRecordDataset(f).reduce(0, lambda c, _: c + 1).numpy())
            changed = True
        total += known[key]
    if changed and cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache)
    return total


@register_dataset("tfrecord")
def load_tfrecord(cfg: Mapping[str, Any]) -> StreamingDataset:
    check_config(cfg)
    pre = Preprocess.from_config(cfg)
    num_classes = int(cfg["num_classes"])
    keys = dict(image_key=str(cfg.get("image_key") or IMAGE_KEY), label_key=str(cfg.get("label_key") or LABEL_KEY),
                label_offset=int(cfg.get("label_offset") or 0), num_classes=num_classes,
                shuffle_buffer=int(cfg.get("shuffle_buffer") or SHUFFLE_BUFFER))
    splits = {}
    for split in ("train", "test"):
        files = _files(cfg, split)
        size = cfg.get(f"{split}_size")
        if size is None:
            size = count_records(files, _counts_file(cfg))
        splits[split] = Shards(files, int(size), limit=cfg.get(f"{split}_samples"), **keys)
    name = Path(splits["train"].files[0]).parent.name or "tfrecord"
    return StreamingDataset(name, splits["train"], splits["test"], num_classes, pre, kind="tfrecord",
                            deploy_samples=cfg.get("deploy_samples", DEPLOY_SAMPLES))


load_tfrecord.check_config = check_config


# ------------------------------------------------------------------ writing shards
def example(encoded: bytes, label: int, image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY) -> bytes:
    """One serialized ``tf.train.Example`` in the feature spec above."""
    return tf.train.Example(features=tf.train.Features(feature={
        image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    })).SerializeToString()


def write_tfrecords(prefix: str, encoded: Iterable[bytes], labels: Iterable[int], shards: int = 1) -> List[str]:
    """Write ``(encoded image, label)`` pairs round-robin into ``{prefix}-0000i-of-0000n.tfrecord``."""
    paths = [f"{prefix}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    Path(paths[0]).parent.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for i, (e, y) in enumerate(zip(encoded, labels)):
            writers[i % shards].write(example(e, y))
    finally:
        for w in writers:
            w.close()
    return paths


def folder_to_tfrecords(folder: str, out_prefix: str, shards: int = 4, split: str = "train") -> List[str]:
    """Copy one split of an image folder (``image_folder``'s layout) into shards, in the listed order."""
    from qresearch.data.folder import scan

    root, _, train, test = scan({"path": folder, "validation_fraction": 0.1})
    entries = train if split == "train" else test
    return write_tfrecords(out_prefix, (Path(root, e[0]).read_bytes() for e in entries), (e[3] for e in entries),
                           shards)
