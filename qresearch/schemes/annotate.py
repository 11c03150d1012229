"""tfmot's annotate-then-apply flow (``quantize_annotate_layer`` / ``quantize_annotate_model``).

``unwrap(graph)`` runs right after ``graph.flatten``: every ``QuantizeAnnotate`` node gets its wrapped
layer back (``annotate_layer.layer``), and the returned ``Annotations`` remember which layers were
annotated and with which user ``QuantizeConfig`` (``annotate_layer.quantize_config``). Planning
(``passes.classify``) then reads them:

- no annotation anywhere: every layer is quantized (a plain model);
- a layer not annotated in an annotated model stays float ("not annotated");
- annotated without a config: the scheme decides (skip, overrides, first_last_bits match the inner
  layer's own name and class);
- annotated with a config: the user's config decides its weights, activations and output, in a
  ``ConfigWrapper`` (tfmot ``QuantizeWrapperV2``); its float inputs still get the scheme's input
  quantizer, as tfmot's ``quantize_apply`` quantizes the inputs of annotated layers.

``unwrap`` is pass 0 of planning (``passes.read_model``). Checking the user's quantizers against a
hardware target is the target's job (``hardware.layer_checks``).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

from qresearch._compat import keras, tf, tfmot
from qresearch.schemes.wrappers import QuantizeWrapper, calibrating

# tfmot's public API does not export the annotation wrapper; it lives here in 0.8.
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import (  # noqa: E402
    QuantizeAnnotate)
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (  # noqa: E402
    QuantizeLayer as _TfmotQuantizeLayer)

_QW = tfmot.quantization.keras.QuantizeWrapper  # base of QuantizeWrapperV2 and of our wrappers
NOT_ANNOTATED = "not annotated"


@dataclasses.dataclass
class Annotations:
    """Which layers a model annotated, and the user's ``QuantizeConfig`` of each (None: the scheme's)."""

    configs: Dict[int, Optional[object]] = dataclasses.field(default_factory=dict)  # id(layer) -> config

    @property
    def active(self) -> bool:
        """False for a model without annotations: then every layer counts as annotated."""
        return bool(self.configs)

    def annotated(self, node) -> bool:
        return not self.active or any(id(layer) in self.configs for layer in _layers_of(node))

    def keeps_whole(self, layer) -> bool:
        """A SeparableConv not annotated (float) or with a user config (which names its weights) is not split."""
        return self.active and (id(layer) not in self.configs or self.configs[id(layer)] is not None)

    def config(self, node):
        for layer in _layers_of(node):
            if self.configs.get(id(layer)) is not None:
                return self.configs[id(layer)]
        return None


def _layers_of(node):
    """The node's layer, and the user's layer it was split from (SeparableConv)."""
    return [node.layer] + ([node.origin] if getattr(node, "origin", None) is not None else [])


def unwrap(graph) -> Annotations:
    """Replace each ``QuantizeAnnotate`` node's layer by the layer it wraps; return the annotations."""
    found = Annotations()
    for node in graph.nodes:
        layer = node.layer
        if not isinstance(layer, QuantizeAnnotate):
            continue
        inner = layer.layer
        found.configs[id(inner)] = layer.quantize_config
        node.layer = inner
    return found


# ----------------------------------------------------------------- user configs
def quantizes_weights(config, layer) -> bool:
    return bool(config.get_weights_and_quantizers(layer))


def output_quantized(config, layer) -> bool:
    return bool(config.get_output_quantizers(layer))


def wrapper_problem(layer) -> Optional[str]:
    """The message for a tfmot wrapper that reached planning, where registering it would be wrong."""
    if isinstance(layer, QuantizeAnnotate):
        return (f"layer {layer.name!r} is a tfmot QuantizeAnnotate where qresearch cannot unwrap it; pass the "
                "annotated Sequential/functional model itself to qresearch.quantize")
    if isinstance(layer, (_QW, _TfmotQuantizeLayer)):
        return (f"layer {layer.name!r} ({type(layer).__name__}) is already quantized by tfmot: pass the float "
                "model (or one annotated with quantize_annotate_layer/quantize_annotate_model, not quantize_apply'd)"
                " to qresearch.quantize")
    return None


# ----------------------------------------------------------------- the wrapper
def _variables(layer) -> Dict[str, tf.Variable]:
    return {k: v for k, v in vars(layer).items() if isinstance(v, tf.Variable)}


@keras.utils.register_keras_serializable(package="qresearch")
class ConfigWrapper(tfmot.quantization.keras.QuantizeWrapperV2):
    """tfmot ``QuantizeWrapperV2`` with a user's own ``QuantizeConfig``, plus what qresearch needs of it.

    - ``calibration_mode``: the quantizers observe the batch (training mode) while the layer runs in
      inference mode (BatchNormalization, Dropout), as in ``QuantizeWrapper``;
    - the layer's weight variables are put back after each call: tfmot's ``set_quantize_weights``
      replaces them by tensors and Keras then drops them from ``layer.weights``, which the weight copy,
      ``get_weights`` and ``describe`` read.
    Inference is always the plain fake-quant forward (no integer-kernel emulation: the user's quantizers
    are not known FakeQuant grids).
    """

    # the same quantizer forward and layer call as our own wrapper's float path
    _q = staticmethod(QuantizeWrapper._q)
    _call_layer = QuantizeWrapper._call_layer

    def call(self, inputs, training=None, **kwargs):
        if training is None:
            training = keras.backend.learning_phase()
        layer_training = training
        if calibrating():
            training, layer_training = True, False
        variables = _variables(self.layer)
        try:
            quantized = [self._q(q, w, training, v) for w, q, v in self._weight_vars]
            self.quantize_config.set_quantize_weights(self.layer, quantized)
            for activation in self._quantize_activations:
                activation.training = training
            self.quantize_config.set_quantize_activations(self.layer, self._quantize_activations)
            outputs = self._call_layer(inputs, layer_training, kwargs)
        finally:
            for attr, var in variables.items():
                if getattr(self.layer, attr, None) is not var:
                    setattr(self.layer, attr, var)
        if not self._output_quantizers:
            return outputs
        if isinstance(outputs, (list, tuple)):
            raise RuntimeError(f"layer {self.layer.name!r} returns several tensors; its QuantizeConfig's "
                               "get_output_quantizers must return []")
        return self._q(self._output_quantizers[0], outputs, training, self._output_quantizer_vars)
