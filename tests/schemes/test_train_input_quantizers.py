"""``train_input_quantizers``: a model input's learned quantizer parameters train with the model (true, a scheme
dict's default), keep the values calibration gave them (false), in which case the first layer's input gradient,
needed by them alone, is not computed, or train only where that input is quantized below 8 bits
("below_8_bits", the learned presets'); every other quantizer trains either way."""
import numpy as np
import pytest

import qresearch
from qresearch._compat import keras, tf
from qresearch.errors import ConfigError

from .helpers import input_quantizers

LSQ4 = {"weights": {"quantizer": "lsq", "bits": 4}, "activations": {"quantizer": "lsq", "bits": 4, "init": "max"}}


def _model():
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(3, name="dense")(x))


def _data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, 3, n).astype("int32")


def _quantized(train_inputs, **scheme):
    x, _ = _data()
    return qresearch.quantize(_model(), dict(LSQ4, train_input_quantizers=train_inputs, **scheme), calibration_data=x)


def _step_values(q):  # the learned steps (not their "initialized" flags, not the optimizer's step counters)
    return {v.name: v.numpy().copy() for v in q.variables
            if v.name.endswith("step:0") and not v.name.endswith("optimizer_step:0")}


def _train_one_step(q):
    x, y = _data()
    q.compile(optimizer=keras.optimizers.Adam(1e-2),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x, y, batch_size=32, epochs=1, verbose=0)


# (setting, first_last_bits: the model input's width is 8 with 8, else the scheme's 4) -> whether its step trains
CASES = [(True, None, True), (False, None, False), ("below_8_bits", None, True), ("below_8_bits", 8, False),
         (True, 8, True)]


@pytest.mark.parametrize("setting, first_last_bits, trains", CASES)
def test_the_input_step_trains_only_if_asked_and_the_others_train_either_way(setting, first_last_bits, trains):
    q = _quantized(setting, first_last_bits=first_last_bits)
    layer, = input_quantizers(q)
    assert layer.quantizer.bits == (first_last_bits or 4)
    input_steps = {v.name for v in layer.weights if "step" in v.name}
    assert input_steps and bool(layer.trainable_weights) == trains
    before = _step_values(q)
    _train_one_step(q)
    after = _step_values(q)
    moved = {name for name in before if not np.array_equal(before[name], after[name])}
    assert bool(input_steps & moved) == trains
    assert moved - input_steps == set(before) - input_steps  # the conv's and the dense's steps all moved


@pytest.mark.parametrize("train_inputs, first_last_bits, backprops",
                         [(True, None, 1), (False, None, 0), ("below_8_bits", 8, 0)])
def test_a_frozen_input_step_drops_the_first_layers_input_gradient(train_inputs, first_last_bits, backprops):
    q = _quantized(train_inputs, first_last_bits=first_last_bits)
    x, y = _data()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def grads(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, q(x, training=True))
        return tape.gradient(loss, q.trainable_variables)

    graph = grads.get_concrete_function(tf.constant(x), tf.constant(y)).graph
    # TF's Conv2D gradient always builds its input gradient; unconsumed, it is pruned before it runs
    used = [op for op in graph.get_operations()
            if op.type == "Conv2DBackpropInput" and any(o.consumers() for o in op.outputs)]
    assert len(used) == backprops


@pytest.mark.parametrize("value", ["no", 1, "below_4_bits"])
def test_another_value_is_refused_with_the_key_and_the_choices_named(value):
    with pytest.raises(ConfigError, match="train_input_quantizers.*true, false or 'below_8_bits'"):
        qresearch.quantize(_model(), dict(LSQ4, train_input_quantizers=value))


def _model_input_quantizer(q):  # the image's (under quantize_ops: inputs the dense's input has one too)
    layer, = [layer for layer in input_quantizers(q) if layer.name == "quantize_image"]
    return layer


@pytest.mark.parametrize("preset", ["lsq", "lsq_plus", "pact_lsq"])
def test_the_learned_presets_keep_an_8_bit_model_inputs_step_calibrated(preset):
    x, _ = _data()
    q = qresearch.quantize(_model(), preset, calibration_data=x)  # first/last layers at 8 bits
    layer = _model_input_quantizer(q)
    assert layer.quantizer.bits == 8 and layer.weights and not layer.trainable_weights
    assert all(other.trainable_weights for other in input_quantizers(q) if other is not layer)
    q4 = qresearch.quantize(_model(), dict(qresearch.schemes.get(preset).to_dict(), first_last_bits=None),
                            calibration_data=x)
    layer = _model_input_quantizer(q4)
    assert layer.quantizer.bits == 4 and layer.trainable_weights


def test_describe_says_which_input_quantizer_does_not_train():
    from qresearch.schemes.describe import describe

    x, _ = _data()
    rows = {r["name"]: r for r in describe(qresearch.quantize(_model(), "lsq", calibration_data=x))["layers"]}
    assert rows["quantize_image"]["output"].get("fixed") is True
    assert not any(r["output"].get("fixed") for name, r in rows.items()
                   if r["kind"] == "input" and name != "quantize_image")
    assert "lsq8 (not trained)" in str(describe(qresearch.quantize(_model(), "lsq", calibration_data=x)))
