"""Image folders written from arrays for the streamed-dataset tests (imported by name: a module named
``conftest`` would clash with the other test folders' ones)."""
from pathlib import Path

import numpy as np
from PIL import Image

N_TRAIN, N_TEST = 300, 100


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, split: str = "", ext: str = "png") -> None:
    """``x`` uint8 (N, H, W) or (N, H, W, 3) into ``root/split/<label>/<index>.ext``."""
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / split / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:04d}.{ext}")


def listing_order(y: np.ndarray) -> np.ndarray:
    """The indices of ``write_folder``'s images in the folder's order: class folder, then file name."""
    return np.lexsort((np.arange(len(y)), y))


class Digits:
    def __init__(self, root: Path):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = np.round(bunch.images * (255 / 16)).astype(np.uint8)
        y = bunch.target.astype(np.int32)
        self.root = root
        write_folder(root, x[:N_TRAIN], y[:N_TRAIN], "train")
        write_folder(root, x[N_TRAIN:N_TRAIN + N_TEST], y[N_TRAIN:N_TRAIN + N_TEST], "test")
        tr, te = listing_order(y[:N_TRAIN]), listing_order(y[N_TRAIN:N_TRAIN + N_TEST])
        #: uint8 (N, 8, 8, 1) and labels in the folder's listing order
        self.x_train, self.y_train = x[:N_TRAIN][tr][..., None], y[:N_TRAIN][tr]
        self.x_test, self.y_test = x[N_TRAIN:N_TRAIN + N_TEST][te][..., None], y[N_TRAIN:N_TRAIN + N_TEST][te]

    def cfg(self, **kw):
        return {"name": "image_folder", "path": str(self.root), "image_size": [8, 8], "channels": 1, **kw}
