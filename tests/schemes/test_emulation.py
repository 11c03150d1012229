"""The emulation hands each layer's op to the active kernel set's handler table (qresearch.kernels): a kernel
set is data, an op missing from its table keeps the float simulation, and a custom layer reaches an
integer kernel with one registration."""
import numpy as np
import pytest

import qresearch
from qresearch import kernels as K
from qresearch._compat import keras
from qresearch.kernels import KERNELS, IntegerKernels, emulated_kernels
from qresearch.schemes import register_layer

L = keras.layers


class SumOfTwo(L.Layer):
    """A user's own elementwise sum (not a keras Add): ADD in TFLite once registered as such."""

    def call(self, inputs):
        return inputs[0] + inputs[1]


register_layer(SumOfTwo, kind="merge", integer_op="ADD", keeps_sign=True)


def _model(merge):
    inp = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    b = L.Conv2D(4, 1, activation="relu")(inp)
    h = merge([a, b])
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Softmax()(L.Dense(5)(h)))


def _recording(base: str, name: str, drop=()):
    """Kernel set ``name``: ``base``'s handlers, each recording the ops it runs; ``drop``: ops left out."""
    seen = []
    parent = KERNELS.get(base)

    def record(op, handler):
        def run(kernels, call):
            seen.append(op)
            return handler(kernels, call)
        return run

    ops = {op: record(op, h) for op, h in parent.ops.items() if op not in drop}
    KERNELS.register(name, IntegerKernels(name, parent.requantize, parent.scalar_requantize, ops=ops,
                                          add_vector=parent.add_vector, op_requantize=parent.op_requantize),
                     overwrite=True)
    return seen


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (64, 6, 6, 2)).astype("float32")


@pytest.fixture(scope="module")
def pair(data):
    keras.utils.set_random_seed(1)
    add_model = _model(L.Add())
    own = _model(SumOfTwo())
    own.set_weights(add_model.get_weights())
    quantize = lambda m: qresearch.quantize(m, "tflite_int8", hardware="tflite_int8", calibration_data=data)
    return quantize(add_model), quantize(own)


def test_every_op_goes_through_the_table_and_equals_the_builtin_set(pair, data):
    q, _ = pair
    seen = _recording("tflite_builtin", "recorded_builtin")
    with emulated_kernels("recorded_builtin"):
        recorded = q(data, training=False).numpy()
    assert set(seen) == {"QUANTIZE", "CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "SOFTMAX"}
    with emulated_kernels("tflite_builtin"):
        np.testing.assert_array_equal(recorded, q(data, training=False).numpy())


def test_an_op_missing_from_the_table_keeps_the_float_simulation(pair, data):
    q, _ = pair
    seen = _recording("tflite_builtin", "no_add", drop=("ADD",))
    with emulated_kernels("no_add"):
        q(data, training=False)
    assert "ADD" not in seen and "CONV_2D" in seen and "MEAN" in seen
    with pytest.raises(KeyError, match="not in the table"):
        K.tflite_ops.without(K.TFLITE_OPS, "NOT_AN_OP")


def test_a_custom_layer_registered_with_an_integer_op_runs_that_kernel(pair, data):
    q_add, q_own = pair
    seen = _recording("tflite_builtin", "recorded_own")
    with emulated_kernels("recorded_own"):
        own = q_own(data, training=False).numpy()
    assert "ADD" in seen
    with emulated_kernels("tflite_builtin"):
        np.testing.assert_array_equal(own, q_add(data, training=False).numpy())


def test_integer_op_may_depend_on_the_layer():
    spec = qresearch.schemes.layer_spec(L.Activation("softmax"))
    assert spec.integer_op_of(L.Activation("softmax")) == "SOFTMAX"
    assert spec.integer_op_of(L.Activation("tanh")) == "TANH"
    assert spec.integer_op_of(L.Activation("elu")) is None   # the converter leaves ELU in float


def _conv_relu6_model():
    inp = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, padding="same", name="conv")(inp)   # no output quantizer: TFLite fuses the ReLU6
    h = L.ReLU(6.0, name="relu6")(h)
    h = L.Conv2D(3, 1, name="conv2")(h)
    h = L.ReLU(name="relu")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(5)(h))


def test_a_relu_fused_into_the_kernel_before_passes_its_values_on_unchanged(data):
    """The conv computes the ReLU's output (its clamp, the ReLU's grid); the ReLU layer then returns its
    input, which equals what a ReLU and its FakeQuant would make of it; the model's outputs are the same
    bits with the ReLU layers run as before (a plain Keras model call opens no ``one_call`` scope)."""
    q = qresearch.quantize(_conv_relu6_model(), "tflite_int8", hardware="tflite_int8", calibration_data=data)
    relus = [layer for layer in q.layers if getattr(layer, "layer", None) is not None
             and layer.layer.name in ("relu6", "relu")]
    assert len(relus) == 2
    seen = {}
    for w in relus:
        w.call = (lambda call, name: lambda x, *a, **k: seen.setdefault(name, (x, call(x, *a, **k)))[1])(
            w.call, w.layer.name)
    out = q(data, training=False)
    for name, (x, y) in seen.items():
        assert y is x, name   # passed on, no op
    ran = {}
    for w in relus:  # the same ReLU layers run as before: ReLU and FakeQuant on the kernel's output
        del w.call
        ran[w.layer.name] = w.call(seen[w.layer.name][0], training=False)
        np.testing.assert_array_equal(np.asarray(ran[w.layer.name]), np.asarray(seen[w.layer.name][0]))
    plain = keras.Model(q.inputs, q.outputs)(data, training=False)  # outside QATModel: the ReLUs run
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))


def test_a_kernel_reads_the_integers_the_kernel_before_computed(data, monkeypatch):
    """conv's input integers are the ones the model's QUANTIZE computed, conv2's the ones conv computed
    (TFLite hands the int8 tensor on): no second rounding of y / S; the same bits as rounding again
    (offsets_of disabled)."""
    import qresearch.schemes.emulation as emulation

    q = qresearch.quantize(_conv_relu6_model(), "tflite_int8", hardware="tflite_int8", calibration_data=data)
    rounded = []
    original = K.integer_values
    monkeypatch.setattr(emulation.K, "integer_values", lambda *a: rounded.append(1) or original(*a))
    handed_on = np.asarray(q(data, training=False))
    assert len(rounded) == 1  # the Dense's input (MEAN's output: not an integer kernel's offsets)
    monkeypatch.setattr(emulation.K, "offsets_of", lambda *a: None)
    np.testing.assert_array_equal(handed_on, np.asarray(q(data, training=False)))
    assert len(rounded) == 1 + 3  # conv and conv2 round too


def _residual_model():
    inp = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(inp)
    b = L.Conv2D(4, 1, name="conv_b")(a)
    h = L.Add(name="add")([a, b])
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(5)(h))


def test_add_reads_the_integers_its_inputs_kernels_computed(data, monkeypatch):
    """ADD's operands come from two conv kernels: it reads their integers (as TFLite's ADD reads the int8
    tensors), not ``round(x / S)`` of their float values; the same bits as rounding again."""
    import qresearch.schemes.emulation as emulation
    from qresearch.kernels import tflite_ops

    q = qresearch.quantize(_residual_model(), "tflite_int8", hardware="tflite_int8", calibration_data=data)
    seen = []
    original = tflite_ops.TFLITE_OPS["ADD"]

    def spy(kernels, call):  # what ADD's handler hands ``add``
        seen.append({"offsets1": call.operand_offsets(0), "offsets2": call.operand_offsets(1)})
        return original(kernels, call)

    monkeypatch.setitem(tflite_ops.TFLITE_OPS, "ADD", spy)
    handed_on = np.asarray(q(data, training=False))
    assert len(seen) == 1 and seen[0]["offsets1"] is not None and seen[0]["offsets2"] is not None
    monkeypatch.setattr(emulation.K, "offsets_of", lambda *a: None)
    rounded = np.asarray(q(data, training=False))
    assert seen[-1]["offsets1"] is None and seen[-1]["offsets2"] is None
    np.testing.assert_array_equal(handed_on, rounded)


def test_a_preprocessing_layer_runs_integer_in_all_its_steps_or_none(data):
    """Rescaling with an offset is MUL then ADD with constants: a kernel set with MUL but no ADD keeps the whole layer
    in the float simulation (not the float layer applied again to the MUL's result)."""
    from qresearch.schemes.build import set_kernels

    inp = keras.Input((6, 6, 2))
    h = L.Rescaling(0.5, offset=-0.25)(inp)
    model = keras.Model(inp, L.Dense(5)(L.Flatten()(L.Conv2D(4, 3, activation="relu")(h))))
    q = qresearch.quantize(model, "tflite_int8", calibration_data=data)
    _recording("tflite_builtin", "no_add", drop=("ADD", "SUB"))
    rescaling = next(l for l in q.layers if isinstance(getattr(l, "layer", None), L.Rescaling))
    probe = keras.Model(q.inputs, rescaling.output)
    set_kernels(q, None)
    floats = probe(data, training=False).numpy()
    set_kernels(q, "no_add")
    np.testing.assert_array_equal(probe(data, training=False).numpy(), floats)
    set_kernels(q, "tflite_builtin")
    integer = probe(data, training=False).numpy()
    np.testing.assert_allclose(integer, floats, atol=float(np.abs(floats).max()) / 64)   # one grid, maybe 1 LSB apart
