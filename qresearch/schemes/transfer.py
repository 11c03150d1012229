"""Carry a trained QAT model's layer weights into another QAT model of the same float model.

For progressive bit reduction (Zhuang et al. 2018 train at decreasing widths; APoT, Li et al. 2020,
starts its 2-bit models from the 4-bit ones): the lower-bit model is built from the same float model and
scheme (same layers, same folding) and takes the higher-bit model's kernels, biases and float-layer
weights; its quantizer parameters are left alone, to be set by calibration at the new width.
"""
from __future__ import annotations

from typing import Any, Dict, List

from qresearch.errors import ConfigError
from qresearch.quantizers.base import is_quantizer_variable


def own_weights(layer) -> list:
    """The layer's weights that are not quantizer state (for a wrapper: its inner layer's)."""
    inner = getattr(layer, "layer", None)
    weights = inner.weights if inner is not None and hasattr(layer, "quantize_config") else layer.weights
    weights = list(weights) + list(getattr(layer, "bn_weights", []))  # BatchStatsFold: its BN too
    return [w for w in weights if not is_quantizer_variable(w)]


def own_weights_by_path(layer) -> Dict[str, Any]:
    """``own_weights`` by their path inside the layer ("kernel:0", "query/kernel:0"). Their order in ``weights``
    follows the layer's call history: a wrapper's call sets the quantized kernel on the layer and puts the variable
    back, which moves it after the bias (measured: a QAT model after one inference call, against a fresh one)."""
    return {w.name.split("/", 1)[-1]: w for w in own_weights(layer)}


def copy_layer_weights(source, target) -> List[str]:
    """Assign ``source``'s layer weights to ``target``'s layers, layer by layer in order and weight by weight by
    path; returns the layers' names.

    Both models must come from one float model through one scheme (apart from bit widths), so their layers
    correspond one to one (names may differ: Keras numbers repeated names). A layer of another type or a
    weight of another shape is refused, naming it."""
    folding = [((getattr(m, "qresearch_info", None) or {}).get("scheme") or {}).get("bn_folding")
               for m in (source, target)]
    if None not in folding and folding[0] != folding[1]:  # (a preset's low_bits rule keeps BN at 2-3 bits only)
        raise ConfigError(f"progressive bits: the higher-bit model was built with bn_folding: {folding[0]} and this "
                          f"one with bn_folding: {folding[1]}, so their layers differ (the learned presets keep BN "
                          f"below 4 bits: their scheme's low_bits). Build the higher-bit model with bn_folding: "
                          f"{folding[1]} too (the runner's progressive_bits does), or both with low_bits: null")
    if len(source.layers) != len(target.layers):
        raise ConfigError(f"progressive bits: the models have {len(source.layers)} and {len(target.layers)} "
                          "layers; both must be built from the same model and scheme")
    copied = []
    for src_layer, layer in zip(source.layers, target.layers):
        src, dst = own_weights_by_path(src_layer), own_weights_by_path(layer)
        kinds = (type(getattr(src_layer, "layer", src_layer)).__name__, type(getattr(layer, "layer", layer)).__name__)
        shapes = ({k: tuple(w.shape) for k, w in src.items()}, {k: tuple(w.shape) for k, w in dst.items()})
        if kinds[0] != kinds[1] or shapes[0] != shapes[1]:
            raise ConfigError(f"progressive bits: layer {layer.name!r} ({kinds[1]}, weights {shapes[1]}) does not "
                              f"match {src_layer.name!r} ({kinds[0]}, weights {shapes[0]}) of the higher-bit "
                              "model; both must be built from the same model and scheme")
        for key, var in dst.items():
            var.assign(src[key])
        layer.finalize_state()   # constants computed from weights (Normalization's mean and variance)
        if dst:
            copied.append(layer.name)
    return copied
