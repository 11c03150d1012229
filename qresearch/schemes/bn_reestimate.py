"""BatchNormalization re-estimation after QAT, where BN stays in the QAT model (``bn_folding: no_fold``, or
a target that forbids folding, as ``academic`` does).

During QAT each BN's moving mean and variance are exponential averages of batch statistics taken while the
weights (and their quantization) kept changing, so the statistics lag behind the final network. Running the
final network over some training data and setting each BN's moving statistics to the plain average of the
batch means and variances there removes that lag (BN re-estimation: Nagel et al., "Overcoming Oscillations in
Quantization-Aware Training", ICML 2022, §4; Krishnamoorthi 2018 §3.2 discusses the same mismatch). Quantizers
run in inference mode (their ranges and steps do not move); only the BN layers see training-mode batches.

The lag is worst with Keras' default BN momentum (0.99) and a short QAT: on a CIFAR-10 ResNet with that momentum,
lsq at W2 (no_fold, 2 epochs) went 34-42% -> 52-53% with 50 batches (notes/accuracy.md, 2026-12-05). How many
batches is the scheme's ``bn_reestimation_batches``, or the runner's ``training.bn_reestimation_batches``.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional

from qresearch._compat import keras, tf


def batch_norm_layers(model) -> List[keras.layers.BatchNormalization]:
    """The BatchNormalization layers of ``model`` that keep moving statistics (outside tfmot wrappers and in
    nested models)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += batch_norm_layers(layer)
        elif isinstance(getattr(layer, "layer", None), keras.layers.BatchNormalization):
            found.append(layer.layer)
    return found


@contextlib.contextmanager
def _averaging(layers, step: List[int]):
    """Each BN's ``call`` runs in training mode with momentum ``k/(k+1)`` at the k-th batch (k from 0), which
    makes its moving statistics the running average of the batch statistics seen."""
    originals = []
    for bn in layers:
        originals.append((bn, bn.call, bn.momentum))

        def call(inputs, training=None, _bn=bn, _call=bn.call):
            _bn.momentum = step[0] / (step[0] + 1.0)
            return _call(inputs, training=True)

        bn.call = call
    try:
        yield
    finally:
        for bn, call, momentum in originals:
            bn.call = call
            bn.momentum = momentum


def reestimate_batch_norm(model, x, batch_size: int = 64, batches: int = 50) -> int:
    """Set the moving statistics of every BN layer of ``model`` to the average of its batch statistics over
    the first ``batches`` batches of ``x`` (eager calls; quantizers in inference). Returns the number of BN
    layers re-estimated (0: nothing to do)."""
    layers = batch_norm_layers(model)
    if not layers or batches < 1:
        return 0
    step = [0]
    with _averaging(layers, step):
        for start in range(0, min(len(x), batches * batch_size), batch_size):
            model(tf.convert_to_tensor(x[start:start + batch_size]), training=False)
            step[0] += 1
    return len(layers)


def reestimate_on_dataset(model, ds, batches: int, batch_size: int, seed: int) -> dict:
    """``reestimate_batch_norm`` over ``batches`` batches of training images drawn by ``seed`` (the calibration
    rule, ``ds.train_sample``): what the runner and the accuracy benchmark run after QAT."""
    x, _ = ds.train_sample(batches * batch_size, seed)
    return {"layers": reestimate_batch_norm(model, x, batch_size=batch_size, batches=batches), "batches": batches,
            "images": int(len(x))}


def scheme_batches(model) -> Optional[int]:
    """The batches a ``qresearch.quantize`` model's scheme re-estimates BN over (0 where BN was folded); None for a
    model not made by ``qresearch.quantize`` (tfmot's, a float model)."""
    from qresearch.schemes.spec import reestimated_bn_batches

    info = getattr(model, "qresearch_info", None)
    return reestimated_bn_batches(info["scheme"]) if isinstance(info, dict) and "scheme" in info else None


def reestimate_bn_statistics(model, x, batches: Optional[int] = None, batch_size: int = 64) -> int:
    """After QAT of a ``qresearch.quantize`` model, re-estimate the moving statistics of the BN layers that stay
    over ``x`` (training images), as the runner does: ``batches`` None takes the model's scheme's
    (``bn_reestimation_batches`` where ``bn_folding`` is no_fold, else 0: nothing to do). Returns the number of
    BN layers re-estimated."""
    if batches is None:
        batches = scheme_batches(model)
        if batches is None:
            raise ValueError(f"reestimate_bn_statistics: model {getattr(model, 'name', model)!r} was not made by "
                             "qresearch.quantize (no qresearch_info['scheme'] to read bn_reestimation_batches "
                             "from); pass batches=N")
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise ValueError(f"reestimate_bn_statistics: batches must be an integer >= 0 or None (the scheme's), "
                         f"got {batches!r}")
    return reestimate_batch_norm(model, x, batch_size=batch_size, batches=batches)
