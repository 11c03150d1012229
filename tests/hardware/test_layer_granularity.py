"""Weight granularity is checked per layer at quantize time: a custom layer (no known kind) or a subclass
of a built-in class gets what the target allows for it. Before, only the built-in classes were covered
(by name), so a custom matmul layer kept per-channel weights and the TFLite conversion failed
("'tfl.transpose' op has mismatched quantized axes")."""
import numpy as np

import qresearch
from qresearch import hardware as hw
from qresearch._compat import keras, tf
from qresearch.hardware.layer_checks import layer_kind
from qresearch.schemes import QuantizeWrapper

from deploy_models import digits

L = keras.layers


class MatMulHead(L.Layer):
    def __init__(self, units=10, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", (input_shape[-1], self.units))
        self.b = self.add_weight("b", (self.units,), initializer="zeros")

    def call(self, x):
        return tf.matmul(x, self.kernel) + self.b

    def get_config(self):
        return dict(super().get_config(), units=self.units)


class MyDense(L.Dense):
    pass


qresearch.schemes.register_layer(MatMulHead, weights=["kernel"])
SCHEME = {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True, "symmetric": True, "narrow_range": True},
          "activations": {"quantizer": "minmax", "bits": 8}}


def _per_channel(q):
    return {l.layer.name: bool(l.quantize_config.weights["kernel"].per_channel)
            for l in q.layers if isinstance(l, QuantizeWrapper) and "kernel" in l.quantize_config.weights}


def test_layer_kind_follows_subclasses():
    assert layer_kind(MyDense(3)) == "dense" and layer_kind(L.DepthwiseConv2D(3)) == "conv"
    assert layer_kind(MatMulHead()) is None and layer_kind(L.Conv1D(2, 3)) == "conv1d"


def test_custom_and_subclassed_layers_get_the_target_granularity_and_deploy():
    xtr, ytr, xte, yte = digits()
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, activation="relu", name="conv")(i)
    x = MyDense(16, activation="relu", name="my_dense")(L.Flatten()(x))
    model = keras.Model(i, MatMulHead(10, name="head")(x))
    q = qresearch.quantize(model, SCHEME, hardware="tflite_int8", calibration_data=xtr[:256])
    assert _per_channel(q) == {"conv": True, "my_dense": False, "head": False}
    notes = q.qresearch_info["coercions"]
    assert any("'head' (MatMulHead)" in n and "per_tensor" in n for n in notes), notes
    assert any("'my_dense' (MyDense)" in n for n in notes), notes
    r = hw.verify(q, "tflite_int8", xte, yte)  # converted (it failed before) and integer-only
    assert r["integer_only"] and r["structural_issues"] == [], r["structural_issues"]
    assert r["argmax_agreement"] >= 0.995
    # without a hardware target the scheme is taken as written
    assert _per_channel(qresearch.quantize(model, SCHEME))["head"] is True
