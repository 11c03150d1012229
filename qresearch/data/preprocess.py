"""Preprocessing of encoded images, as config: decode, resize, crop, flip, per-channel normalisation.

Everything is a tf.data map function, so it runs in the input pipeline's threads (parallel,
autotuned), never on the whole dataset at once. The order, per image:

    decode (JPEG/PNG/GIF/BMP bytes -> uint8, ``channels``) -> float in [0, 1] -> resize
    -> crop to ``image_size`` (evaluation: center; training: ``crop``) -> (x - mean) / std
    -> training only: zero-pad ``pad`` pixels and take a random ``image_size`` crop, random flip

Normalising before the padding makes the padding the mean pixel, as the in-memory CIFAR-10 recipe does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from qresearch._compat import tf
from qresearch.errors import ConfigError

#: File signatures of the formats tf.io.decode_image reads: anything else is refused naming the file
#: (TensorFlow's own error for an undecodable image names no file).
MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG", "GIF": b"GIF8", "BMP": b"BM"}
CROPS = ("center", "random")


def _pair(value: Any, what: str) -> Tuple[int, int]:
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = [value, value]
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be [height, width] (or one number for a square), got {value!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"{what} must be positive, got {value!r}")
    return h, w


def _per_channel(value: Any, channels: int, what: str) -> Optional[Tuple[float, ...]]:
    if value is None:
        return None
    vals = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ConfigError(f"{what} has {len(vals)} values for {channels} channels: give one per channel or one for all")
    return tuple(vals)


def _check(ok, message):
    """An assertion whose error message is ``message`` (one string tensor) and nothing else."""
    return tf.debugging.Assert(ok, [message], summarize=1)


def assertion_text(exc: BaseException) -> str:
    """The message of a failed ``_check`` inside a tf.data pipeline, from TensorFlow's error text."""
    msg = str(getattr(exc, "message", exc))
    found = re.search(r"assertion failed: \[(.*?)\]\s*(\[\[|$)", msg, re.S)
    text = found.group(1) if found else msg
    return text.replace('\\"', '"').replace("\\'", "'")


@dataclass(frozen=True)
class Preprocess:
    """How an encoded image becomes a model input; built (and checked) from the dataset config node."""
    image_size: Tuple[int, int]
    channels: int = 3
    resize: Optional[Tuple[str, Tuple[int, int]]] = None  # ("shorter", (n, n)) | ("exact", (h, w)) | None
    crop: str = "center"
    pad: int = 0
    flip: bool = False
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None

    KEYS = ("image_size", "channels", "resize", "crop", "pad", "flip", "mean", "std")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Preprocess":
        if cfg.get("image_size") is None:
            raise ConfigError("this dataset needs dataset.image_size=[height,width]: the size of the model's input")
        size = _pair(cfg["image_size"], "dataset.image_size")
        channels = int(cfg.get("channels") or 3)
        if channels not in (1, 3):
            raise ConfigError(f"dataset.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        resize, r = None, cfg.get("resize")
        if r is not None:
            if isinstance(r, (int,)) and not isinstance(r, bool):
                resize = ("shorter", _pair(r, "dataset.resize"))
            else:
                resize = ("exact", _pair(r, "dataset.resize"))
            if resize[0] == "shorter" and r < max(size) or resize[0] == "exact" and (
                    resize[1][0] < size[0] or resize[1][1] < size[1]):
                raise ConfigError(f"dataset.resize={r} is smaller than dataset.image_size={list(size)}: a crop of "
                                  f"image_size cannot be taken from it. Fix: resize to at least {list(size)}")
        crop = str(cfg.get("crop") or "center")
        if crop not in CROPS:
            raise ConfigError(f"dataset.crop must be one of {', '.join(CROPS)}, got {crop!r}")
        pad = int(cfg.get("pad") or 0)
        if pad < 0:
            raise ConfigError(f"dataset.pad must be >= 0 pixels, got {pad}")
        mean = _per_channel(cfg.get("mean"), channels, "dataset.mean")
        std = _per_channel(cfg.get("std"), channels, "dataset.std")
        if std is not None and min(std) <= 0:
            raise ConfigError(f"dataset.std must be positive, got {list(std)}")
        return cls(size, channels, resize, crop, pad, bool(cfg.get("flip") or False), mean, std)

    def as_dict(self) -> dict:
        """Plain data for the fingerprint (a change of preprocessing is a change of data)."""
        return {k: getattr(self, k) for k in self.KEYS}

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (*self.image_size, self.channels)

    # ---------------------------------------------------------------- graph functions
    def decode(self, encoded, origin):
        """Encoded bytes -> float32 image in [0, 1] of ``image_size``, deterministic (evaluation's)."""
        header = tf.strings.substr(encoded, 0, 4)
        known = tf.reduce_any([tf.strings.substr(header, 0, len(m)) == m for m in MAGIC.values()])
        with tf.control_dependencies([_check(known, tf.strings.format(
                "unreadable image {}: not a JPEG, PNG, GIF or BMP file. Fix: convert or remove it", origin))]):
            img = tf.io.decode_image(encoded, channels=self.channels, expand_animations=False)
        img = tf.image.convert_image_dtype(img, tf.float32)
        return self._resize(img, origin)

    def _resize(self, img, origin):
        h, w = self.image_size
        if self.resize is None:
            shape = tf.shape(img)
            ok = tf.logical_and(tf.equal(shape[0], h), tf.equal(shape[1], w))
            with tf.control_dependencies([_check(ok, tf.strings.format(
                    "image {} is {} (height, width, channels) but dataset.image_size is [%d, %d]. Fix: set "
                    "dataset.image_size to the size of the images, or dataset.resize to resize them" % (h, w),
                    (origin, shape)))]):
                img = tf.identity(img)
        elif self.resize[0] == "exact":
            img = tf.image.resize(img, self.resize[1])
        else:  # shorter side to n, aspect ratio kept
            n = float(self.resize[1][0])
            shape = tf.cast(tf.shape(img)[:2], tf.float32)
            scale = n / tf.reduce_min(shape)
            img = tf.image.resize(img, tf.cast(tf.round(shape * scale), tf.int32))
        img.set_shape([None, None, self.channels])
        return img

    def _normalise(self, img):
        if self.mean is not None:
            img = img - tf.constant(self.mean, tf.float32)
        if self.std is not None:
            img = img / tf.constant(self.std, tf.float32)
        return img

    def eval_image(self, encoded, origin):
        img = self.decode(encoded, origin)
        img = tf.image.resize_with_crop_or_pad(img, *self.image_size)  # center crop (identity at image_size)
        img = self._normalise(img)
        img.set_shape(self.input_shape)
        return img

    def train_image(self, encoded, origin, seed):
        """``seed``: a stateless seed (2 int64) per image, so a run's augmentation is reproducible."""
        img = self.decode(encoded, origin)
        h, w = self.image_size
        if self.crop == "random":
            img = tf.image.stateless_random_crop(img, (h, w, self.channels), seed=seed + 2)
        else:
            img = tf.image.resize_with_crop_or_pad(img, h, w)
        img = self._normalise(img)
        if self.flip:
            img = tf.image.stateless_random_flip_left_right(img, seed=seed)
        if self.pad:
            img = tf.image.resize_with_crop_or_pad(img, h + 2 * self.pad, w + 2 * self.pad)
            img = tf.image.stateless_random_crop(img, (h, w, self.channels), seed=seed + 1)
        img.set_shape(self.input_shape)
        return img
