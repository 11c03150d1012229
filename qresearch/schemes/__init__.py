"""Quantization schemes: SchemeSpec, presets, layer configs, the graph rewrite and reports.

Public API: ``SchemeSpec``, ``register``/``get``/``names`` (presets), ``register_layer``,
``layer_spec``, ``quantize``, ``calibrate``, ``describe``, ``load_model``.
"""
from qresearch.schemes.spec import Override, SchemeSpec
from qresearch.schemes.layers import LayerSpec, layer_spec, register_layer, registered_layers
from qresearch.schemes.wrappers import (ChannelAffine, FixedRangeQuantizer, LayerQuantizeConfig, QuantizeInput, QuantizeLike,
                                        QuantizeWrapper)
from qresearch.schemes.presets import get, names, register
from qresearch.schemes.annotate import ConfigWrapper
from qresearch.schemes.apply import calibrate, quantize
from qresearch.schemes.describe import describe, quantized_weights
from qresearch.schemes.io import UnregisteredClassError, load_model

__all__ = [
    "ChannelAffine", "ConfigWrapper", "FixedRangeQuantizer", "LayerQuantizeConfig", "LayerSpec", "Override", "QuantizeInput", "QuantizeLike",
    "QuantizeWrapper",
    "SchemeSpec", "UnregisteredClassError", "calibrate", "describe", "get", "layer_spec", "load_model", "names", "quantize",
    "quantized_weights", "register", "register_layer", "registered_layers",
]
