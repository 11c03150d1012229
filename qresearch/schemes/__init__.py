"""Quantization schemes: SchemeSpec, presets, the layer registry, the graph rewrite and reports.

Public API: ``SchemeSpec``, ``register``/``get``/``names`` (presets), ``register_layer``,
``layer_spec``, ``calibrate``, ``describe``, ``load_model``. Quantizing a model against a hardware
target is ``qresearch.quantize`` (``qresearch/api.py``); this package never imports ``hardware``.
"""
from qresearch.schemes.spec import Override, SchemeSpec
from qresearch.schemes.layers import LayerSpec, layer_spec, register_layer, registered_layers
from qresearch.schemes import builtin_layers  # noqa: F401  (registers Keras' layers)
from qresearch.schemes.wrappers import (ChannelAffine, FixedRangeQuantizer, LayerQuantizeConfig, QuantizeInput,
                                        QuantizeLike, QuantizeWrapper)
from qresearch.schemes.presets import get, names, register
from qresearch.schemes.annotate import ConfigWrapper
from qresearch.schemes.batch_stats_fold import BatchStatsFold
from qresearch.schemes.calibrate import calibrate
from qresearch.schemes.describe import describe, quantized_weights
from qresearch.schemes.io import UnregisteredClassError, load_model

__all__ = [
    "BatchStatsFold", "ChannelAffine", "ConfigWrapper", "FixedRangeQuantizer", "LayerQuantizeConfig", "LayerSpec", "Override",
    "QuantizeInput", "QuantizeLike", "QuantizeWrapper", "SchemeSpec", "UnregisteredClassError", "calibrate",
    "describe", "get", "layer_spec", "load_model", "names", "quantized_weights", "register", "register_layer",
    "registered_layers",
]
