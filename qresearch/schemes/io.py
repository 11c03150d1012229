"""Saving and loading QAT models without ``quantize_scope`` boilerplate.

Our wrapper, input layer, config and every quantizer are registered as Keras-serializable,
so ``keras.models.load_model`` rebuilds the real classes. SavedModel directories and TF
checkpoints (``save_weights`` without ``.h5``) restore a model with trainable quantizer variables
exactly. ``.keras``/``.h5`` are refused: Keras restores their weights by position, and a
model whose quantizer variables are created in a different order on load gets them shuffled.
"""
from __future__ import annotations

import os

from qresearch._compat import keras, tfmot
from qresearch.errors import ConfigError

REFUSED_SUFFIXES = (".keras", ".h5", ".hdf5")
_FORMAT_MSG = ("{path!r}: qresearch does not load or save QAT models as .keras/.h5 (Keras restores those "
               "weights by position and can assign quantizer variables in the wrong order). Save a "
               "SavedModel directory instead: model.save('{stem}') and qresearch.load_model('{stem}'); "
               "for weights only use a TF checkpoint: model.save_weights('{stem}.ckpt').")


def check_format(path) -> None:
    path = os.fspath(path)
    low = path.lower()
    for suffix in REFUSED_SUFFIXES:
        if low.endswith(suffix):
            raise ConfigError(_FORMAT_MSG.format(path=path, stem=path[: -len(suffix)]))


def custom_objects():
    """Every qresearch class a QAT model may contain (wrapper, input layer, config, quantizers)."""
    from qresearch.quantizers.registry import QUANTIZERS
    from qresearch.schemes import wrappers

    objs = dict(wrappers.CUSTOM_OBJECTS)
    for name in QUANTIZERS.names():
        objs[f"qresearch>quantizer:{name}"] = QUANTIZERS.get(name)
    return objs


def load_model(path, compile: bool = True):
    """Load a QAT model saved with ``model.save(path)`` (SavedModel directory)."""
    check_format(path)
    from qresearch import schemes  # noqa: F401  (registers the built-in layer configs and wrappers)

    with tfmot.quantization.keras.quantize_scope(), keras.utils.custom_object_scope(custom_objects()):
        return keras.models.load_model(path, compile=compile)
