"""``qresearch.quantize``: a float tf_keras model + a scheme (+ a hardware target) → a tfmot QAT model.

A thin composition of the parts below it: the target checks the scheme once (``hardware.constrain``),
the schemes plan the rewrite as named passes (``schemes.passes``) and build it (``schemes.build``), the
target checks what only the plan knows (per-layer granularity, annotations, users' own quantizers),
and calibration initialises the ranges (``schemes.calibrate``).
"""
from __future__ import annotations

from typing import List, Optional

from qresearch._compat import ensure_keras2_model
from qresearch.hardware import layer_checks
from qresearch.hardware.constrain import constrain
from qresearch.hardware.registry import get as get_target, register_kernels
from qresearch.schemes import presets
from qresearch.schemes.build import build, set_kernels
from qresearch.schemes.calibrate import batches_of, calibrate
from qresearch.schemes.input_sign import input_nonneg
from qresearch.schemes.transfer import copy_layer_weights
from qresearch.kernels import KERNELS
from qresearch.schemes.passes import make_plan, read_model


def _kernel_set(kernels, target) -> Optional[str]:
    if kernels == "target":
        kernels = register_kernels(target).kernels if target is not None else None
    if kernels in (None, "none"):
        return None
    KERNELS.get(kernels)  # unknown names fail here, with the known ones listed
    return kernels


def _unsigned_inputs(graph, plan) -> List[str]:
    """Names of the model inputs planned as >= 0 (unsigned activation grid; ``input_sign``)."""
    return [t.name.split(":")[0] for t, r in zip(graph.inputs, graph.input_refs) if plan.input_nonneg.get(r)]


def quantize(model, scheme, hardware=None, calibration_data=None, adapt: bool = False,
             kernels: Optional[str] = "target", constrained: bool = False, weights_from=None):
    """Quantize a tf_keras model for QAT.

    Args:
      model: a built tf_keras Sequential or functional model (nested models are inlined).
      scheme: a preset name (``qresearch.schemes.names()``), a scheme dict or a ``SchemeSpec``.
      hardware: a hardware target (name or ``Target``); the scheme is checked (and with
        ``adapt=True`` coerced) against it first.
      calibration_data: array, ``(x, y)``, list of batches or ``tf.data.Dataset``; a few batches
        initialise every quantizer's range/step size, so the model is accurate before training. With the
        scheme's ``input_sign: data`` (the default) they also decide each model input's grid: unsigned
        where every value is >= 0.
      kernels: the integer kernel set the inference pass emulates (``qresearch.kernels.KERNELS``):
        "target" takes the hardware target's (``tflite_int8``: LiteRT's builtin kernels), None or
        "none" keeps the float fake-quant simulation. Training always runs the float forward.
      weights_from: a QAT model of the same float model (another width, e.g. progressive bit reduction):
        its layer weights are copied in before calibration (``schemes.transfer.copy_layer_weights``).
      constrained: ``scheme`` is already ``hardware.constrain``'s output for this ``hardware`` (the run
        checks it before loading data): the scheme-level check is not repeated; per-layer checks still run.
    Returns:
      the QAT model (its layers are tfmot ``QuantizeWrapperV2`` subclasses); ``qresearch_info``
      holds the scheme, hardware and coercions.
    """
    ensure_keras2_model(model)
    spec = presets.resolve(scheme)
    target = get_target(hardware) if hardware is not None else None
    coercions: List[str] = []
    if target is not None and not constrained:  # the scheme-level check, once; per-layer checks follow
        spec, coercions = constrain(spec, target, adapt=adapt)
    graph, annotations = read_model(model)
    if target is not None:
        coercions += layer_checks.require_annotated(graph, annotations, target, adapt)
    calib = batches_of(calibration_data, len(model.inputs)) if calibration_data is not None else None
    plan = make_plan(graph, spec, annotations, input_nonneg=input_nonneg(spec.input_sign, graph.input_refs, calib))
    if target is not None:
        coercions += layer_checks.constrain_layers(plan, target)
        configured = [(p.layer, p.user_config) for p in plan.layers if p.user_config is not None]
        if configured:
            coercions += layer_checks.check_user_configs(configured, target)
    qmodel = build(plan)
    if target is not None:
        from qresearch.hardware.deploy import warn_unconvertible  # lazily: the converter's modules

        warn_unconvertible(qmodel, target)
    kernel_set = _kernel_set(kernels, target)
    if kernel_set:
        set_kernels(qmodel, kernel_set)
    hw_name = None if hardware is None else \
        hardware if isinstance(hardware, str) else getattr(hardware, "name", str(hardware))
    # plain attribute (not tracked by Keras, so it never reaches the SavedModel object graph)
    object.__setattr__(qmodel, "qresearch_info", {"scheme": spec.to_dict(), "hardware": hw_name,
                                                  "coercions": list(coercions), "float_layers": plan.float_layers(),
                                                  "kernels": kernel_set,
                                                  "unsigned_inputs": _unsigned_inputs(graph, plan)})
    if weights_from is not None:
        copy_layer_weights(weights_from, qmodel)
    if calib is not None:
        calibrate(qmodel, calib)
    return qmodel
