"""Calibration: a few batches initialise every quantizer's range and step size before training.

Quantizers whose init rule reads data (``qresearch.quantizers.init``) accumulate statistics over every
batch and are set once after the last one; min-max ranges with ``init: paper`` track each batch as before.
"""
from __future__ import annotations

import numpy as np

from qresearch._compat import tf
from qresearch.checks import require_finite
from qresearch.errors import ConfigError
from qresearch.quantizers.init import collecting
from qresearch.schemes.wrappers import calibration_mode


def _batches(data, n_inputs: int, max_batches: int, batch_size: int = 32):
    """Input batches from: an array (split in batches), ``(x, y)``/``(x, y, w)``, a list of batches,
    a dict or list of arrays for a multi-input model, or a ``tf.data.Dataset`` of ``x`` or ``(x, y)``."""
    def first(item):
        if isinstance(item, tuple) and len(item) in (2, 3) and not (n_inputs > 1 and len(item) == n_inputs):
            return item[0]
        return item

    def split(x):
        n = len(tf.nest.flatten(x)[0])
        for i in range(0, min(n, max_batches * batch_size), batch_size):
            yield tf.nest.map_structure(lambda a: a[i:i + batch_size], x)

    if isinstance(data, tf.data.Dataset):
        for i, item in enumerate(data):
            if i >= max_batches:
                break
            yield first(item)
        return
    data = first(data)
    if isinstance(data, dict) or (isinstance(data, (list, tuple)) and n_inputs > 1 and len(data) == n_inputs
                                  and all(hasattr(a, "shape") for a in data)):
        yield from split(data)  # one structure of arrays for a multi-input model
        return
    if isinstance(data, (list, tuple)):  # a list of batches
        for i, item in enumerate(data):
            if i >= max_batches:
                break
            yield first(item)
        return
    yield from split(np.asarray(data) if not tf.is_tensor(data) else data)


#: Calibration batches read (of ``batch_size`` samples when the data is one array).
MAX_BATCHES = 8


def batches_of(data, n_inputs: int, max_batches: int = MAX_BATCHES) -> list:
    """The input batches ``calibrate`` reads from ``data`` (any form ``calibrate`` takes)."""
    return list(_batches(data, n_inputs, max_batches))


def _require_finite_batches(batches) -> None:
    """A NaN in calibration data makes every range it reaches NaN: the model predicts at chance, silently."""
    flat = [tf.nest.flatten(x) for x in batches]
    n_inputs = len(flat[0]) if flat else 0
    for i in range(n_inputs):
        require_finite("calibration_data" if n_inputs == 1 else f"calibration_data (model input {i})",
                       [f[i] for f in flat],
                       "pass calibration samples without NaN or infinity (e.g. the training images, once "
                       "cleaned; x[np.isfinite(x).reshape(len(x), -1).all(axis=1)] keeps the finite ones)")


def _require_input_shapes(qat_model, batches) -> None:
    """Keras' own message for a wrong shape ("Input 0 of layer ... is incompatible") names no fix."""
    for x in batches[:1]:
        if isinstance(x, dict):  # matched to inputs by name, in Keras' own way: leave it to Keras
            return
        for i, (arr, inp) in enumerate(zip(tf.nest.flatten(x), qat_model.inputs)):
            want, got = tuple(inp.shape[1:]), tuple(np.shape(arr)[1:])
            if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
                which = "calibration_data" if len(qat_model.inputs) == 1 else f"calibration_data (model input {i})"
                raise ConfigError(
                    f"{which} has samples of shape {got}, but the model takes {want}. Fix: pass samples shaped "
                    f"like the model's input (the training images, preprocessed the same way), as an array "
                    f"(N, {', '.join(str(d) for d in want)}), (x, y), a list of batches or a tf.data.Dataset.")


def calibrate(qat_model, data, max_batches: int = MAX_BATCHES) -> int:
    """Initialise ranges and step sizes: quantizers in training mode, layers (BN, dropout) in
    inference mode, no weight update. Returns the number of batches seen."""
    batches = batches_of(data, len(qat_model.inputs), max_batches)  # a few batches: checked before use
    _require_finite_batches(batches)
    _require_input_shapes(qat_model, batches)
    if not batches:
        raise ConfigError("calibration_data gave no batches; pass an array, (x, y), a list of batches "
                          "or a tf.data.Dataset")
    with calibration_mode(), collecting() as collector:
        for x in batches:
            qat_model(x, training=False)
    collector.apply()
    return len(batches)
