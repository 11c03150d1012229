"""Float models: a small zoo in a registry, plus any importable builder via ``_target_``.

A builder is ``fn(input_shape, num_classes, **options) -> tf_keras.Model``; the model
outputs logits (no softmax), its last layer is a Dense named ``logits``. Register one with
``@register_model("name")``, or point a model config at it:
``model: {_target_: mypkg.models.build, width: 32}``.

Models are Keras 2 (tf_keras) functional models, so tfmot can quantize them: activations
sit inside the compute layer (``activation="relu"``) or after BatchNormalization, the
patterns tfmot quantizes (a bare Conv2D→ReLU would leave the kernel unquantized).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from qresearch._compat import keras
from qresearch.errors import ConfigError
from qresearch.plugins import import_object
from qresearch.registry import Registry

MODELS: Registry = Registry(
    "model", how_to_add="model._target_=your_module.build on the command line (a function "
    "build(input_shape, num_classes, **options) -> tf_keras.Model; options as +model.KEY=VALUE), or "
    "@qresearch.models.register_model('NAME') on that function in a module passed as plugins=[your_module].")
BN_MOMENTUM = 0.9  # Keras' 0.99 leaves moving statistics unconverged after short trainings
RESERVED_KEYS = ("name", "_target_")


def register_model(name: str, builder: Callable[..., Any] = None, *, overwrite: bool = False):
    """Register ``builder(input_shape, num_classes, **options)`` under ``name`` (usable as a decorator)."""
    return MODELS.register(name, builder, overwrite=overwrite)


BUILDER_CONTRACT = "build(input_shape, num_classes, **options) -> tf_keras.Model"


def _import(path: str) -> Callable[..., Any]:
    return import_object(path, "model._target_", BUILDER_CONTRACT)


def model_config(name_or_path: str) -> dict:
    """A registered name (``lenet5``) or an importable builder's dotted path (``pkg.mod.build``) -> the model
    config ``build_model`` takes."""
    return {"_target_": name_or_path} if "." in name_or_path else {"name": name_or_path}


def build_model(cfg: Mapping[str, Any], input_shape: Sequence[int], num_classes: int):
    """Build the float model a ``model`` config node describes."""
    cfg = dict(cfg)
    options = {k: v for k, v in cfg.items() if k not in RESERVED_KEYS}
    builder = _import(cfg["_target_"]) if cfg.get("_target_") else MODELS.get(cfg.get("name"))
    try:
        model = builder(tuple(input_shape), int(num_classes), **options)
    except TypeError as exc:
        raise ConfigError(f"model {cfg.get('_target_') or cfg.get('name')!r}: bad options {options}: {exc}") from exc
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model builder {cfg.get('_target_') or cfg.get('name')!r} returned {type(model).__name__}, "
                          f"expected a tf_keras.Model (build it with `import tf_keras as keras`)")
    return model
