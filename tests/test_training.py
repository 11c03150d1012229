"""The float-baseline cache: keyed by the data as loaded; no non-finite weights in or out."""
import numpy as np
import pytest

import dataclasses

from qresearch import data, keras, models, training
from qresearch.config import PhaseConfig

PHASE = PhaseConfig(epochs=1, batch_size=64, learning_rate=1e-3)


def _baseline(ds, cache_dir, phase=PHASE, key="k"):
    def build():
        keras.utils.set_random_seed(0)
        return models.build_model({"name": "mlp", "hidden": [16]}, ds.input_shape, ds.num_classes)

    return training.float_baseline(build, lambda m: training.fit(m, ds, phase, "float", 0, verbose=0), key,
                                   cache_dir)


def test_baseline_key_includes_the_data_fingerprint():
    args = ({"name": "digits", "data_dir": "/a"}, {"name": "mlp"}, PHASE, 0)
    assert training.baseline_key(*args, data_fingerprint="f1") == training.baseline_key(*args, data_fingerprint="f1")
    assert training.baseline_key(*args, data_fingerprint="f1") != training.baseline_key(*args, data_fingerprint="f2")


def test_training_to_nan_weights_is_refused_and_not_cached(tmp_path):
    # A NaN pixel that bypassed load_dataset's check (a Dataset built by hand): the loss stays
    # finite, so the NaN guard is silent, but the first layer's weights for that pixel become NaN.
    ds = data.load_digits({})
    ds.x_train[5, 3, 4, 0] = np.nan
    with pytest.raises(training.NonFiniteWeightsError) as e:
        _baseline(ds, str(tmp_path))
    assert "dense_0/kernel" in str(e.value) and "not cached" in str(e.value) and "Fix:" in str(e.value)
    assert not [p for p in (tmp_path / "float").iterdir() if p.is_dir()]


def test_a_non_finite_cache_entry_is_discarded_and_retrained(tmp_path, caplog):
    ds = data.load_dataset({"name": "digits", "train_samples": 256})
    phase = dataclasses.replace(PHASE, steps_per_epoch=2)
    model, info = _baseline(ds, str(tmp_path), phase)
    assert info["cache"] == "miss"
    weights = [w.copy() for w in model.get_weights()]
    weights[0][0, 0] = np.nan  # a poisoned entry, as older code could write
    model.set_weights(weights)
    model.save_weights(info["path"] + "/weights.h5")
    with caplog.at_level("WARNING", logger="qresearch.training"):
        model2, info2 = _baseline(ds, str(tmp_path), phase)
    assert info2["cache"] == "miss" and "non-finite weights" in caplog.text and "discarding" in caplog.text
    assert not training.nonfinite_weights(model2)
    assert _baseline(ds, str(tmp_path), phase)[1]["cache"] == "hit"
