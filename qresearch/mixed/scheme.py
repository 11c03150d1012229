"""A per-layer width choice as a plain scheme: one override per compute layer."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

from qresearch.schemes.spec import SchemeSpec


def base_spec(scheme) -> SchemeSpec:
    """A preset name, a dict or a SchemeSpec as a SchemeSpec (public APIs only)."""
    if isinstance(scheme, str):
        from qresearch.schemes import get

        return get(scheme)
    return SchemeSpec.from_dict(scheme)


def reads_own_inputs(scheme) -> bool:
    """Whether every compute layer under ``scheme`` (a preset name, dict or SchemeSpec) reads its input at its own
    width (``quantize_ops: inputs``): the ``own_inputs`` of ``cost`` that prices it. The research presets do; a
    cost model built without it prices each input at its producer's width and misleads ``allocate``."""
    return base_spec(scheme).quantize_ops == "inputs"


def to_scheme(base_scheme, widths: Mapping[str, int], model=None, name: Optional[str] = None,
              base_bits: Optional[int] = 8) -> Dict[str, Any]:
    """``base_scheme`` with one override per layer in ``widths``: ``weights.bits`` and
    ``activations.bits`` = the layer's width.

    ``match`` is the layer's exact, escaped name; given ``model``, it also names the layer's chain
    (the non-compute layers whose output carries its activation quantizer, e.g. a ReLU after a
    folded BN: ``qresearch.mixed.graph``), so the next layer's input is at this width.
    ``first_last_bits`` is cleared: the overrides say every compute layer's width. The base
    weights/activations widths become ``base_bits`` (None: kept), so what no override covers (an
    ``Add``, a ``Concatenate``) runs at the width the cost model assumes for it (8 by default).
    A base scheme without weight or activation quantizer keeps that role float.
    """
    spec = base_spec(base_scheme).to_dict()
    chains = {}
    if model is not None:
        from qresearch.mixed.graph import compute_layers

        chains = {c.name: c.chain for c in compute_layers(model)}
    overrides = []
    for layer, bits in widths.items():
        names = [layer] + list(chains.get(layer, []))
        match = "|".join(re.escape(n) for n in names)
        o: Dict[str, Any] = {"match": match if len(names) == 1 else f"(?:{match})"}
        if spec["weights"] is not None:
            o["weights"] = {"bits": int(bits)}
        if spec["activations"] is not None:
            o["activations"] = {"bits": int(bits)}
        overrides.append(o)
    for role in ("weights", "activations"):
        if base_bits is not None and spec[role] is not None:
            spec[role] = dict(spec[role], bits=int(base_bits))
    spec["overrides"] = list(spec.get("overrides", [])) + overrides
    spec["first_last_bits"] = None
    if name is not None:
        spec["name"] = name
    SchemeSpec.from_dict(spec)  # validate now: a bad width fails here, not in the runner
    return spec
