"""Save, load and resume QAT models with built-in and plugin quantizers, without quantize_scope."""
import os

import numpy as np
import pytest

import qresearch
from qresearch import keras, schemes, tf
from qresearch.errors import ConfigError
from qresearch.quantizers import Quantizer, ops
from qresearch.quantizers import register as register_quantizer
from qresearch.schemes import QuantizeInput, QuantizeWrapper

from . import models as M

X, Y = M.data(64)
BATCHES = [(X[i:i + 16], Y[i:i + 16]) for i in range(0, 64, 16)]


@pytest.fixture(autouse=True)
def seeded():
    keras.utils.set_random_seed(0)
    schemes.register_layer(M.ScaledDense, weights=["kernel"], activations=["activation"], quantize_output=True)


def _qat(builder, scheme):
    keras.utils.set_random_seed(0)
    q = qresearch.quantize(builder(), scheme, calibration_data=X[:32])
    M.compile_model(q)
    q.run_eagerly = True  # tiny steps: eager is faster than tracing, and as deterministic
    return q


def _train(model, batches):
    return [model.train_on_batch(x, y)[0] for x, y in batches]


def _assert_same_state(a, b):
    assert len(a.weights) == len(b.weights)
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_array_equal(u.numpy(), v.numpy(), err_msg=u.name)


@pytest.mark.parametrize("builder, scheme", [
    (M.mobilenet_like, "lsq"), (M.custom_layer_model, "pact_lsq"),
    pytest.param(M.concat_multiply, "lsq_plus", marks=pytest.mark.slow)])
def test_savedmodel_round_trip_and_exact_resume(tmp_path, builder, scheme):
    """Train N steps, save, load, train M more == train N+M without interruption (same seed)."""
    q = _qat(builder, scheme)
    _train(q, BATCHES[:2])
    path = str(tmp_path / "qat")
    q.save(path)
    loaded = qresearch.load_model(path)
    loaded.run_eagerly = True
    assert type(loaded).__name__ == "QATModel"
    assert sum(isinstance(l, QuantizeWrapper) for l in loaded.layers) == sum(
        isinstance(l, QuantizeWrapper) for l in q.layers)
    assert any(isinstance(l, QuantizeInput) for l in loaded.layers)
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), q.predict(X, verbose=0))
    _assert_same_state(q, loaded)
    assert loaded.qresearch_info["scheme"]["weights"]["quantizer"] == schemes.get(scheme).weights["quantizer"]
    # plain keras.models.load_model (no quantize_scope, no custom_objects) rebuilds the real classes
    plain = keras.models.load_model(path)
    assert type(plain).__name__ == "QATModel" and any(isinstance(l, QuantizeWrapper) for l in plain.layers)
    np.testing.assert_array_equal(plain.predict(X, verbose=0), q.predict(X, verbose=0))
    assert schemes.describe(plain)["layers"]
    # resume
    assert _train(q, BATCHES[2:]) == _train(loaded, BATCHES[2:])
    _assert_same_state(q, loaded)


def test_checkpoint_resume_is_exact(tmp_path):
    """TF weight checkpoints (with optimizer state) resume bit-identically into a freshly quantized model."""
    q = _qat(M.sequential, "pact_lsq")
    _train(q, BATCHES[:2])
    ckpt = str(tmp_path / "ckpt" / "step2")
    q.save_weights(ckpt)
    resumed_model = _qat(M.sequential, "pact_lsq")
    resumed_model.load_weights(ckpt)
    assert int(resumed_model.optimizer.iterations.numpy()) == 2
    assert _train(q, BATCHES[2:]) == _train(resumed_model, BATCHES[2:])
    _assert_same_state(q, resumed_model)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_and_h5_refused_with_the_fix(tmp_path, suffix):
    """Known trap: .keras/.h5 restore weights by position; with trainable quantizer variables the order can
    differ on load (and .keras cannot rebuild tfmot's QuantizeLayer). We refuse instead of loading wrong."""
    q = _qat(M.mobilenet_like, "lsq")
    path = str(tmp_path / f"m{suffix}")
    for call in (lambda: q.save(path), lambda: q.save_weights(path), lambda: qresearch.load_model(path)):
        with pytest.raises(ConfigError) as exc:
            call()
        assert "SavedModel" in str(exc.value) and "qresearch.load_model" in str(exc.value)
    assert not os.path.exists(path)


def test_the_keras_format_trap_we_refuse(tmp_path):
    """Why .keras is refused: Keras' own saver (bypassing QATModel.save) writes a file that does not load back
    correctly for a QAT model (tfmot's QuantizeLayer/our QuantizeInput rebuild with other variables)."""
    q = _qat(M.mobilenet_like, "lsq")
    _train(q, BATCHES[:1])
    path = str(tmp_path / "m.keras")
    keras.models.save_model(q, path)
    try:
        loaded = keras.models.load_model(path)
    except Exception:  # noqa: BLE001 - the trap shows as a load failure...
        return
    same = all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(q.weights, loaded.weights))
    assert not same or len(q.weights) != len(loaded.weights)  # ...or as shuffled weights


# A user's plugin quantizer: learned scale, straight-through rounding. Registering it is all it takes.


@register_quantizer("test_learned_scale", overwrite=True)
class LearnedScale(Quantizer):
    def __init__(self, bits=8, symmetric=True, narrow_range=False, per_channel=False, axis=None, signed=True,
                 scale_format="float32", init_scale=0.05):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        self.init_scale = float(init_scale)

    def build_params(self, shape, name, layer):
        return {"scale": self.add_variable(layer, f"{name}_scale", shape, self.init_scale, trainable=True)}

    def quantize(self, x, training, weights, axes):
        qn, qp = self.grid
        s = self.broadcast(tf.abs(weights["scale"]) + 1e-8, x, axes)
        return ops.round_ste(tf.clip_by_value(x / s, -float(qn), float(qp))) * s


def test_plugin_quantizer_saves_loads_and_resumes(tmp_path):
    scheme = {"weights": {"quantizer": "test_learned_scale", "bits": 4, "per_channel": True},
              "activations": {"quantizer": "test_learned_scale", "bits": 8, "init_scale": 0.1},
              "overrides": [{"match": "logits", "weights": {"bits": 8}}]}
    q = _qat(M.mobilenet_like, scheme)
    _train(q, BATCHES[:2])
    path = str(tmp_path / "plugin")
    q.save(path)
    loaded = qresearch.load_model(path)
    loaded.run_eagerly = True
    cfg = [l for l in loaded.layers if isinstance(l, QuantizeWrapper) and l.layer.name == "stem"][0].quantize_config
    assert isinstance(cfg.weights["kernel"], LearnedScale) and cfg.weights["kernel"].bits == 4
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), q.predict(X, verbose=0))
    assert _train(q, BATCHES[2:]) == _train(loaded, BATCHES[2:])
    _assert_same_state(q, loaded)


# A user's layer and quantizer in their own module, and a fresh process that has not imported it.

FRESH_CLASSES = '''
from qresearch import keras, tf
from qresearch.quantizers import Quantizer, ops


class FreshLayer(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", shape=(int(input_shape[-1]), self.units))

    def call(self, x):
        return tf.matmul(x, self.kernel)

    def get_config(self):
        return dict(super().get_config(), units=self.units)


class FreshRule(Quantizer):
    def __init__(self, bits=8, symmetric=True, narrow_range=False, per_channel=False, axis=None, signed=True,
                 scale_format="float32", init_scale=0.05):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        self.init_scale = float(init_scale)

    def build_params(self, shape, name, layer):
        return {"scale": self.add_variable(layer, f"{name}_scale", shape, self.init_scale, trainable=True)}

    def quantize(self, x, training, weights, axes):
        qn, qp = self.grid
        s = self.broadcast(tf.abs(weights["scale"]) + 1e-8, x, axes)
        return ops.round_ste(tf.clip_by_value(x / s, -float(qn), float(qp))) * s
'''

FRESH_PLUGIN = '''
from qresearch import schemes
from qresearch.quantizers import register
from qr_fresh_classes import FreshLayer, FreshRule

schemes.register_layer(FreshLayer, weights=["kernel"])
register("test_fresh_rule", overwrite=True)(FreshRule)
'''

FRESH_PROCESS = '''
import json, sys
import numpy as np
import qresearch
from qresearch import keras

root = sys.argv[1]
x = np.load(f"{root}/x.npy")
out = {}
for name in ("layer", "quantizer"):
    try:
        qresearch.load_model(f"{root}/{name}")
        out[name] = None
    except qresearch.QResearchError as exc:
        out[name] = [type(exc).__name__, str(exc)]
from qr_fresh_classes import FreshLayer, FreshRule

for name, objs in (("layer", {"FreshLayer": FreshLayer}), ("quantizer", {"test_fresh_rule": FreshRule})):
    model = qresearch.load_model(f"{root}/{name}", custom_objects=objs)
    out[f"{name} custom_objects"] = bool(np.array_equal(model.predict(x, verbose=0), np.load(f"{root}/{name}.npy")))
import qr_fresh_plugin  # noqa: F401  (registers both, as a user's plugin module does on import)

for name in ("layer", "quantizer"):
    for loader in ("qresearch", "keras"):
        load = qresearch.load_model if loader == "qresearch" else keras.models.load_model
        model = load(f"{root}/{name}")
        same = np.array_equal(model.predict(x, verbose=0), np.load(f"{root}/{name}.npy"))
        out[f"{name} imported {loader}"] = bool(same)
print("RESULT " + json.dumps(out))
'''


def _fresh_models(root):
    """Save a model with the user's layer and one with the user's quantizer (built-ins elsewhere)."""
    import importlib
    import sys

    (root / "qr_fresh_classes.py").write_text(FRESH_CLASSES)
    (root / "qr_fresh_plugin.py").write_text(FRESH_PLUGIN)
    sys.path.insert(0, str(root))
    try:
        classes = importlib.import_module("qr_fresh_classes")
        importlib.import_module("qr_fresh_plugin")
    finally:
        sys.path.remove(str(root))
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    np.save(root / "x.npy", x)
    L = keras.layers
    inp = keras.Input((6,))
    with_layer = keras.Model(inp, classes.FreshLayer(3, name="fresh")(L.Dense(5, activation="relu")(inp)))
    inp = keras.Input((6,))
    plain = keras.Model(inp, L.Dense(3)(L.Dense(5, activation="relu")(inp)))
    plugin_scheme = {"weights": {"quantizer": "test_fresh_rule"}, "activations": {"quantizer": "minmax"}}
    for name, model, scheme in (("layer", with_layer, "tflite_int8"), ("quantizer", plain, plugin_scheme)):
        q = qresearch.quantize(model, scheme, calibration_data=x)
        q.save(str(root / name))
        np.save(root / f"{name}.npy", q.predict(x, verbose=0))
    return classes


def test_fresh_process_names_the_missing_class_and_loads_with_it(tmp_path):
    """Subprocess on purpose: a class missing from a fresh process is the point."""
    import subprocess
    import sys
    from pathlib import Path

    import json

    classes = _fresh_models(tmp_path)
    # register_layer made the user's class Keras-serializable under a qresearch name
    assert keras.utils.get_registered_name(classes.FreshLayer) == "qresearch>layer:FreshLayer"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(qresearch.__file__).parents[1]), str(tmp_path)]),
               TF_CPP_MIN_LOG_LEVEL="3", WANDB_MODE="disabled")
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=600, cwd=str(tmp_path))
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])

    kind, msg = out["layer"]
    assert kind == "UnregisteredClassError"
    assert "the class 'FreshLayer' (saved as 'qresearch>layer:FreshLayer'), which is not registered" in msg
    assert "Import the module that defines it" in msg and "custom_objects={'FreshLayer': FreshLayer}" in msg
    kind, msg = out["quantizer"]
    assert kind == "UnregisteredClassError"
    assert "the quantizer plugin 'test_fresh_rule' (saved as 'qresearch>quantizer:test_fresh_rule')" in msg
    assert "custom_objects={'test_fresh_rule': <its Quantizer class>}" in msg
    assert "FreshLayer" not in msg  # only what is missing is named
    expected = {f"{n} {how}": True for n in ("layer", "quantizer")
                for how in ("custom_objects", "imported qresearch", "imported keras")}
    assert {k: v for k, v in out.items() if k in expected} == expected


def test_register_layer_keeps_names_keras_already_knows():
    """A class the user registered themselves keeps their name; Keras' own layers stay unregistered."""
    assert keras.utils.get_registered_name(M.ScaledDense) == "qresearch_tests>ScaledDense"
    assert keras.utils.get_registered_name(keras.layers.Dense) == "Dense"
    assert keras.utils.get_registered_name(LearnedScale) == "qresearch>quantizer:test_learned_scale"
