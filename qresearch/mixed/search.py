"""End to end in Python: cost model, sensitivity, allocation, scheme."""
from __future__ import annotations

from typing import Any, Dict, Sequence

from qresearch.errors import ConfigError
from qresearch.mixed.allocate import SOLVERS, allocate  # noqa: F401  (SOLVERS: the config's valid names)
from qresearch.mixed.cost import cost
from qresearch.mixed.graph import compute_layers
from qresearch.mixed.scheme import base_spec, reads_own_inputs, to_scheme
from qresearch.mixed.sensitivity import hessian_sensitivity, sensitivity

SENSITIVITY = {"measured": sensitivity, "hessian": hessian_sensitivity}
DEFAULT_BITS = (8, 4, 3, 2)  # candidates when neither the run nor its target says


def candidate_widths(bits=None, target=None) -> list:
    """The run's candidates: ``bits`` if given, else the target's widths for weights and activations
    both, else ``DEFAULT_BITS``; always intersected with the target's (``allowed_widths``)."""
    if bits is None and target is not None:
        bits = sorted(set(target.weights.bits) & set(target.activations.bits)) or DEFAULT_BITS
    return allowed_widths(DEFAULT_BITS if bits is None else bits, target)


def allowed_widths(bits: Sequence[int], target=None) -> list:
    """``bits`` a target allows for both weights and activations (a layer's width is both)."""
    bits = sorted({int(b) for b in bits}, reverse=True)
    if target is None:
        return bits
    from qresearch import hardware

    t = hardware.get(target) if isinstance(target, str) else target
    ok = [b for b in bits if b in t.weights.bits and b in t.activations.bits]
    if not ok:
        raise ConfigError(f"target {t.name!r} allows weights {list(t.weights.bits)} and activations "
                          f"{list(t.activations.bits)}: none of the candidate widths {bits}")
    return ok


def search(model, data, scheme, budget, bits: Sequence[int] = (8, 4, 3, 2), target=None,
           method: str = "measured", solver: str = "ilp", calibration_data=None, fixed=None,
           **sensitivity_options) -> Dict[str, Any]:
    """Choose per-layer widths for ``model`` within ``budget`` and return them as a plain scheme.

    Args:
      budget: ``{"bops": f}``, ``{"memory": f}``, ``{"table_cost": f}`` (the target's ``costs:`` table) or
        several, f = fraction of the all-8-bit cost.
      bits: candidate widths (intersected with the target's allowed widths).
      method: "measured" (``sensitivity``) or "hessian" (``hessian_sensitivity``).
      fixed: ``{layer: bits}`` held; default: when the scheme (or target) sets ``first_last_bits``,
        the first and last compute layers at that width, as the uniform baselines have them.
    Returns:
      ``{"scheme": plain dict, "widths": {layer: bits}, "allocation": ..., "cost": cost table,
      "reference": 8-bit cost table, "sensitivity": ...}``.
    """
    if method not in SENSITIVITY:
        raise ConfigError(f"sensitivity method must be one of {sorted(SENSITIVITY)}, got {method!r}")
    allowed = allowed_widths(bits, target)
    spec = base_spec(scheme)
    layers = compute_layers(model)
    if fixed is None:
        flb = spec.first_last_bits
        if flb is None and target is not None:
            from qresearch import hardware

            flb = (hardware.get(target) if isinstance(target, str) else target).first_last_bits
        fixed = {layers[0].name: flb, layers[-1].name: flb} if flb and layers else {}
    opts = dict(sensitivity_options)
    if method == "measured":
        opts["calibration_data"] = calibration_data
    sens = SENSITIVITY[method](model, data, spec, bits=sorted(set(allowed) | set(fixed.values())), **opts)
    table = _table(target)
    own = reads_own_inputs(spec)  # each layer reads its input at its own width (mixed.graph)
    rows = cost(model, own_inputs=own)["layers"]
    alloc = allocate(rows, sens["scores"], budget, allowed, fixed=fixed, method=solver, table=table)
    widths = alloc["widths"]
    return {"scheme": to_scheme(spec, widths, model, name="mixed_" + "_".join(f"{k}{b['fraction']:g}" for k, b in alloc["budgets"].items())),
            "widths": widths, "allocation": alloc, "cost": cost(model, widths, table=table, own_inputs=own),
            "reference": cost(model, {c.name: 8 for c in layers}, table=table), "sensitivity": sens}


def _table(target):
    """The target's cost table, if any (a name or a Target)."""
    if target is None:
        return None
    from qresearch import hardware

    return (hardware.get(target) if isinstance(target, str) else target).costs
