"""A user's own code, written as real modules into a folder (put it on sys.path or run from it)."""
from pathlib import Path

import numpy as np

QUANTIZER = '''
from qresearch import tf
from qresearch.quantizers import Quantizer, ops, register


@register({name!r})
class UserRule(Quantizer):
    def __init__(self, bits=8, symmetric=True, narrow_range=False, per_channel=False, axis=None,
                 signed=True, scale_format="float32", alpha=1.0):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        self.alpha = alpha

    def build_params(self, shape, name, layer):
        return {{"step": self.add_variable(layer, f"{{name}}_step", shape, 0.05, trainable=True)}}

    def quantize(self, x, training, weights, axes):
        qn, qp = self.grid
        s = self.broadcast(weights["step"], x, axes)
        return ops.round_ste(tf.clip_by_value(x / s, -qn, qp)) * s
'''

DATA = '''
import numpy as np

from qresearch.data import Dataset


def arrays(n=60, classes=3, size=6):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, classes, n)


def as_dict(n=60, classes=3):
    x, y = arrays(n, classes)
    return {"x": x, "y": y}


def as_tuple(n=60):
    x, y = arrays(n)
    return x[:40], y[:40], x[40:], y[40:]


def as_dataset():
    x, y = arrays()
    return Dataset("mine", x[:40, ..., None] / 255.0, y[:40], x[40:, ..., None] / 255.0, y[40:], num_classes=3)


def wrong():
    return [1, 2]
'''

MODELS = '''
import tf_keras as keras


def build(input_shape, num_classes, width=16):
    inp = keras.Input(input_shape, name="input")
    x = keras.layers.Flatten()(inp)
    x = keras.layers.Dense(width, activation="relu", name="hidden")(x)
    return keras.Model(inp, keras.layers.Dense(num_classes, name="logits")(x), name="user_mlp")


def tokens(input_shape, num_classes, vocab=100):
    """A token classifier: integer ids (an int32 Input) read by an Embedding."""
    inp = keras.Input(input_shape, dtype="int32", name="ids")
    x = keras.layers.Embedding(vocab, 8, name="embed")(inp)
    x = keras.layers.GlobalMaxPooling1D()(keras.layers.Conv1D(8, 3, activation="relu", name="conv")(x))
    return keras.Model(inp, keras.layers.Dense(num_classes, name="logits")(x), name="user_tokens")
'''


def write_quantizer(folder: Path, module: str, name: str) -> Path:
    """A plugin module ``module`` that registers a quantizer ``name`` when imported."""
    path = Path(folder) / f"{module}.py"
    path.write_text(QUANTIZER.format(name=name))
    return path


def write_data_and_models(folder: Path) -> None:
    """``user_data`` (loaders returning a dict, a tuple, a Dataset, a wrong thing) and ``user_models.build``."""
    (Path(folder) / "user_data.py").write_text(DATA)
    (Path(folder) / "user_models.py").write_text(MODELS)


def write_npz(path: Path, n=90, classes=3, size=8, single=False, **extra) -> Path:
    """uint8 images (N, H, W) and integer labels, split (x_train, ...) or as one set (x, y)."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    y = np.arange(n) % classes
    if single:
        np.savez(path, x=x, y=y, **extra)
    else:
        k = 2 * n // 3
        np.savez(path, x_train=x[:k], y_train=y[:k], x_test=x[k:], y_test=y[k:], **extra)
    return Path(path)


def write_tokens(path: Path, n=400, length=16, vocab=100) -> Path:
    """int32 token ids (N, length) and labels: whether at least two ids are under 10."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (n, length)).astype(np.int32)
    y = (np.isin(x, np.arange(10)).sum(1) > 1).astype(np.int32)
    k = 3 * n // 4
    np.savez(path, x_train=x[:k], y_train=y[:k], x_test=x[k:], y_test=y[k:])
    return Path(path)


def write_image_folder(root: Path, n=12, classes=3, size=8) -> Path:
    """PNGs in ``root/train/<class>/`` and ``root/test/<class>/`` (dataset=image_folder), and the same
    images as TFRecord shards ``root/shards/{train,test}-*`` (dataset=tfrecord)."""
    from PIL import Image

    from qresearch.data.tfrecord import folder_to_tfrecords

    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for i in range(n):
            d = root / split / f"c{i % classes}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    for split in ("train", "test"):
        folder_to_tfrecords(str(root), str(root / "shards" / split), 2, split)
    return Path(root)
