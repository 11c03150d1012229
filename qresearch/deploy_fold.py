"""``qresearch.fold_for_deployment``: a QAT model trained with BN kept (``bn_folding: no_fold``) as the folded
model a runtime such as TFLite deploys, with the trained integers.

A thin composition: the planning passes say which BN folds into which layer (``bn_folding: fold``), the twin is
built from the same float model with a min-max weight quantizer on those layers, and ``schemes.refold`` carries
the trained state into it (the fold's arithmetic and why it is exact per channel are there).
"""
from __future__ import annotations

from typing import Any, Dict

from qresearch.api import quantize
from qresearch.errors import ConfigError
from qresearch.schemes.passes import make_plan, read_model
from qresearch.schemes import refold
from qresearch.schemes.spec import SchemeSpec


def _input_sign(info: Dict[str, Any], float_model) -> str:
    """The trained model's input grids as one ``input_sign`` (its calibration data decided them)."""
    unsigned = set(info.get("unsigned_inputs") or [])
    names = [t.name.split(":")[0] for t in float_model.inputs]
    if not unsigned:
        return "signed"
    if unsigned >= set(names):
        return "unsigned"
    raise ConfigError(f"fold_for_deployment: inputs {sorted(unsigned)} of {names} have unsigned grids and the others "
                      "signed; one input_sign cannot rebuild that. Train with bn_folding: fold")


def fold_for_deployment(qat_model, float_model, hardware: Any = "from_model"):
    """The folded twin of ``qat_model`` (made by ``qresearch.quantize`` from ``float_model`` with
    ``bn_folding: no_fold`` and trained): each BN that the static fold absorbs is folded into the trained
    quantized weights, ``Q(W)·γ/σ``, on the trained grid scaled per channel; every other weight and quantizer
    state is the trained model's. Exact (the same integers) where the weight grid is per output channel; a
    per-tensor grid is re-fit to the folded kernel and reported.

    ``hardware``: the target the twin is built for (its integer kernels emulated in inference); by default the
    trained model's. The twin's ``qresearch_info["deploy_fold"]`` reports ``folded`` ({layer: BN}), ``affine``
    (BNs made per-channel affines), ``steps_moved`` ({layer: the largest change of a weight, in steps}) and
    ``requantized`` (layers whose integers moved)."""
    info = getattr(qat_model, "qresearch_info", None)
    if not info:
        raise ConfigError("fold_for_deployment takes a QAT model made by qresearch.quantize (it reads the scheme "
                          "and the target from qresearch_info)")
    spec = SchemeSpec.from_dict(info["scheme"])
    if spec.bn_folding != "no_fold":
        raise ConfigError(f"fold_for_deployment: the model was trained with bn_folding: {spec.bn_folding}, which "
                          "deploys as it is; only a no_fold model keeps BN to fold")
    target = info.get("hardware") if hardware == "from_model" else hardware
    folding = spec.replace(bn_folding="fold")
    graph, annotations = read_model(float_model)
    plan = make_plan(graph, folding, annotations)
    folded = {p.layer.name: p.folded_bn.name for p in plan.layers if p.folded_bn is not None}
    affine = [p.layer.name for p in plan.layers if p.affine and p.weights_spec is not None]
    trained = refold.wrappers_by_inner(qat_model)
    missing = [name for name in folded if name not in trained]
    if missing:
        raise ConfigError(f"fold_for_deployment: layers {missing} of the float model are not qresearch wrappers in "
                          "the QAT model (a layer with its own QuantizeConfig cannot be folded at deployment; train "
                          "it with bn_folding: fold), or the QAT model was made from another float model")
    grids = {name: refold.trained_grid(trained[name]) for name in folded
             if refold.has_quantized_fold_weight(trained[name])}
    overrides = list(folding.to_dict()["overrides"]) + refold.folded_weight_overrides(grids, affine)
    folding = folding.replace(overrides=overrides, input_sign=_input_sign(info, float_model))
    kernels = info.get("kernels") if hardware == "from_model" else "target"
    twin = quantize(float_model, folding, hardware=target, adapt=True, constrained=True, kernels=kernels)
    report = refold.carry_trained_state(qat_model, twin, folded, grids)
    twin.qresearch_info["deploy_fold"] = report
    twin.qresearch_info["coercions"] = list(info.get("coercions") or [])
    return twin
