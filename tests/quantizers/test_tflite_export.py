"""The inference path of the learned quantizers is FakeQuant the TFLite converter reads.

One small model mixes the algorithms layer by layer (one conversion keeps it fast):
per-channel weights on Conv2D and DepthwiseConv2D (in·multiplier channels), LSQ,
LSQ+, PACT and power-of-two activations. The converted model computes what the
Keras model computes in inference mode.

(Per-channel Dense, Conv1D and Conv2DTranspose kernels do not convert with TF 2.21:
the converter cannot carry a per-channel FakeQuant axis through the transpose or
reshape between the Keras and TFLite kernel layouts; quantize those per tensor.)
"""
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from .conftest import KERNEL_ATTR, KernelActivationConfig, toy_data
from qresearch._compat import keras, tf, tfmot
from qresearch.quantizers import create

PLAN = {  # layer: (weights spec, activations spec)
    "conv": ({"name": "lsq", "bits": 8, "narrow_range": True, "per_channel": True}, {"name": "lsq_plus", "bits": 8}),
    "dw": ({"name": "pot", "bits": 8, "per_channel": True}, {"name": "pact", "bits": 8, "alpha_init": 1.0}),
    "conv2": ({"name": "lsq", "bits": 8, "narrow_range": True, "per_channel": True}, {"name": "lsq", "bits": 8}),
    "pool_conv": ({"name": "minmax", "bits": 8, "per_channel": True}, {"name": "pot", "bits": 8}),
    "logits": ({"name": "lsq", "bits": 8, "narrow_range": True}, None),
}


def mixed_model():
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu", name="dw")(h)
    h = keras.layers.Conv2D(4, 1, activation="relu", name="conv2")(h)
    h = keras.layers.Conv2D(4, 2, activation="relu", name="pool_conv")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))

    def annotate(layer):
        if layer.name not in PLAN:
            return layer
        w, a = PLAN[layer.name]
        config = KernelActivationConfig(create(w, role="weights"), a and create(a, role="activations"),
                                        KERNEL_ATTR.get(type(layer), "kernel"))
        return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with tfmot.quantization.keras.quantize_scope({"KernelActivationConfig": KernelActivationConfig}):
        return tfmot.quantization.keras.quantize_apply(annotated)


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
def test_converts_and_matches_keras_inference():
    x, y = toy_data(32)
    model = mixed_model()
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interpreter = Interpreter(model_content=converter.convert())
    ops = {d["op_name"] for d in interpreter._get_ops_details()}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= ops
    int8_filters = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8 and len(t["shape"]) == 4]
    scales = sorted(len(t["quantization_parameters"]["scales"]) for t in int8_filters)
    assert 8 in scales  # depthwise: one scale per in·multiplier channel
    dw = [t for t in int8_filters if len(t["quantization_parameters"]["scales"]) == 8][0]
    # Power-of-two weight scales survive conversion.
    log2 = np.log2(dw["quantization_parameters"]["scales"])
    np.testing.assert_allclose(log2, np.round(log2), atol=1e-6)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [8, 6, 6, 2])
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x[:8])
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"])
    want = model(x[:8], training=False).numpy()
    np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())
