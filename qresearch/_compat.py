"""Keras 2 (tf_keras) set-up for tfmot.

tfmot 0.8 works only with Keras 2. TensorFlow picks the Keras it exposes as
``tf.keras`` when it is first imported, so ``TF_USE_LEGACY_KERAS=1`` must be set
before that. Every qresearch module imports TensorFlow, Keras and tfmot from here.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_tf_already_loaded = "tensorflow" in sys.modules
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

from qresearch.errors import KerasVersionError  # noqa: E402

__all__ = ["tf", "keras", "tfmot", "ensure_keras2_model", "tf_keras_is_legacy"]


def tf_keras_is_legacy() -> bool:
    """True when ``tf.keras`` resolves to Keras 2 in this process."""
    try:
        return tf.keras.__name__.startswith("tf_keras") or getattr(tf.keras, "__version__", "3").startswith("2.")
    except Exception:  # pragma: no cover - tf.keras may fail to resolve lazily
        return False


def ensure_keras2_model(model) -> None:
    """Raise a clear error if ``model`` is not a tf_keras (Keras 2) model."""
    if isinstance(model, keras.Model):
        return
    cls = type(model)
    if cls.__module__.split(".")[0] == "keras":
        late = (
            " TensorFlow was imported before qresearch, so `tf.keras` is Keras 3 in this process: "
            "import qresearch first, or set TF_USE_LEGACY_KERAS=1 before importing TensorFlow."
            if _tf_already_loaded and not tf_keras_is_legacy()
            else ""
        )
        raise KerasVersionError(
            f"got a Keras 3 model ({cls.__module__}.{cls.__name__}). qresearch builds on tfmot, "
            "which needs Keras 2: build the model with `import tf_keras as keras` "
            f"(or `from qresearch import keras`) instead of `import keras`.{late}"
        )
    raise KerasVersionError(
        f"expected a tf_keras.Model (Sequential or functional), got {cls.__module__}.{cls.__name__}."
    )
