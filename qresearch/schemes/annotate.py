"""tfmot's annotate-then-apply flow (``quantize_annotate_layer`` / ``quantize_annotate_model``).

``unwrap(graph)`` runs right after ``graph.flatten``: every ``QuantizeAnnotate`` node gets its wrapped
layer back (``annotate_layer.layer``), and the returned ``Annotations`` remember which layers were
annotated and with which user ``QuantizeConfig`` (``annotate_layer.quantize_config``). Planning
(``apply._make_plans``) then reads them:

- no annotation anywhere: every layer is quantized (a plain model);
- a layer not annotated in an annotated model stays float ("not annotated");
- annotated without a config: the scheme decides (skip, overrides, first_last_bits match the inner
  layer's own name and class);
- annotated with a config: the user's config decides its weights, activations and output, in a
  ``ConfigWrapper`` (tfmot ``QuantizeWrapperV2``); its float inputs still get the scheme's input
  quantizer, as tfmot's ``quantize_apply`` quantizes the inputs of annotated layers.

It is one planning pass with a plain result, so it can become one of the named planning passes of
issue #10 without change (unwrap → annotations → per-layer decisions).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Dict, List, Optional

from qresearch._compat import keras, tf, tfmot
from qresearch.errors import IncompatibleTargetError
from qresearch.schemes.wrappers import calibrating

# tfmot's public API does not export the annotation wrapper; it lives here in 0.8.
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import (  # noqa: E402
    QuantizeAnnotate)
from tensorflow_model_optimization.python.core.keras.utils import smart_cond  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (  # noqa: E402
    QuantizeLayer as _TfmotQuantizeLayer)

_log = logging.getLogger(__name__)
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


def _facts(quantizer) -> Dict[str, object]:
    """bits/symmetric/narrow_range/per_axis a tfmot quantizer exposes (attributes, else its config)."""
    try:
        config = quantizer.get_config() or {}
    except Exception:  # noqa: BLE001 - a user's quantizer may not implement it
        config = {}
    out = {}
    for key, names in (("bits", ("num_bits", "bits")), ("symmetric", ("symmetric",)),
                       ("narrow_range", ("narrow_range",)), ("per_axis", ("per_axis", "per_channel"))):
        for name in names:
            value = getattr(quantizer, name, config.get(name))
            if value is not None:
                out[key] = value
                break
    return out


def _roles(config, layer):
    """(role, what, quantizer) for every quantizer the user's config puts on ``layer``."""
    for weight, q in config.get_weights_and_quantizers(layer):
        yield "weights", weight.name.split("/")[-1].split(":")[0], q
    for _, q in config.get_activations_and_quantizers(layer):
        yield "activations", "activation", q
    for q in config.get_output_quantizers(layer):
        yield "activations", "output", q


def check_target(configured, hardware) -> List[str]:
    """Check the user's quantizers (``configured``: [(layer, config)]) against ``hardware``.

    A readable conflict (bit width, symmetry, narrow range of a tfmot quantizer) raises
    ``IncompatibleTargetError`` naming the layer and the fix: the scheme is coerced to a target, a
    user's own quantizer is not. A quantizer that exposes none of these is reported, not checked."""
    from qresearch.hardware.registry import get

    target = get(hardware)
    conflicts, notes = [], []
    for layer, config in configured:
        where = f"layer {layer.name!r} ({type(config).__name__})"
        for role, what, q in _roles(config, layer):
            facts, rules = _facts(q), target.rules(role)
            name = type(q).__name__
            if "bits" not in facts:
                notes.append(f"{where}: {what} quantizer {name} exposes no num_bits: not checked against "
                             f"target {target.name} (allows {list(rules.bits)} bits)")
                continue
            if facts["bits"] not in rules.bits:
                conflicts.append(f"{where}: {what} quantizer {name} has {facts['bits']} bits, target "
                                 f"{target.name} allows {list(rules.bits)}")
            if role == "weights" and rules.symmetric_required and facts.get("symmetric") is False:
                conflicts.append(f"{where}: {what} quantizer {name} is asymmetric, target {target.name} "
                                 "needs symmetric weights")
            if rules.narrow_range is not None and facts.get("narrow_range") not in (None, rules.narrow_range):
                conflicts.append(f"{where}: {what} quantizer {name} has narrow_range={facts['narrow_range']}, "
                                 f"target {target.name} needs narrow_range={rules.narrow_range}")
    if conflicts:
        raise IncompatibleTargetError(
            "a QuantizeConfig given to quantize_annotate_layer conflicts with hardware target "
            f"{target.name!r}: " + "; ".join(conflicts) + ". Fix: build the config's quantizers with what the "
            "target allows, or annotate the layer without quantize_config (the scheme, checked against the "
            "target, then decides), or quantize without hardware=")
    for note in notes:
        _log.warning("%s", note)
    return notes


def require_annotated(graph, annotations: Annotations, hardware, adapt: bool) -> List[str]:
    """On an integer-only target a float layer cannot run, so a layer left out of the annotations is a
    conflict, as a scheme's ``skip`` list is (``hardware.constrain``): raised, or with ``adapt`` annotated
    (the scheme then quantizes it) and noted. Pass-throughs (reshape, max pooling) keep their input's
    grid and are no conflict."""
    from qresearch.hardware.registry import get
    from qresearch.schemes.layers import layer_spec

    target = get(hardware)
    if not annotations.active or not target.integer_only:
        return []
    left = {}
    for node in graph.nodes:
        spec = layer_spec(node.layer)
        if annotations.annotated(node) or (spec is not None and spec.kind_of(node.layer) == "passthrough"
                                           and not spec.same_grid):
            continue
        left[id(node.layer)] = node.layer
    if not left:
        return []
    names = [layer.name for layer in left.values()]
    if not adapt:
        raise IncompatibleTargetError(
            f"layers {names} are not annotated, so they would stay float, which hardware target {target.name!r} "
            "(integer-only) cannot run. Fix: annotate them (quantize_annotate_layer, or quantize_annotate_model "
            "for the whole model), or pass adapt=True to let the scheme quantize them, or quantize without "
            "hardware=")
    for layer_id in left:
        annotations.configs[layer_id] = None
    note = f"not annotated: {names} -> quantized by the scheme (target {target.name} runs integer-only)"
    _log.warning("%s", note)
    return [note]


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

    @staticmethod
    def _q(quantizer, x, training, qvars):
        return smart_cond(training, lambda: quantizer(x, True, weights=qvars),
                          lambda: quantizer(x, False, weights=qvars))

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

    def _call_layer(self, inputs, training, kwargs):
        if "training" in inspect.signature(self.layer.call).parameters:
            return self.layer.call(inputs, training=training, **kwargs)
        return self.layer.call(inputs, **kwargs)
