"""qresearch: a pluggable framework for research on quantization algorithms.

Importing qresearch sets up Keras 2 (tf_keras) for tfmot before TensorFlow loads.
"""
from qresearch._compat import keras, tf, tfmot  # noqa: F401  (must come first)
from qresearch import quantizers  # noqa: F401
from qresearch import hardware  # noqa: F401
from qresearch.errors import (ConfigError, IncompatibleTargetError, KerasVersionError, QResearchError,
                              UnknownNameError, UnsupportedLayerError)
from qresearch.checks import DataError
from qresearch.plugins import PluginImportError, import_plugins
from qresearch.registry import Registry
from qresearch import schemes  # noqa: F401
from qresearch.schemes import UnregisteredClassError, load_model
from qresearch.api import quantize
from qresearch.deploy_fold import fold_for_deployment
from qresearch.quantizer_training import configure_optimizer
from qresearch.schemes.bn_reestimate import reestimate_bn_statistics
from qresearch.schemes.activations import hard_swish

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DataError", "IncompatibleTargetError", "KerasVersionError", "PluginImportError",
    "QResearchError", "Registry", "UnknownNameError", "UnregisteredClassError", "UnsupportedLayerError",
    "configure_optimizer", "fold_for_deployment", "hard_swish", "import_plugins", "keras", "load_model", "quantize",
    "quantizers", "reestimate_bn_statistics", "schemes", "tf", "tfmot",
]
