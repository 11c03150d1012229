"""Training variables created at compile time (qresearch/_prebuild.py): fit traces its step once, same numbers."""
import numpy as np
import pytest

import qresearch
from qresearch._compat import keras, tf
from qresearch.config import Optimizer, PhaseConfig
from qresearch.training import compile_model


def _qat_model(x):
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(4, 3, activation="relu")(inp)
    model = keras.Model(inp, L.Dense(10)(L.Flatten()(h)))
    return qresearch.quantize(model, "lsq", calibration_data=x[:32])


def _fit(q, data):
    history = q.fit(*data, epochs=2, shuffle=False, verbose=0).history
    return q.train_function.experimental_get_tracing_count(), history, q.get_weights()


@pytest.mark.parametrize("feed", ["arrays", "dataset"])
def test_a_qat_model_traces_its_step_once_with_the_same_numbers(feed):
    rng = np.random.default_rng(0)
    x, y = rng.random((48, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 48)
    data = (x, y, 16) if feed == "arrays" else (tf.data.Dataset.from_tensor_slices((x, y)).batch(16),)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    q = _qat_model(x)
    q.compile(keras.optimizers.Adam(1e-2), loss, metrics=["accuracy"])
    assert q.optimizer._built
    traces, history, weights = _fit(q, data)
    assert q.compiled_metrics.built

    reference = _qat_model(x)   # Keras' own compile and fit: the variables are created in the first trace
    keras.Model.compile(reference, keras.optimizers.Adam(1e-2), loss, metrics=["accuracy"])
    ref_history = keras.Model.fit(reference, *data, epochs=2, shuffle=False, verbose=0).history
    ref_traces, ref_weights = reference.train_function.experimental_get_tracing_count(), reference.get_weights()

    assert (traces, ref_traces) == (1, 2)
    assert _metric_functions(q) == _metric_functions(reference) == ["sparse_categorical_accuracy"]
    assert history == ref_history
    assert len(weights) == len(ref_weights)
    for a, b in zip(weights, ref_weights):
        np.testing.assert_array_equal(a, b)


def _metric_functions(model):
    return [m._fn.__name__ for m in model.compiled_metrics.metrics]


def test_the_runner_creates_a_float_models_training_variables_at_compile():
    L = keras.layers
    rng = np.random.default_rng(1)
    x, y = rng.random((8, 4), dtype=np.float32), rng.integers(0, 3, 8)
    phase = PhaseConfig(optimizer=Optimizer.sgd, learning_rate=0.1, weight_decay=0.01)
    models = []
    for build in (True, False):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
        if build:
            compile_model(model, phase, steps_per_epoch=2)
            assert model.optimizer._built and model.compiled_metrics.built
        else:   # the same compile without the prebuild: Keras creates them in fit's first trace
            keras.Model.compile(model, optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.01),
                                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                metrics=["accuracy"])
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0).history
        models.append((model.train_function.experimental_get_tracing_count(), _metric_functions(model),
                       history, model.get_weights()))
    (traces, metrics, history, weights), (ref_traces, ref_metrics, ref_history, ref_weights) = models
    assert (traces, ref_traces) == (1, 2)
    assert metrics == ref_metrics == ["sparse_categorical_accuracy"]   # Keras' pick for class indices
    assert history == ref_history
    for a, b in zip(weights, ref_weights):
        np.testing.assert_array_equal(a, b)


def test_evaluate_before_any_fit_traces_once_with_keras_numbers():
    rng = np.random.default_rng(2)
    x, y = rng.random((32, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    q = _qat_model(x)
    q.compile(keras.optimizers.Adam(1e-2), loss, metrics=["accuracy"])
    mine = q.evaluate(x, y, batch_size=16, verbose=0)
    reference = _qat_model(x)
    keras.Model.compile(reference, keras.optimizers.Adam(1e-2), loss, metrics=["accuracy"])
    theirs = keras.Model.evaluate(reference, x, y, batch_size=16, verbose=0)
    assert (q.test_function.experimental_get_tracing_count(),
            reference.test_function.experimental_get_tracing_count()) == (1, 2)
    assert mine == theirs


def test_labels_unknown_before_iterating_are_left_to_keras():
    """A generator, and a dataset with ragged labels: Keras creates the metrics in the first trace, as before."""
    rng = np.random.default_rng(3)
    x, y = rng.random((32, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 32)
    q = _qat_model(x)
    q.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
    q.fit((batch for batch in [(x[:16], y[:16]), (x[16:], y[16:])]), steps_per_epoch=2, verbose=0)
    assert q.compiled_metrics.built and q.train_function.experimental_get_tracing_count() == 2

    from qresearch._prebuild import build_metrics_for
    ragged = tf.data.Dataset.from_tensor_slices((x, tf.ragged.constant([[1]] * 32))).batch(16)
    fresh = _qat_model(x)
    fresh.compile(keras.optimizers.Adam(1e-2), "mse", metrics=["mae"])
    build_metrics_for(fresh, ragged, None)
    assert not fresh.compiled_metrics.built
