"""The sign of each model input, for its activation quantizer's grid (``SchemeSpec.input_sign``).

Pixels in [0, 1] on a signed grid waste half of it: a 2-bit signed LSQ grid has two levels in use
({0, 1} of {-2, -1, 0, 1}) where the unsigned one has four. With ``input_sign: data`` an input whose
calibration values are all >= 0 gets the unsigned grid, as a tensor after ReLU does.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from qresearch._compat import tf


def input_nonneg(input_sign: str, input_refs: List[str], batches: Optional[list] = None) -> Dict[str, bool]:
    """Model input ref -> its values are >= 0: forced by ``input_sign`` ("signed"/"unsigned"), or with
    "data" read from ``batches`` (``calibrate.batches_of``: the batches calibration reads). Without
    calibration data "data" leaves every input signed (the safe grid: nothing is clipped at 0)."""
    if input_sign == "unsigned":
        return {r: True for r in input_refs}
    minima = _input_minima(batches, len(input_refs)) if input_sign == "data" and batches else None
    if minima is None:
        return {r: False for r in input_refs}
    return {r: bool(m >= 0.0) for r, m in zip(input_refs, minima)}


def _input_minima(batches: list, n_inputs: int) -> Optional[List[float]]:
    """The smallest value of each input over ``batches``; None where they cannot be matched to the inputs in
    order (a dict, matched by name in Keras, or a wrong count: ``calibrate`` reports that with the fix)."""
    minima = [np.inf] * n_inputs
    for x in batches:
        flat = tf.nest.flatten(x)
        if isinstance(x, dict) or len(flat) != n_inputs:
            return None
        for i, a in enumerate(flat):
            a = np.asarray(a)
            if a.size:
                minima[i] = min(minima[i], float(np.min(a)))  # NaN: calibrate() refuses the data
    return minima
