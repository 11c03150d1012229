"""Every model in models.py, with every preset scheme: quantize, calibrate, train a few steps."""
import numpy as np
import pytest

import qresearch
from qresearch import keras, schemes

from . import models as M
from .helpers import compute_layer_names, wrappers

PRESETS = ["tflite_int8", "minmax_nbit", "lsq", "lsq_plus", "pact_lsq", "dorefa", "pot"]


@pytest.fixture(scope="module", autouse=True)
def custom_layer_registered():
    schemes.register_layer(M.ScaledDense, weights=["kernel"], activations=["activation"], quantize_output=True)


def _grid():
    """Every (model, preset); the fast suite runs one diagonal (each model and each preset at least once), the
    rest is marked ``slow`` (``make test-slow``, CI)."""
    models = list(M.BUILDERS)
    diagonal = {(models[i % len(models)], PRESETS[i % len(PRESETS)]) for i in range(max(len(models), len(PRESETS)))}
    return [pytest.param(m, p, marks=() if (m, p) in diagonal else pytest.mark.slow)
            for m in models for p in PRESETS]


@pytest.mark.parametrize("model_name, preset", _grid())
def test_preset_quantizes_and_trains(model_name, preset):
    keras.utils.set_random_seed(0)
    model = M.BUILDERS[model_name]()
    x, y = M.data(16)
    q = qresearch.quantize(model, preset, calibration_data=x[:16])
    spec = schemes.get(preset)

    # every compute layer's weights carry the scheme's weight quantizer
    ws = wrappers(q)
    for name in compute_layer_names(model):
        assert name in ws, f"{name} not quantized with {preset}"
        cfg = ws[name].quantize_config
        assert cfg.weights, f"{name}: no weight quantizer"
        for quantizer in cfg.weights.values():
            assert quantizer.registry_name == spec.weights["quantizer"]
    assert not any(isinstance(l, keras.Model) for l in q.layers)  # nested models are flattened

    variables = list(q.trainable_weights)
    before = [v.numpy().copy() for v in variables]
    M.compile_model(q, from_logits=model_name != "concat_multiply")
    q.run_eagerly = True  # a few tiny steps: eager is faster than tracing
    hist = q.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(hist.history["loss"][0])
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)), "no weight changed"
    report = schemes.describe(q)
    assert report["memory"]["quantized_bits"] < report["memory"]["float32_bits"]


@pytest.mark.parametrize("model_name, preset", [("mobilenet_like", "lsq_plus"), ("concat_multiply", "pact_lsq")])
def test_compiled_training(model_name, preset):
    """Graph-mode (tf.function) training, as fit runs by default."""
    keras.utils.set_random_seed(0)
    x, y = M.data(32)
    q = qresearch.quantize(M.BUILDERS[model_name](), preset, calibration_data=x[:16])
    M.compile_model(q, from_logits=model_name != "concat_multiply")
    hist = q.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert all(np.isfinite(hist.history["loss"]))
    assert np.isfinite(q.evaluate(x, y, verbose=0)[0])


@pytest.mark.parametrize("bits, rule, init", [(2, "mse", "mse"), (4, "mse", "mse"), (5, "max", "paper")])
def test_tflite_int8_searches_ranges_at_4_bits_and_below_only(bits, rule, init):
    """The preset's ``low_bits``: at 2-4 bits MSE weight ranges, and MSE activation ranges from an MSE start; 5 bits
    and the first/last layers' 8 bits keep tfmot's max ranges (notes/accuracy.md, twenty-fourth, twenty-eighth and
    thirty-fifth sessions)."""
    keras.utils.set_random_seed(0)
    model = M.BUILDERS["resnet_like"]()
    x, _ = M.data(16)
    spec = schemes.get("tflite_int8").to_dict()
    for role in ("weights", "activations"):
        spec[role]["bits"] = bits
    spec["first_last_bits"] = 8
    q = qresearch.quantize(model, spec, calibration_data=x)
    seen = {}
    for name, w in wrappers(q).items():
        for quantizer in w.quantize_config.weights.values():
            seen.setdefault(quantizer.bits, set()).add(("weights", quantizer.range_rule))
        for quantizer in w._output_quantizers:
            seen.setdefault(quantizer.bits, set()).add(("activations", quantizer.init, quantizer.range_rule))
    assert seen[8] == {("weights", "max"), ("activations", "paper", "max")}, seen
    assert seen[bits] == {("weights", rule), ("activations", init, rule)}, seen
