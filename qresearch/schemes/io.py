"""Saving and loading QAT models without ``quantize_scope`` boilerplate.

Our wrapper, input layer, config and every quantizer are registered as Keras-serializable,
so ``keras.models.load_model`` rebuilds the real classes. SavedModel directories and TF
checkpoints (``save_weights`` without ``.h5``) restore a model with trainable quantizer variables
exactly. ``.keras``/``.h5`` are refused: Keras restores their weights by position, and a
model whose quantizer variables are created in a different order on load gets them shuffled.
A user's classes load too: ``register_layer`` and ``quantizers.register`` make them Keras-serializable;
one missing from the loading process (its module not imported) is named by ``load_model``, with the fix.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional

from qresearch._compat import keras, tfmot
from qresearch.errors import ConfigError, QResearchError

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

    Refuses ``.keras``/``.h5`` files with a message naming the fix, creates its training variables
    before ``fit`` traces its step (``qresearch._prebuild``), and keeps ``qresearch_info`` (scheme,
    hardware, coercions, float layers) in its config, so ``describe`` works on a loaded model too.
    """

    def __call__(self, *args, **kwargs):
        from qresearch import kernels as integer

        if integer.in_saving_trace():
            # A saving trace (the serving signature of model.save / the TFLite converter) calls the model;
            # Keras opens a fresh call context for this call, so carry "export" down to the layers.
            with integer.export_mode():
                return super().__call__(*args, **kwargs)
        with integer.one_call():
            return super().__call__(*args, **kwargs)

    def compile(self, *args, **kwargs):
        from qresearch._prebuild import build_optimizer

        super().compile(*args, **kwargs)
        build_optimizer(self)  # fit then traces its step once, not twice

    def fit(self, x=None, y=None, *args, **kwargs):
        from qresearch._prebuild import build_metrics_for

        build_metrics_for(self, x, y)  # as compile's optimizer build: one trace of the step
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        from qresearch._prebuild import build_metrics_for

        build_metrics_for(self, x, y)  # evaluate before any fit: one trace of the test step too
        return super().evaluate(x, y, *args, **kwargs)

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


class UnregisteredClassError(QResearchError, ValueError):
    """A saved model names a class (custom layer, quantizer plugin) this process has not registered."""


def qresearch_objects():
    """Every qresearch class a QAT model may contain (wrapper, input layer, config, quantizers)."""
    from qresearch.quantizers.registry import QUANTIZERS, keras_name
    from qresearch.schemes import wrappers

    from qresearch.schemes.batch_stats_fold import BatchStatsFold

    objs = dict(wrappers.CUSTOM_OBJECTS)
    objs["qresearch>BatchStatsFold"] = BatchStatsFold
    objs["qresearch>QATModel"] = QATModel
    for name in QUANTIZERS.names():
        objs[keras_name(name)] = QUANTIZERS.get(name)
    return objs


def load_model(path, custom_objects=None, compile: bool = True):
    """Load a QAT model saved with ``model.save(path)`` (SavedModel directory).

    ``custom_objects``: classes this process has not registered (a custom layer, a quantizer plugin whose
    module is not imported), keyed by class name, quantizer name or the saved name, as in
    ``{"MyLayer": MyLayer, "my_rule": MyRule}``. A class found neither there nor registered raises
    ``UnregisteredClassError`` naming it, before Keras would fail with an unrelated message.
    """
    check_format(path)
    from qresearch import schemes  # noqa: F401  (registers the built-in layer configs and wrappers)

    with tfmot.quantization.keras.quantize_scope(), keras.utils.custom_object_scope(qresearch_objects()):
        objs = _resolve_saved_classes(path, custom_objects or {})
        with keras.utils.custom_object_scope(objs):
            model = keras.models.load_model(path, compile=compile)
    ckpt = os.path.join(os.fspath(path), "variables", "variables")
    if compile and getattr(model, "optimizer", None) is not None and os.path.exists(ckpt + ".index"):
        # tf_keras revives the optimizer of a SavedModel without its state (iterations, Adam moments),
        # so a resumed run would diverge. Restore it from the SavedModel's own checkpoint; slot
        # variables are restored when the optimizer creates them on the first step.
        keras.Model.load_weights(model, ckpt).expect_partial()
    return model


# ----------------------------------------------------------------------------- classes a saved model names
def saved_config(path) -> Optional[dict]:
    """The model's serialized config from a SavedModel's ``keras_metadata.pb`` (None without one)."""
    from tf_keras.protobuf import saved_metadata_pb2

    meta_path = os.path.join(os.fspath(path), "keras_metadata.pb")
    if not os.path.exists(meta_path):
        return None
    meta = saved_metadata_pb2.SavedMetadata()
    with open(meta_path, "rb") as f:
        meta.ParseFromString(f.read())
    for node in meta.nodes:
        if node.node_path == "root":
            root = json.loads(node.metadata)
            return {"class_name": root.get("class_name"), "config": root.get("config")}
    return None


LAYER_KEYS = ("layer", "layers", "backward_layer")  # config keys holding layers (models, wrappers, Bidirectional)


def saved_class_names(config) -> Dict[str, bool]:
    """Every class a serialized config names -> whether it sits where a layer goes (only registered names,
    "package>name", and layers can be told apart from Keras' own initializers, activations, ...)."""
    found: Dict[str, bool] = {}

    def walk(node, is_layer):
        if isinstance(node, dict):
            name = node.get("class_name")
            if isinstance(name, str) and "config" in node:
                found[name] = found.get(name, False) or is_layer
            for key, value in node.items():
                walk(value, key in LAYER_KEYS)
        elif isinstance(node, list):
            for item in node:
                walk(item, is_layer)

    walk(config, True)
    return found


def _known(name: str, is_layer: bool) -> bool:
    """Keras can build ``name`` here: registered (globally or in an active scope), or one of its own layers.
    Other unregistered plain names (initializers, activations, ...) are Keras' to judge."""
    if keras.utils.get_registered_object(name) is not None:
        return True
    if ">" in name:
        return False
    if not is_layer:
        return True
    from tf_keras.src.layers import serialization

    serialization.populate_deserializable_objects()
    return name in serialization.LOCAL.ALL_OBJECTS


def _short_name(saved: str) -> str:
    """'qresearch>quantizer:my_rule' -> 'my_rule'; 'qresearch>layer:MyLayer' -> 'MyLayer'; 'pkg>X' -> 'X'."""
    from qresearch.quantizers.registry import KERAS_PREFIX
    from qresearch.schemes.layers import LAYER_KEY_PREFIX

    tail = saved.split(">", 1)[-1]
    for prefix in (KERAS_PREFIX, LAYER_KEY_PREFIX):
        if tail.startswith(prefix):
            return tail[len(prefix):]
    return tail


def _user_class(saved: str, user: Mapping[str, Any]):
    """The class in the user's ``custom_objects`` meant for the saved name ``saved``, or None."""
    short = _short_name(saved)
    for key in (saved, short):
        if key in user:
            return user[key]
    for value in user.values():
        if getattr(value, "__name__", None) == short or getattr(value, "registry_name", None) == short:
            return value
    return None


def _resolve_saved_classes(path, user: Mapping[str, Any]) -> Dict[str, Any]:
    """``user`` plus each saved name it provides; raises ``UnregisteredClassError`` for names nobody provides."""
    objs = dict(user)
    config = saved_config(path)
    if config is None:  # not saved by Keras: nothing to check here
        return objs
    missing = []
    for name, is_layer in sorted(saved_class_names(config).items()):
        if name in objs or _known(name, is_layer):
            continue
        cls = _user_class(name, user)
        if cls is None:
            missing.append(name)
        else:
            objs[name] = cls
    if missing:
        raise UnregisteredClassError(unregistered_message(path, missing))
    return objs


def unregistered_message(path, missing) -> str:
    """Names each missing class (a user's layer, a quantizer plugin) and the two fixes."""
    from qresearch.quantizers.registry import KERAS_PREFIX

    described, example = [], []
    for saved in missing:
        short = _short_name(saved)
        plugin = saved.split(">", 1)[-1].startswith(KERAS_PREFIX)
        what = f"the quantizer plugin {short!r}" if plugin else f"the class {short!r}"
        described.append(what if saved == short else f"{what} (saved as {saved!r})")
        example.append(f"{short!r}: {'<its Quantizer class>' if plugin else short}")
    one = len(missing) == 1
    path = os.fspath(path)
    return (f"cannot load {path!r}: the saved model uses {', '.join(described)}, which {'is' if one else 'are'} not "
            f"registered in this process. Import the module that defines {'it' if one else 'them'} "
            f"(qresearch.schemes.register_layer and @qresearch.quantizers.register there make a class loadable), "
            f"or pass {'it' if one else 'them'}: qresearch.load_model({path!r}, "
            f"custom_objects={{{', '.join(example)}}}).")
