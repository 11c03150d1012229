"""Resumable phases: a run killed mid-epoch resumes from its last checkpoint with the same result."""
import json
import math
import os

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from qresearch import data, models, training
from qresearch._compat import keras
from qresearch.config import phase_config
from qresearch.paths import CONF_DIR
from qresearch.run import run_job


class Killed(RuntimeError):
    pass


class KillAfter(keras.callbacks.Callback):
    """Stands for a kill: raises after ``n`` training batches."""

    def __init__(self, n):
        super().__init__()
        self.n, self.seen = n, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.n:
            raise Killed(f"killed after {self.n} batches")


def _model(ds):
    keras.utils.set_random_seed(0)
    return models.build_model({"name": "mlp", "hidden": [16]}, ds.input_shape, ds.num_classes)


def test_a_phase_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    ds = data.load_dataset({"name": "digits", "train_samples": 256, "test_samples": 100, "augment": True})
    phase = phase_config({"epochs": 3, "batch_size": 32, "learning_rate": 0.003, "schedule": "cosine",
                          "checkpoint_every": 3})  # 8 batches an epoch
    whole = _model(ds)
    ref = training.fit(whole, ds, phase, "float", 0, verbose=0, checkpoint_dir=str(tmp_path / "a"), checkpoint_id="k")
    assert not (tmp_path / "a").exists()  # removed once the phase completed
    assert ref["steps"] == 24 and len(ref["history"]["loss"]) == 3

    with pytest.raises(Killed):
        training.fit(_model(ds), ds, phase, "float", 0, verbose=0, checkpoint_dir=str(tmp_path / "b"),
                     checkpoint_id="k", callbacks=[KillAfter(13)])  # epoch 2, batch 5
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert (state["epoch"], state["batch"]) == (1, 3) and len(state["history"]["loss"]) == 1

    resumed = _model(ds)  # a fresh process would rebuild the model the same way
    out = training.fit(resumed, ds, phase, "float", 0, verbose=0, checkpoint_dir=str(tmp_path / "b"), checkpoint_id="k")
    assert out["steps"] == 24 - 11  # the batches after the checkpoint only
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.optimizer.iterations) == int(whole.optimizer.iterations) == 24
    h, r = ref["history"]["loss"], out["history"]["loss"]
    assert r[0] == h[0] and r[2] == h[2]  # the resumed epoch's mean covers its last 5 batches only

    # a checkpoint of another run (another key) is not restored
    with pytest.raises(Killed):
        training.fit(_model(ds), ds, phase, "float", 0, verbose=0, checkpoint_dir=str(tmp_path / "c"),
                     checkpoint_id="k", callbacks=[KillAfter(13)])
    other = _model(ds)
    assert training.fit(other, ds, phase, "float", 0, verbose=0, checkpoint_dir=str(tmp_path / "c"),
                        checkpoint_id="other")["steps"] == 24


FAST = ["dataset=digits", "dataset.train_samples=256", "dataset.test_samples=100", "model=mlp", "model.hidden=[16]",
        "training=fast", "training.float.epochs=8", "training.float.learning_rate=0.01", "training.qat.epochs=3", "training.qat.batch_size=32", "training.qat.checkpoint_every=2",
        "logger=disabled", "scheme=lsq", "bits=4", "~hardware"]


def _run(tmp_path, out, cache):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=FAST + [f"paths.output_dir={tmp_path / out}",
                                                                f"paths.cache_dir={tmp_path / cache}"])
    acc = run_job(cfg)
    files = sorted((tmp_path / out / "runs").rglob("result.json"), key=os.path.getmtime)
    return acc, json.loads(files[-1].read_text())


def test_a_qat_run_killed_mid_epoch_resumes_through_the_runner(tmp_path, monkeypatch):
    acc_ref, ref = _run(tmp_path, "ref", "cache_ref")
    assert ref["status"] == "completed"

    class KillingGuard(training.NaNGuard):  # QAT killed in its 11th batch (epoch 2), NaNGuard running before the saver
        def __init__(self, phase):
            super().__init__(phase)
            self.kill = KillAfter(11) if phase == "qat" else None

        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            if self.kill:
                self.kill.on_train_batch_end(batch, logs)

    monkeypatch.setattr(training, "NaNGuard", KillingGuard)
    acc, killed = _run(tmp_path, "run", "cache")
    assert math.isnan(acc) and killed["status"] == "failed" and killed["error"]["stage"] == "qat"
    (state,) = (tmp_path / "cache" / "checkpoints" / "qat").glob("*/state.json")
    assert (json.loads(state.read_text())["epoch"], json.loads(state.read_text())["batch"]) == (1, 2)

    monkeypatch.undo()
    acc2, resumed = _run(tmp_path, "run", "cache")  # started again: float from the cache, QAT from the checkpoint
    assert resumed["status"] == "completed" and resumed["float_baseline"]["cache"] == "hit"
    assert acc2 == acc_ref and resumed["metrics"]["qat_accuracy"] == ref["metrics"]["qat_accuracy"]
    assert resumed["qat_history"]["loss"][-1] == ref["qat_history"]["loss"][-1]
    assert not any((tmp_path / "cache" / "checkpoints" / "qat").iterdir())
