"""Quantizer-parameter training settings: the learning-rate multiplier scales a step's update as a hand
computation says, weight decay skips steps, a warm-up freeze holds them; the settings come from the scheme."""
import numpy as np
import pytest

from qresearch import quantizer_training as qt
from qresearch._compat import keras, tf
from qresearch.config import QuantizerTraining, quantizer_training
from qresearch.errors import ConfigError
from qresearch.quantizers import create


def holder():
    """A layer holding one LSQ step (a quantizer parameter) and one ordinary weight."""
    layer = keras.layers.Layer()
    params = create({"name": "lsq", "bits": 4, "data_init": False, "step_init": 0.5}).build(tf.TensorShape([3]),
                                                                                          "kernel", layer)
    plain = layer.add_weight("plain", shape=(), initializer=keras.initializers.Constant(0.5))
    return layer, params["step"], plain


def apply(optimizer, variables, grads, steps=1):
    for _ in range(steps):
        optimizer.apply_gradients(zip([tf.constant(g, tf.float32) for g in grads], variables))


def test_only_quantizer_parameters_are_found():
    layer, step, plain = holder()
    assert qt.quantizer_variables(layer) == [step]


@pytest.mark.parametrize("k", [3.0, 0.25])
def test_lr_multiplier_scales_one_sgd_and_one_adam_step(k):
    lr, g = 0.1, 0.2
    layer, step, plain = holder()
    opt = qt.configure(keras.optimizers.SGD(lr), layer, QuantizerTraining(lr_multiplier=k))
    apply(opt, [step, plain], [g, g])
    np.testing.assert_allclose(step.numpy(), 0.5 - k * lr * g, rtol=1e-6)
    np.testing.assert_allclose(plain.numpy(), 0.5 - lr * g, rtol=1e-6)

    layer, step, plain = holder()
    b1, b2, eps = 0.9, 0.999, 1e-7
    opt = qt.configure(keras.optimizers.Adam(lr, beta_1=b1, beta_2=b2, epsilon=eps), layer,
                       QuantizerTraining(lr_multiplier=k))
    apply(opt, [step, plain], [g, g])
    # Adam's first step, by hand: m = (1-b1)g, v = (1-b2)g², alpha = lr·sqrt(1-b2)/(1-b1)
    update = lr * np.sqrt(1 - b2) / (1 - b1) * (1 - b1) * g / (np.sqrt((1 - b2) * g * g) + eps)
    np.testing.assert_allclose(step.numpy(), 0.5 - k * update, rtol=1e-5)
    np.testing.assert_allclose(plain.numpy(), 0.5 - update, rtol=1e-5)


def test_multiplier_one_and_no_freeze_leave_the_optimizer_alone():
    layer, step, plain = holder()
    opt = keras.optimizers.Adam(0.1)
    assert type(qt.configure(opt, layer, QuantizerTraining())) is keras.optimizers.Adam


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_decay_skips_steps(optimizer):
    lr, wd = 0.1, 0.5
    layer, step, plain = holder()
    opt = (keras.optimizers.SGD(lr, weight_decay=wd) if optimizer == "sgd"
           else keras.optimizers.AdamW(lr, weight_decay=wd))
    qt.configure(opt, layer, QuantizerTraining())
    apply(opt, [step, plain], [0.0, 0.0])  # zero gradients: only weight decay can move a variable
    np.testing.assert_array_equal(step.numpy(), 0.5)
    np.testing.assert_allclose(plain.numpy(), 0.5 * (1 - lr * wd), rtol=1e-6)
    layer, step, plain = holder()  # quantizer_weight_decay: true puts it back
    opt = keras.optimizers.SGD(lr, weight_decay=wd)
    qt.configure(opt, layer, QuantizerTraining(weight_decay=True))
    apply(opt, [step, plain], [0.0, 0.0])
    np.testing.assert_allclose(step.numpy(), 0.5 * (1 - lr * wd), rtol=1e-6)


def test_freeze_holds_steps_for_n_steps_then_they_move():
    layer, step, plain = holder()
    opt = qt.configure(keras.optimizers.SGD(0.1), layer, QuantizerTraining(freeze_steps=3))
    seen = []
    train = tf.function(lambda: opt.apply_gradients(zip([tf.ones(()), tf.ones(())], [step, plain])))
    for _ in range(5):
        train()
        seen.append((float(step.numpy()), float(plain.numpy())))
    assert [s for s, _ in seen[:3]] == [0.5] * 3
    np.testing.assert_allclose([s for s, _ in seen[3:]], [0.4, 0.3], rtol=1e-6)
    np.testing.assert_allclose([p for _, p in seen], [0.4, 0.3, 0.2, 0.1, 0.0], atol=1e-6)


def test_settings_in_fit():
    """Through Keras fit (a traced train step), with a real quantized layer."""
    from quantizers.conftest import quantize_model, small_cnn, toy_data  # the module pytest loaded (one KernelActivationConfig)

    x, y = toy_data(32)
    model = quantize_model(small_cnn(), {"name": "lsq", "bits": 4}, {"name": "lsq", "bits": 4})
    steps = qt.quantizer_variables(model)
    assert steps and all("step" in v.name for v in steps)
    opt = qt.configure(keras.optimizers.Adam(0.01), model, QuantizerTraining(freeze_steps=2))
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # first step: data init, then held
    start = [v.numpy().copy() for v in steps]
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(start, steps))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(start, steps))


def test_typed_settings_from_the_scheme():
    s = quantizer_training({"quantizer_lr_multiplier": 10, "freeze_quantizer_steps": 5})
    assert s == QuantizerTraining(lr_multiplier=10.0, weight_decay=False, freeze_steps=5)
    assert quantizer_training(None) == QuantizerTraining()
    with pytest.raises(ConfigError, match="quantizer_lr_multiplier"):
        quantizer_training({"quantizer_lr_multiplier": -1})
    with pytest.raises(ConfigError, match="freeze_quantizer_steps"):
        quantizer_training({"freeze_quantizer_steps": 1.5})


def test_hydra_overrides_without_plus():
    from tests.test_config import _compose
    from qresearch import config

    cfg = _compose(["scheme=pact_lsq", "scheme.activations.init=mse", "scheme.weights.init=percentile",
                    "scheme.weights.init_percentile=99.5", "scheme.quantizer_lr_multiplier=10",
                    "scheme.freeze_quantizer_steps=100"])
    exp = config.experiment(cfg)
    assert exp.quantizer_training == QuantizerTraining(lr_multiplier=10.0, freeze_steps=100)
    assert exp.scheme["activations"]["init"] == "mse" and exp.scheme["weights"]["init_percentile"] == 99.5


def _lsq_model(multiplier):
    import qresearch

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    x = keras.layers.Dense(5, activation="relu", name="hidden")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    scheme = {"weights": {"quantizer": "lsq", "bits": 4, "per_channel": True},
              "activations": {"quantizer": "lsq", "bits": 4}, "quantizer_lr_multiplier": multiplier}
    x_cal = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    return qresearch.quantize(model, scheme, calibration_data=x_cal), x_cal


def test_configure_optimizer_gives_an_api_user_the_scheme_s_settings():
    """qresearch.configure_optimizer: a model from qresearch.quantize trains its quantizer parameters at the
    scheme's multiplier × the optimizer's learning rate (one SGD step: the update is k × the plain one), every
    other weight as the plain optimizer moves it."""
    import qresearch

    y = np.arange(64) % 3
    moved = {}
    for name, k, make in (("plain", 0.25, lambda q: keras.optimizers.SGD(0.1)),
                          ("configured", 0.25, lambda q: qresearch.configure_optimizer(keras.optimizers.SGD(0.1), q))):
        q, x = _lsq_model(k)
        q.compile(make(q), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        before = [v.numpy() for v in q.trainable_variables]
        q.train_on_batch(x, y)
        moved[name] = [(v.name, v.numpy() - b, qt.is_quantizer_param(v)) for v, b in zip(q.trainable_variables, before)]
    assert 0 < sum(is_q for _, _, is_q in moved["plain"]) < len(moved["plain"])
    for (name, delta, is_q), (_, got, _) in zip(moved["plain"], moved["configured"]):
        assert np.any(delta != 0), name   # every variable took a step
        expected = 0.25 * delta if is_q else delta
        # float32 rounding of v0 + k·(v1 - v0) and of the differences: a few ulp of values below 1
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7, err_msg=name)
        assert np.abs(delta).min() > 1e-5, name   # so k = 1 would fail the comparison above


def test_configure_optimizer_refuses_what_it_cannot_configure():
    import qresearch

    q, _ = _lsq_model(0.5)
    with pytest.raises(TypeError, match="optimizer instance.*Adam"):
        qresearch.configure_optimizer("adam", q)
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="not made by qresearch.quantize"):
        qresearch.configure_optimizer(keras.optimizers.Adam(), plain)
    assert type(qresearch.configure_optimizer(keras.optimizers.Adam(), _lsq_model(1.0)[0])) is keras.optimizers.Adam


def test_configure_optimizer_works_on_a_saved_and_loaded_model(tmp_path):
    """A QAT model saved and loaded keeps its scheme, so a resumed training gets the same settings."""
    import qresearch

    q, _ = _lsq_model(0.25)
    q.save(str(tmp_path / "qat"))
    again = qresearch.load_model(str(tmp_path / "qat"), compile=False)
    opt = qresearch.configure_optimizer(keras.optimizers.SGD(0.1), again)
    assert type(opt) is not keras.optimizers.SGD and opt._quantizer_settings.lr_multiplier == 0.25
