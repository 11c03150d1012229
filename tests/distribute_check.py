"""Two logical CPU devices: float + QAT under ``training.strategy=mirrored`` against one device.

Run as a script in a fresh process (``tests/test_distribute.py`` does): the CPU must be split into
logical devices before TensorFlow initialises them. Prints one JSON line: per (scheme, strategy) the
replica count, the QAT history, the float/PTQ/QAT test loss and accuracy, and the quantizer variables.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

from types import SimpleNamespace

import numpy as np
import tensorflow as tf
from hydra import compose, initialize_config_dir

from qresearch import config, distribute, stages
from qresearch._compat import keras
from qresearch.quantizers.base import is_quantizer_variable

# what a job with training.devices=[/cpu:0,/cpu:1] does first (stages.setup_tf): split the CPU in two
distribute.configure_devices(SimpleNamespace(strategy="mirrored", devices=["/cpu:0", "/cpu:1"]))
assert len(tf.config.list_logical_devices("CPU")) == 2

CONF = Path(__file__).resolve().parents[1] / "conf"
# No BatchNorm (per replica in tf_keras), a global batch every step divides evenly (256 = 4 x 64), SGD
# for QAT (Adam's normalised step turns float-rounding noise in a near-zero LSQ step gradient into a
# full learning-rate step), so one device and two replicas compute the same numbers up to summation order.
COMMON = ["dataset=digits", "dataset.train_samples=256", "model=mlp", "model.hidden=[32]", "training=fast",
          "training.float.epochs=2", "training.float.batch_size=64", "training.qat.epochs=2",
          "training.qat.batch_size=64", "training.qat.optimizer=sgd", "training.qat.learning_rate=0.05",
          "training.qat.schedule=constant", "training.calibration_samples=64", "training.timing_steps=1",
          "logger.mode=disabled"]


def loss_acc(model, ds):
    x, y = ds.test_arrays()
    logits = model.predict(x, batch_size=256, verbose=0)
    loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
    return loss, int(np.sum(np.argmax(logits, -1) == y))


def one(scheme: str, strategy: str, calibrate: bool):
    """``scheme``: a preset name, then ``+``-separated overrides (``tflite_int8+bits=2``)."""
    scheme, *extra = scheme.split("+")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        devices = "training.devices=[/cpu:0,/cpu:1]" if strategy == "mirrored" else "training.devices=null"
        cfg = compose(config_name="config",
                      overrides=COMMON + [f"scheme={scheme}", *extra, f"training.strategy={strategy}", devices,
                                          f"paths.cache_dir={CACHE}/{strategy}"])  # one float baseline each
    exp = config.experiment(cfg)
    config.validate(cfg)
    stages.setup_tf(exp)
    _, spec, _ = stages.check_scheme(exp)
    ds = stages.load_data(exp)
    float_model, facts = stages.float_baseline(exp, ds, None)
    out = {"replicas": facts.get("replicas", 1),
           "float": loss_acc(float_model, ds), "float_replicas": _replicas(float_model)}
    if calibrate:
        qat_model = stages._quantize(exp, float_model, ds, spec, None)
    else:  # data init inside the first training step, under the replica context
        import qresearch
        with stages.scope(exp):
            qat_model = qresearch.quantize(float_model, spec, constrained=True)
    out["ptq"] = loss_acc(qat_model, ds)
    fit = stages.qat(exp, qat_model, ds, None)
    out.update(qat=loss_acc(qat_model, ds), history=fit["history"], qat_replicas=_replicas(qat_model),
               quantizer_vars={v.name: np.asarray(v.numpy()).ravel().tolist()
                               for v in qat_model.weights if is_quantizer_variable(v)},
               copies_differ=_copies_differ(qat_model))
    return out


def mse_search():
    """A 2-bit min-max activation quantizer with ``range_rule: mse`` whose two replicas see different halves of one
    batch (an outlier and a bulk; a search on each half alone picks 0.25 and 0.4 of the batch's range), and the same
    quantizer on one device fed the whole batch: the stored fraction and range of each."""
    from qresearch.quantizers import create

    halves = [np.concatenate([[6.0], np.linspace(-0.5, 1.0, 199)]).astype(np.float32),
              np.linspace(-1.0, 3.0, 200).astype(np.float32)]
    spec = {"name": "minmax", "bits": 2, "range_rule": "mse"}
    out = {}
    for where in ("one", "two"):
        # the runs' own strategy object: a second MirroredStrategy in one process reuses collective instance keys
        strategy = distribute.make("mirrored", ["/cpu:0", "/cpu:1"]) if where == "two" else tf.distribute.get_strategy()
        with strategy.scope():
            q = create(spec, role="activations")
            w = q.build(None, "act", keras.layers.Layer())
        if where == "two":
            batch = strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant(halves[ctx.replica_id_in_sync_group]))
            strategy.run(tf.function(lambda x: q(x, True, w)), args=(batch,))
        else:
            q(tf.constant(np.concatenate(halves)), True, w)
        out[where] = {k: [np.asarray(c.numpy()).tolist() for c in getattr(w[k], "values", [w[k]])]
                      for k in ("fraction", "min", "max")}
    return out


def _copies_differ(model):
    """Names of mirrored variables whose per-device copies hold different values (must be none)."""
    bad = []
    for v in model.weights:
        copies = [np.asarray(c.numpy()) for c in getattr(v, "values", [v])]
        if any(not np.array_equal(copies[0], c) for c in copies[1:]):
            bad.append(v.name)
    return bad


def _replicas(model) -> int:
    return int(model.distribute_strategy.num_replicas_in_sync)


if __name__ == "__main__":
    CACHE = tempfile.mkdtemp(prefix="qresearch-distribute-")
    cases = [a.split(":") for a in sys.argv[1:]] or [["minmax_nbit", "1"], ["lsq", "0"], ["tflite_int8+bits=2", "1"]]
    try:
        result = {f"{s}:{c}:{st}": one(s, st, c == "1") for s, c in cases for st in ("none", "mirrored")}
        result["mse_search"] = mse_search()
    finally:
        shutil.rmtree(CACHE, ignore_errors=True)
    print("RESULT " + json.dumps(result))
