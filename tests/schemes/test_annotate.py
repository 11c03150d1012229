"""tfmot's annotate-then-apply flow through qresearch.quantize (real tfmot, real tf_keras).

The seed's examples: a user QuantizeConfig on one Dense (the other Dense not annotated), a 4-bit custom
tfmot Quantizer, quantize_annotate_model, training, describe, save/load, and a hardware target.
"""
import numpy as np
import pytest

import qresearch
from qresearch import keras, schemes, tf, tfmot
from qresearch.errors import IncompatibleTargetError, UnsupportedLayerError
from qresearch.schemes import ConfigWrapper, QuantizeInput, QuantizeWrapper

qk = tfmot.quantization.keras
L = keras.layers
X = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
Y = np.random.default_rng(1).integers(0, 4, 32)


@keras.utils.register_keras_serializable(package="test_annotate")
class KernelOnlyConfig(qk.QuantizeConfig):
    """Quantize a Dense's kernel only (no activations, no output), with the quantizer given."""

    def __init__(self, quantizer=None):
        self.quantizer = quantizer or qk.quantizers.LastValueQuantizer(
            num_bits=8, symmetric=True, narrow_range=False, per_axis=False)

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, self.quantizer)]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"quantizer": keras.utils.legacy.serialize_keras_object(self.quantizer)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.utils.legacy.deserialize_keras_object(config["quantizer"]))


@keras.utils.register_keras_serializable(package="test_annotate")
class FixedRange4(qk.quantizers.Quantizer):
    """The tfmot guide's custom quantizer: 4-bit FakeQuant on the fixed range [-1, 1]."""

    def build(self, tensor_shape, name, layer):
        lo = layer.add_weight(name + "_min", initializer=keras.initializers.Constant(-1.0), trainable=False)
        hi = layer.add_weight(name + "_max", initializer=keras.initializers.Constant(1.0), trainable=False)
        return {"min_var": lo, "max_var": hi}

    def __call__(self, inputs, training, weights, **kwargs):
        return tf.quantization.fake_quant_with_min_max_vars(inputs, weights["min_var"], weights["max_var"],
                                                             num_bits=4, narrow_range=False)

    def get_config(self):
        return {}


def _model(config=None, annotate_first=True):
    """Input -> Dense "a" (annotated, optionally with ``config``) -> Dense "b" (not annotated)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,), name="x")
    a = L.Dense(16, activation="relu", name="a")
    x = (qk.quantize_annotate_layer(a, quantize_config=config) if annotate_first else a)(inp)
    out = L.Dense(4, name="b")(x)
    return keras.Model(inp, out)


def _quantize(model, scheme="tflite_int8", **kwargs):
    # tfmot wants the user's config classes in quantize_scope; qresearch needs nothing more
    with qk.quantize_scope({"KernelOnlyConfig": KernelOnlyConfig, "FixedRange4": FixedRange4}):
        return qresearch.quantize(model, scheme, calibration_data=X, **kwargs)


def _fake_quant(x, rmin, rmax, bits, narrow):
    """TF FakeQuantWithMinMaxVars in numpy (nudged range, round half up), float32."""
    f = np.float32
    qmin, qmax = f(1 if narrow else 0), f(2 ** bits - 1)
    scale = (f(rmax) - f(rmin)) / (qmax - qmin)
    zp = np.clip(np.floor(qmin - f(rmin) / scale + f(0.5)), qmin, qmax)
    nmin, nmax = (qmin - zp) * scale, (qmax - zp) * scale
    return (np.floor((np.clip(x, nmin, nmax) - nmin) / scale + f(0.5)) * scale + nmin).astype(f)


def _float_reason(q, name):
    return {r["name"]: r["reason"] for r in schemes.describe(q)["float_layers"]}.get(name)


def test_user_config_quantizes_exactly_the_configured_kernel():
    model = _model(KernelOnlyConfig())
    q = _quantize(model)
    wrapper = q.get_layer("quant_a")
    assert isinstance(wrapper, ConfigWrapper) and isinstance(wrapper.quantize_config, KernelOnlyConfig)
    assert [w.name.split("/")[-1] for w, _, _ in wrapper._weight_vars] == ["kernel:0"]
    assert not wrapper._output_quantizers and not wrapper._quantize_activations
    # the kernel as LastValueQuantizer(symmetric, 8 bits, wide range) fake-quantizes it, after calibration
    kernel = model.layers[1].layer.kernel.numpy()  # the QuantizeAnnotate's Dense "a"
    lo, hi = kernel.min(), kernel.max()
    ratio = -(2 ** 8 - 2) / 2 ** 8
    rmin, rmax = min(lo, hi / ratio), max(hi, lo * ratio)
    effective = schemes.quantized_weights(q)["a"]["kernel"]
    assert len(np.unique(effective)) <= 256
    np.testing.assert_allclose(effective, _fake_quant(kernel, rmin, rmax, 8, False), atol=1e-6)
    # the other Dense: a plain float copy, described as not annotated
    b = q.get_layer("b")
    assert type(b) is L.Dense
    for u, v in zip(b.get_weights(), model.get_layer("b").get_weights()):
        np.testing.assert_array_equal(u, v)
    assert _float_reason(q, "b") == "not annotated"
    # the annotated Dense reads a quantized input, as tfmot quantizes annotated layers' inputs
    assert [type(l) for l in q.layers].count(QuantizeInput) == 1


def test_custom_4bit_quantizer_in_user_config():
    q = _quantize(_model(KernelOnlyConfig(FixedRange4())))
    kernel = schemes.quantized_weights(q)["a"]["kernel"]
    assert len(np.unique(kernel)) <= 16
    assert kernel.min() >= -1.0 and kernel.max() <= 1.0
    row = next(r for r in schemes.describe(q)["layers"] if r["name"] == "a")
    assert row["kind"] == "user_config" and row["weights"]["kernel"]["quantizer"] == "FixedRange4"


def _cnn():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(4)(x))


def _summary(q):
    report = schemes.describe(q)
    rows = [(r["name"], r["class"], r["weights"], r["activations"], r["output"]) for r in report["layers"]
            if r["class"] != "QuantizeInput"]
    return rows, [(r["name"], r["reason"]) for r in report["float_layers"]]


def test_annotate_model_is_the_plain_model():
    plain = _cnn()
    annotated = qk.quantize_annotate_model(plain)
    xs = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    qa = qresearch.quantize(annotated, "tflite_int8", calibration_data=xs)
    qp = qresearch.quantize(plain, "tflite_int8", calibration_data=xs)
    assert _summary(qa) == _summary(qp)
    np.testing.assert_array_equal(qa.predict(xs, verbose=0), qp.predict(xs, verbose=0))


def test_float_pass_through_between_annotated_layers_keeps_the_grid():
    """Sequential, as in tfmot's guide: Conv and Dense annotated, Flatten not: no requantize after Flatten."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        qk.quantize_annotate_layer(L.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 3), name="conv")),
        L.Flatten(name="flat"),
        qk.quantize_annotate_layer(L.Dense(4, name="a"))])
    xs = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    q = qresearch.quantize(model, "tflite_int8", calibration_data=xs)
    assert [type(l) for l in q.layers].count(QuantizeInput) == 1  # the model input only
    assert {l.layer.name for l in q.layers if isinstance(l, QuantizeWrapper)} == {"conv", "a"}
    assert _float_reason(q, "flat").startswith("not annotated (pass-through")


def test_annotated_layer_without_config_follows_the_scheme_by_its_own_name():
    scheme = {"weights": {"quantizer": "minmax", "bits": 8}, "activations": {"quantizer": "minmax", "bits": 8},
              "overrides": [{"match": "a", "weights": {"bits": 4}}]}
    q = _quantize(_model(), scheme)
    wrappers = {l.layer.name: l for l in q.layers if isinstance(l, QuantizeWrapper)}
    assert set(wrappers) == {"a"} and wrappers["a"].quantize_config.weights["kernel"].bits == 4
    assert _float_reason(q, "b") == "not annotated"


def test_train_describe_save_load(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    x = qk.quantize_annotate_layer(L.Dense(16, activation="relu", name="a"), KernelOnlyConfig())(inp)
    x = qk.quantize_annotate_layer(L.Dense(16, name="c"), KernelOnlyConfig(FixedRange4()))(x)
    x = qk.quantize_annotate_layer(L.Dense(8, activation="relu", name="d"))(x)  # the scheme's
    out = L.Dense(4, name="b")(x)
    q = _quantize(keras.Model(inp, out), "lsq")
    q.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = q.get_layer("quant_a").layer.kernel.numpy().copy()
    q.fit(X, Y, epochs=1, batch_size=32, verbose=0)
    assert not np.array_equal(before, q.get_layer("quant_a").layer.kernel.numpy())  # one step trained it
    report = schemes.describe(q)
    assert {r["name"]: r["kind"] for r in report["layers"] if r["name"] in "acd"} == \
        {"a": "user_config", "c": "user_config", "d": "compute"}
    assert "not annotated" in str(report)
    path = str(tmp_path / "qat")
    q.save(path)
    loaded = qresearch.load_model(path)
    assert isinstance(loaded.get_layer("quant_c"), ConfigWrapper)
    assert isinstance(loaded.get_layer("quant_c").quantize_config.quantizer, FixedRange4)
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), q.predict(X, verbose=0))
    assert _float_reason(loaded, "b") == "not annotated"


def test_hardware_target_refuses_float_layers_and_checks_the_users_quantizers():
    ok = KernelOnlyConfig(qk.quantizers.LastValueQuantizer(num_bits=8, symmetric=True, narrow_range=True,
                                                            per_axis=False))
    # tflite_int8 runs integer-only: a layer left float is a conflict, as a skip list is
    with pytest.raises(IncompatibleTargetError, match=r"layers \['b'\] are not annotated.*adapt=True"):
        _quantize(_model(ok), hardware="tflite_int8")
    q = _quantize(_model(ok), hardware="tflite_int8", adapt=True)
    assert isinstance(q.get_layer("quant_a"), ConfigWrapper) and isinstance(q.get_layer("quant_b"), QuantizeWrapper)
    assert any(note.startswith("not annotated: ['b']") for note in q.qresearch_info["coercions"])
    report = qresearch.hardware.verify(q, "tflite_int8", X, Y)
    assert report["integer_only"] and not report["structural_issues"], report["structural_issues"]
    assert report["argmax_agreement"] == 1.0
    # the user's quantizers are the user's: a conflict is named with the layer and the fix, never coerced
    with pytest.raises(IncompatibleTargetError, match=r"layer 'a' \(KernelOnlyConfig\).*narrow_range.*Fix:"):
        _quantize(_model(KernelOnlyConfig()), hardware="tflite_int8", adapt=True)
    # a quantizer that exposes no bit width cannot be checked: said, not silently passed
    q = _quantize(_model(KernelOnlyConfig(FixedRange4())), hardware="tflite_int8", adapt=True)
    assert any("FixedRange4" in note and "not checked" in note for note in q.qresearch_info["coercions"])


def test_unsupported_annotated_layer_names_the_inner_class_not_the_annotation():
    class Scale(L.Layer):
        def build(self, shape):
            self.w = self.add_weight("w", (shape[-1], shape[-1]))

        def call(self, x):
            return tf.matmul(x, self.w)

    inp = keras.Input((8,))
    out = qk.quantize_annotate_layer(Scale(name="scale"))(inp)
    with pytest.raises(UnsupportedLayerError) as err:
        qresearch.quantize(keras.Model(inp, out), "tflite_int8")
    msg = str(err.value)
    assert "Scale" in msg and "register_layer(Scale" in msg and "quantize_config=" in msg
    assert "QuantizeAnnotate" not in msg
    # the same layer not annotated, in an annotated model: float, no error
    inp = keras.Input((8,))
    x = Scale(name="scale")(inp)
    out = qk.quantize_annotate_layer(L.Dense(4, name="a"))(x)
    assert _float_reason(qresearch.quantize(keras.Model(inp, out), "tflite_int8"), "scale") == "not annotated"


def test_a_tfmot_quantized_model_is_refused_with_the_right_fix():
    inp = keras.Input((8,))
    tfmot_q = qk.quantize_model(keras.Model(inp, L.Dense(4)(inp)))
    with pytest.raises(UnsupportedLayerError, match="already quantized by tfmot: pass the float model") as err:
        qresearch.quantize(tfmot_q, "tflite_int8")
    assert "register_layer" not in str(err.value)
