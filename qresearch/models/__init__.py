"""Float models: a registry of builders (``registry.py``), the small zoo (``zoo.py``: mlp, lenet5, mobilenet_tiny,
resnet20) and ImageNet-class models (``imagenet.py``: resnet18, resnet50, mobilenet_v2), plus any importable builder
via ``model._target_``. Public API: ``MODELS``, ``register_model``, ``build_model``, ``model_config``, ``BN_MOMENTUM``."""
from qresearch.models.registry import (BN_MOMENTUM, BUILDER_CONTRACT, MODELS, build_model, model_config,
                                       register_model)
from qresearch.models.zoo import lenet5, mlp, mobilenet_tiny, resnet20, small_cnn
from qresearch.models.imagenet import mobilenet_v2, resnet18, resnet50

__all__ = ["BN_MOMENTUM", "BUILDER_CONTRACT", "MODELS", "build_model", "lenet5", "mlp", "mobilenet_tiny",
           "mobilenet_v2", "model_config", "register_model", "resnet18", "resnet20", "resnet50", "small_cnn"]
