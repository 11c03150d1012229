"""Plugins: a third-party quantizer written only against the public API, and
plugins found through the ``qresearch.plugins`` entry-point group."""
import logging
import sys
import textwrap

import numpy as np
import pytest

import qresearch.registry as registry_module
from .conftest import KernelActivationConfig, load_qat_model, quantize_model, small_cnn, toy_data
from qresearch._compat import keras, tf
from qresearch.quantizers import Quantizer, create, get, names, register
from qresearch.quantizers.registry import QUANTIZERS


class LearnedTernary(Quantizer):
    """A user's plugin: ternary weights {-a, 0, a} with a learned a (TTQ-like, one scale).

    Uses nothing but tf and the public Quantizer API (add_variable, broadcast).
    """

    def __init__(self, bits=2, symmetric=True, narrow_range=True, per_channel=False, axis=None, signed=True,
                 scale_format="float32", scale_init=0.1):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        self.scale_init = float(scale_init)

    def build_params(self, shape, name, layer):
        return {"scale": self.add_variable(layer, f"{name}_scale", shape, self.scale_init, trainable=True)}

    def quantize(self, x, training, weights, axes):
        a = self.broadcast(tf.maximum(weights["scale"], 1e-6), x, axes)
        t = tf.clip_by_value(x / a, -1.0, 1.0)
        t = t + tf.stop_gradient(tf.round(t) - t)
        return t * a


@pytest.fixture
def ternary_plugin():
    register("ext_ternary")(LearnedTernary)
    yield "ext_ternary"
    QUANTIZERS._items.pop("ext_ternary", None)


def ours(model):
    """The wrappers carrying the test QuantizeConfig (tfmot wraps Reshape/Flatten too)."""
    return [l for l in model.layers if isinstance(getattr(l, "quantize_config", None), KernelActivationConfig)]


def fit_and_reload(tmp_path, weight_spec, activation_spec):
    x, y = toy_data(48)
    model = quantize_model(small_cnn(), weight_spec, activation_spec)
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    path = str(tmp_path / "model.h5")  # tfmot's QuantizeLayer does not load from the .keras format
    model.save(path)
    loaded = load_qat_model(path)
    return model, loaded, history.history["loss"], x


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_third_party_plugin_works_inside_tfmot_like_a_built_in(ternary_plugin, tmp_path):
    assert ternary_plugin in names() and get(ternary_plugin) is LearnedTernary
    assert create({"name": ternary_plugin, "scale_init": 0.2}, role="weights").scale_init == 0.2
    for weight_spec in ({"name": ternary_plugin, "per_channel": True}, {"name": "lsq", "bits": 2, "per_channel": True}):
        model, loaded, losses, x = fit_and_reload(tmp_path, weight_spec, {"name": "lsq", "bits": 4})
        assert losses[-1] < losses[0]
        wrappers = ours(model)
        assert [w.layer.name for w in wrappers] == ["conv", "dw", "conv1d", "logits"]
        q = wrappers[0].quantize_config.weight_quantizer
        assert type(q) is get(weight_spec["name"])
        # Every dense/conv kernel is on the plugin's grid after training.
        conv = wrappers[0]
        scale_name = "kernel_scale" if weight_spec["name"] == ternary_plugin else "kernel_step"
        scale = [v for v in conv.weights if scale_name in v.name][0].numpy()
        kernel, _, q_vars = conv._weight_vars[0]  # (float kernel, quantizer, its variables)
        qk = q(tf.convert_to_tensor(kernel), False, q_vars).numpy()
        levels = np.unique(np.round(qk / scale, 4))
        assert len(levels) <= 2 ** weight_spec.get("bits", 2)
        # Saved and loaded with its config and learnt variables.
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
        assert ours(loaded)[0].quantize_config.weight_quantizer == q


PLUGIN_SOURCE = '''
from qresearch._compat import tf
from qresearch.quantizers import Quantizer, register


@register("ep_halver")
class Halver(Quantizer):
    def quantize(self, x, training, weights, axes):
        return tf.round(x * 2.0) / 2.0


def setup():
    @register("ep_from_callable")
    class FromCallable(Quantizer):
        def quantize(self, x, training, weights, axes):
            return x
'''


@pytest.fixture
def installed_plugin(tmp_path):
    """A real (tiny) installed distribution: a module plus a *.dist-info with entry points."""
    (tmp_path / "qr_ep_plugin.py").write_text(PLUGIN_SOURCE)
    info = tmp_path / "qr_ep_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qr-ep-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [qresearch.plugins]
        halver = qr_ep_plugin
        from_callable = qr_ep_plugin:setup
        broken = qr_ep_no_such_module
        """))
    sys.path.insert(0, str(tmp_path))
    was_loaded = registry_module._entry_points_loaded
    registry_module._entry_points_loaded = False
    yield
    sys.path.remove(str(tmp_path))
    sys.modules.pop("qr_ep_plugin", None)
    for name in ("ep_halver", "ep_from_callable"):
        QUANTIZERS._items.pop(name, None)
    registry_module._entry_points_loaded = was_loaded


def test_entry_point_plugins_load_on_first_use(installed_plugin, caplog):
    assert "ep_halver" not in QUANTIZERS._items  # nothing imported yet
    with caplog.at_level(logging.WARNING, logger="qresearch.registry"):
        q = create("ep_halver")
    assert type(q).__module__ == "qr_ep_plugin"
    np.testing.assert_array_equal(q(tf.constant([0.2, 0.3, -1.1]), True, {}).numpy(), [0.0, 0.5, -1.0])
    assert "ep_from_callable" in names()  # a callable entry point is called
    # A broken plugin is reported and skipped; the others still load.
    assert any("broken" in r.getMessage() for r in caplog.records)
    assert registry_module._entry_points_loaded
