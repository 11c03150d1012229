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


@keras.utils.register_keras_serializable(package="qresearch")
class QATModel(keras.Model):
    """The functional model ``quantize`` returns.

    Refuses ``.keras``/``.h5`` files with a message naming the fix, and keeps
    ``qresearch_info`` (scheme, hardware, coercions, float layers) in its config,
    so ``describe`` works on a loaded model too.
    """

    def __call__(self, *args, **kwargs):
        from qresearch.schemes import integer

        if integer.in_saving_trace():
            # A saving trace (the serving signature of model.save / the TFLite converter) calls the model;
            # Keras opens a fresh call context for this call, so carry "export" down to the layers.
            with integer.export_mode():
                return super().__call__(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def save(self, filepath, *args, **kwargs):
        check_format(filepath)
        return super().save(filepath, *args, **kwargs)

    def save_weights(self, filepath, *args, **kwargs):
        check_format(filepath)
        return super().save_weights(filepath, *args, **kwargs)

    def load_weights(self, filepath, *args, **kwargs):
        check_format(filepath)
        return super().load_weights(filepath, *args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["qresearch_info"] = getattr(self, "qresearch_info", None)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        info = config.pop("qresearch_info", None)
        model = super().from_config(config, custom_objects=custom_objects)
        object.__setattr__(model, "qresearch_info", info or {})
        return model


def custom_objects():
    """Every qresearch class a QAT model may contain (wrapper, input layer, config, quantizers)."""
    from qresearch.quantizers.registry import QUANTIZERS
    from qresearch.schemes import wrappers

    objs = dict(wrappers.CUSTOM_OBJECTS)
    objs["qresearch>QATModel"] = QATModel
    for name in QUANTIZERS.names():
        objs[f"qresearch>quantizer:{name}"] = QUANTIZERS.get(name)
    return objs


def load_model(path, compile: bool = True):
    """Load a QAT model saved with ``model.save(path)`` (SavedModel directory)."""
    check_format(path)
    from qresearch import schemes  # noqa: F401  (registers the built-in layer configs and wrappers)

    with tfmot.quantization.keras.quantize_scope(), keras.utils.custom_object_scope(custom_objects()):
        model = keras.models.load_model(path, compile=compile)
    ckpt = os.path.join(os.fspath(path), "variables", "variables")
    if compile and getattr(model, "optimizer", None) is not None and os.path.exists(ckpt + ".index"):
        # tf_keras revives the optimizer of a SavedModel without its state (iterations, Adam moments),
        # so a resumed run would diverge. Restore it from the SavedModel's own checkpoint; slot
        # variables are restored when the optimizer creates them on the first step.
        keras.Model.load_weights(model, ckpt).expect_partial()
    return model
