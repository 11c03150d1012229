"""Every built-in quantizer trains a real tf_keras model inside tfmot's QAT wrappers."""
import numpy as np
import pytest

from .conftest import KernelActivationConfig, built_in_quantizers, quantize_model, small_cnn, toy_data
from qresearch._compat import keras

CASES = {
    "minmax": ({"name": "minmax", "bits": 8, "per_channel": True}, {"name": "minmax", "bits": 8},
               ["kernel_max", "post_activation_max"]),
    "lsq": ({"name": "lsq", "bits": 4, "per_channel": True}, {"name": "lsq", "bits": 4},
            ["kernel_step", "post_activation_step"]),
    "lsq_plus": ({"name": "lsq_plus", "bits": 4, "per_channel": True}, {"name": "lsq_plus", "bits": 4},
                 ["kernel_step", "post_activation_step", "post_activation_offset"]),
    "pact": ({"name": "pact", "bits": 4, "per_channel": True, "alpha_init": 0.1},
             {"name": "pact", "bits": 4, "alpha_init": 0.3, "alpha_decay": 0.01},
             ["kernel_alpha", "post_activation_alpha"]),
    "dorefa": ({"name": "dorefa", "bits": 4, "per_channel": True}, {"name": "dorefa", "bits": 4}, []),
    "pot": ({"name": "pot", "bits": 4, "per_channel": True}, {"name": "pot", "bits": 8},
            ["kernel_max", "post_activation_max"]),
    "a2q": ({"name": "a2q", "bits": 4, "accumulator_bits": 16, "norm_penalty": 1e-3},
            {"name": "minmax", "bits": 8},
            ["kernel_log2_step", "kernel_log2_norm"]),
}


def snapshot(model, fragments):
    return {v.name: v.numpy().copy() for v in model.weights if any(f in v.name for f in fragments)}


def test_every_built_in_has_a_case():
    assert set(CASES) == set(built_in_quantizers())


@pytest.mark.parametrize("name", built_in_quantizers())
def test_trains_inside_tfmot(name):
    if name not in CASES:
        pytest.fail(f"built-in quantizer {name!r} has no case in CASES")
    weight_spec, act_spec, learned = CASES[name]
    x, y = toy_data(64)
    model = quantize_model(small_cnn(transpose=True), weight_spec, act_spec)
    wrapped = [l for l in model.layers if isinstance(getattr(l, "quantize_config", None), KernelActivationConfig)]
    assert [w.layer.name for w in wrapped] == ["conv", "dw", "convt", "conv1d", "logits"]
    if act_spec.get("alpha_decay"):  # PACT's L2 on α reaches the training loss through tfmot's wrapper
        assert len(model.losses) == 4  # one α per ReLU layer
    model.compile(keras.optimizers.Adam(0.005), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    first = model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0).history["loss"][0]  # data-init step
    before = snapshot(model, learned + ["kernel:0", "depthwise_kernel:0"])
    losses = model.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=False).history["loss"]
    after = snapshot(model, learned + ["kernel:0", "depthwise_kernel:0"])
    assert losses[-1] < first and losses[-1] < losses[0], losses
    for fragment in learned + ["kernel:0"]:
        names = [n for n in before if fragment in n]
        assert names, fragment
        assert any(not np.array_equal(before[n], after[n]) for n in names), fragment
    for n, v in after.items():
        assert np.isfinite(v).all(), n
    out = model(x, training=False).numpy()  # inference path (FakeQuant where TFLite-convertible)
    assert np.isfinite(out).all() and out.std() > 0
