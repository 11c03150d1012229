"""Planning as named passes: the order is data, a prefix runs alone, a researcher's pass slots in."""
import numpy as np
import pytest

import qresearch
from qresearch import keras, tf
from qresearch.schemes import passes as P
from qresearch.schemes.build import build

from .helpers import has_output_quantizer

L = keras.layers
SCHEME = {"weights": {"quantizer": "minmax", "bits": 8}, "activations": {"quantizer": "minmax", "bits": 8},
          "quantize_ops": "all"}


def _plan_of(model, **changes):
    """The plan of ``model`` under ``SCHEME`` with ``changes``."""
    graph, annotations = P.read_model(model)
    return P.make_plan(graph, qresearch.schemes.presets.resolve(dict(SCHEME, **changes)), annotations)


def _assert_values_kept_at_16_bits(model, x):
    """The rewritten model, quantized at 16 bits, computes what the user's model does."""
    wide = qresearch.quantize(model, dict(SCHEME, weights=None, activations={"quantizer": "minmax", "bits": 16}),
                              calibration_data=x)
    for got, want in zip(wide(x), model(x)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-2, atol=1e-2)


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.ReLU(name="act")(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inp)))
    return keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(x)))


def test_the_passes_and_their_order():
    assert [p.__name__ for p in P.PASSES] == [
        "keras_layers_for_tf_ops", "merge_duplicate_relus", "fuse_hard_swish", "split_separable", "split_nary_merges",
        "split_normalized_dots", "classify",
        "fold_batch_norms", "affine_batch_norms", "rewire_folded", "resolve_quantizers", "fold_with_batch_stats",
        "place_output_quantizers", "infer_signs", "share_concat_ranges", "place_input_quantizers"]


def test_a_prefix_runs_alone():
    spec = qresearch.schemes.presets.resolve(SCHEME)
    graph, annotations = P.read_model(_model())
    plan = P.make_plan(graph, spec, annotations, passes=P.PASSES[:P.PASSES.index(P.classify) + 1])
    kinds = {p.layer.name: p.kind for p in plan.layers}
    assert kinds["conv"] == "compute" and kinds["bn"] == "bn" and not any(p.removed for p in plan.layers)
    P.fold_batch_norms(plan)
    assert [p.layer.name for p in plan.layers if p.removed] == ["bn"]
    assert [p.folded_bn.name for p in plan.layers if p.folded_bn is not None] == ["bn"]


def test_a_researchers_pass_slots_in():
    def no_head_output(plan):
        for p in plan.layers:
            if p.layer.name == "head":
                p.output = False

    spec = qresearch.schemes.presets.resolve(SCHEME)
    i = P.PASSES.index(P.place_output_quantizers) + 1
    graph, annotations = P.read_model(_model())
    q = build(P.make_plan(graph, spec, annotations, passes=P.PASSES[:i] + (no_head_output,) + P.PASSES[i:]))
    assert not has_output_quantizer(q, "head") and has_output_quantizer(q, "act")
    graph, annotations = P.read_model(_model())
    q = build(P.make_plan(graph, spec, annotations))
    assert has_output_quantizer(q, "head")
    assert q.predict(np.zeros((1, 8, 8, 3), "float32"), verbose=0).shape == (1, 2)


def _three_way_merges():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="a")(inp)
    s = L.Add(name="sum3")([x, L.Conv2D(4, 1, name="b")(inp), L.Conv2D(4, 1, name="c")(inp)])
    p = L.Multiply(name="prod4")([s, x, L.Conv2D(4, 1, name="d")(inp), L.Conv2D(4, 1, name="e")(inp)])
    return keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(p)))


def test_merges_of_three_or_more_inputs_become_chains_of_two_input_ones():
    """``split_nary_merges``: ((a + b) + c), as Keras sums and as the converter chains ADD ops, each partial result
    with its own output quantizer where every op is quantized; the float model's outputs are unchanged."""
    model = _three_way_merges()
    spec = qresearch.schemes.presets.resolve(SCHEME)
    graph, annotations = P.read_model(model)
    plan = P.make_plan(graph, spec, annotations)
    chain = [(p.layer.name, type(p.layer).__name__, len(p.node.in_refs)) for p in plan.layers
             if isinstance(p.layer, (L.Add, L.Multiply))]
    assert chain == [("sum3_partial_1", "Add", 2), ("sum3", "Add", 2), ("prod4_partial_1", "Multiply", 2),
                     ("prod4_partial_2", "Multiply", 2), ("prod4", "Multiply", 2)], chain
    q = build(plan)
    for name in ("sum3_partial_1", "sum3", "prod4_partial_1", "prod4_partial_2", "prod4"):
        assert has_output_quantizer(q, name), name
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32)
    wide = qresearch.quantize(model, dict(SCHEME, weights=None, activations={"quantizer": "minmax", "bits": 16}),
                              calibration_data=x)   # 16-bit grids on the data's ranges: the chain computes the sum
    np.testing.assert_allclose(wide(x).numpy(), model(x).numpy(), rtol=1e-3, atol=1e-3)


def test_an_average_becomes_a_sum_then_a_rescaling():
    """An Average of n inputs: the Add chain, then ``Rescaling(1/n)`` under its name (the converter's ADDs and MUL by
    ``1/n``), each result with its own output quantizer; the float model's outputs are unchanged."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="a")(inp)
    m2 = L.Average(name="mean2")([x, L.Conv2D(4, 1, name="b")(inp)])
    m3 = L.Average(name="mean3")([m2, x, L.Conv2D(4, 1, name="c")(inp)])
    model = keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(m3)))
    plan = _plan_of(model)
    chain = [(p.layer.name, type(p.layer).__name__) for p in plan.layers
             if isinstance(p.layer, (L.Add, L.Average, L.Rescaling))]
    assert chain == [("mean2_sum", "Add"), ("mean2", "Rescaling"), ("mean3_partial_1", "Add"), ("mean3_sum", "Add"),
                     ("mean3", "Rescaling")], chain
    assert [p.layer.scale for p in plan.layers if isinstance(p.layer, L.Rescaling)] == [1 / 2, 1 / 3]
    q = build(plan)
    for name, _ in chain:
        assert has_output_quantizer(q, name), name
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32)
    wide = qresearch.quantize(model, dict(SCHEME, weights=None, activations={"quantizer": "minmax", "bits": 16}),
                              calibration_data=x)
    np.testing.assert_allclose(wide(x).numpy(), model(x).numpy(), rtol=1e-3, atol=1e-3)


def test_merges_stay_whole_where_only_layer_inputs_are_quantized():
    spec = qresearch.schemes.presets.resolve(dict(SCHEME, quantize_ops="inputs"))
    graph, annotations = P.read_model(_three_way_merges())
    plan = P.make_plan(graph, spec, annotations)
    assert [p.layer.name for p in plan.layers if isinstance(p.layer, (L.Add, L.Multiply))] == ["sum3", "prod4"]


def _tf_op_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="a")(inp)
    y = tf.nn.relu6(L.Conv2D(4, 1, name="b")(inp))
    z = tf.concat([x + y, tf.maximum(x, y), x * tf.reduce_mean(y, axis=[1, 2], keepdims=True)], axis=-1)
    # a number times a tensor becomes a Rescaling; a number minus one (two ops as a Rescaling) stays a TF op
    return keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(1.0 - z * 0.5)))


@pytest.mark.parametrize("op, expected", [
    (lambda x: x * 0.5, (0.5, 0.0)), (lambda x: 0.5 * x, (0.5, 0.0)), (lambda x: x + 2.0, (1.0, 2.0)),
    (lambda x: 2.0 + x, (1.0, 2.0)), (lambda x: x - 2.0, (1.0, -2.0)), (lambda x: x / 4.0, (0.25, 0.0)),
    (lambda x: tf.multiply(x, 3), (3.0, 0.0)), (lambda x: 2.0 - x, None), (lambda x: 2.0 / x, None)],
    ids=["x*c", "c*x", "x+c", "c+x", "x-c", "x/c", "tf.multiply", "c-x", "c/x"])
def test_a_tf_op_with_a_number_becomes_a_rescaling(op, expected):
    """``inputs / 255.0`` and the like: one tensor and a number, a ``Rescaling(scale, offset)`` (one MUL or ADD with a
    constant, emulated as the converter stores it); ``c - x`` and ``c / x`` stay TF ops."""
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2, name="head")(op(inp)))
    plan = _plan_of(model)
    found = [(p.layer.scale, p.layer.offset) for p in plan.layers if isinstance(p.layer, L.Rescaling)]
    assert found == ([expected] if expected else []), found
    x = np.random.default_rng(0).uniform(0.5, 2, size=(4, 4)).astype(np.float32)
    wide = qresearch.quantize(model, dict(SCHEME, weights=None, activations={"quantizer": "minmax", "bits": 16}),
                              calibration_data=x)
    np.testing.assert_allclose(wide(x).numpy(), model(x).numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("op, expected", [
    (lambda x: tf.nn.leaky_relu(x, alpha=0.1), ("LeakyReLU", 0.1)), (tf.nn.leaky_relu, ("LeakyReLU", 0.2)),
    (lambda x: tf.nn.leaky_relu(x, 0.3), ("LeakyReLU", 0.3)), (tf.nn.silu, ("Activation", "swish")),
    (tf.nn.elu, ("Activation", "elu")), (tf.nn.selu, ("Activation", "selu")),
    (tf.math.softplus, ("Activation", "softplus")), (tf.nn.softsign, ("Activation", "softsign")),
    (lambda x: tf.nn.silu(x, beta=2.0), None)],
    ids=["leaky-alpha", "leaky-default", "leaky-positional", "silu", "elu", "selu", "softplus", "softsign",
         "silu-beta"])
def test_a_tf_activation_function_becomes_its_keras_layer(op, expected):
    """``tf.nn.leaky_relu(x, alpha)`` a LeakyReLU (emulated as LEAKY_RELU), ``tf.nn.silu`` a swish Activation (LOGISTIC
    and MUL), elu & co. Activations (named before training where the converter keeps them float); silu with another
    beta is not swish and stays a TF op. The computation is the same."""
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2, name="head")(op(inp)))
    plan = _plan_of(model)
    made = [p.layer for p in plan.layers if isinstance(p.layer, (L.LeakyReLU, L.Activation))]
    found = [(type(m).__name__, pytest.approx(float(m.alpha)) if isinstance(m, L.LeakyReLU) else m.activation.__name__)
             for m in made]
    assert found == ([expected] if expected else []), found
    x = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    wide = qresearch.quantize(model, dict(SCHEME, weights=None, activations={"quantizer": "minmax", "bits": 16}),
                              calibration_data=x)
    np.testing.assert_allclose(wide(x).numpy(), model(x).numpy(), rtol=1e-3, atol=1e-3)


def test_tf_ops_that_are_keras_layers_become_those_layers():
    """``keras_layers_for_tf_ops``: each TF op a Keras layer computes is planned as that layer (so the integer
    emulation runs it), ``z * 0.5`` a Rescaling; ``1.0 - z`` stays; the computation is the same."""
    model = _tf_op_model()
    spec = qresearch.schemes.presets.resolve(SCHEME)
    graph, annotations = P.read_model(model)
    plan = P.make_plan(graph, spec, annotations)
    kinds = sorted(type(p.layer).__name__ for p in plan.layers if not isinstance(p.layer, (L.Conv2D, L.Dense)))
    assert kinds == ["Add", "Concatenate", "Flatten", "GlobalAveragePooling2D", "Maximum", "Multiply", "ReLU",
                     "Rescaling", "TFOpLambda"], kinds
    assert [p.layer.symbol for p in plan.layers if type(p.layer).__name__ == "TFOpLambda"] == ["math.subtract"]
    assert [(p.layer.scale, p.layer.offset) for p in plan.layers if isinstance(p.layer, L.Rescaling)] == [(0.5, 0.0)]
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32)
    wide = qresearch.quantize(model, dict(SCHEME, weights=None, activations={"quantizer": "minmax", "bits": 16}),
                              calibration_data=x)
    np.testing.assert_allclose(wide(x).numpy(), model(x).numpy(), rtol=1e-3, atol=1e-3)
    inputs_only = qresearch.schemes.presets.resolve(dict(SCHEME, quantize_ops="inputs"))
    graph, annotations = P.read_model(model)
    kept = P.make_plan(graph, inputs_only, annotations)
    assert sum(type(p.layer).__name__ == "TFOpLambda" for p in kept.layers) == 8
    skipped = qresearch.schemes.presets.resolve(dict(SCHEME, skip=[r"tf\.concat.*"]))   # a skipped op stays as is
    graph, annotations = P.read_model(model)
    plan = P.make_plan(graph, skipped, annotations)
    assert [p.layer.symbol for p in plan.layers if type(p.layer).__name__ == "TFOpLambda"] == ["concat",
                                                                                               "math.subtract"]


def test_a_matmul_of_rank_3_tensors_becomes_a_dot_with_its_transposes():
    """``tf.matmul(a, b)`` on Keras tensors is planned as the ``Dot`` computing it (its BATCH_MATMUL is then
    emulated): each transpose flag picks the contracted axis; other forms stay TF ops. The values are the same."""
    inp = keras.Input((5, 4))
    a, b = L.Dense(4, name="a")(inp), L.Dense(4, name="b")(inp)
    products = [tf.matmul(a, b, transpose_b=True), tf.matmul(a, b, transpose_a=True),
                tf.linalg.matmul(tf.matmul(a, b, adjoint_b=True), a),
                tf.matmul(a, L.Reshape((4, 5))(b))]
    model = keras.Model(inp, [L.Flatten()(p) for p in products] + [tf.matmul(L.Flatten()(a), tf.ones((20, 2)))])
    plan = _plan_of(model)
    dots = sorted(tuple(p.layer.axes) for p in plan.layers if isinstance(p.layer, L.Dot))
    assert dots == [(1, 1), (2, 1), (2, 1), (2, 2), (2, 2)], dots
    assert [p.layer.symbol for p in plan.layers if type(p.layer).__name__ == "TFOpLambda"] == ["linalg.matmul"]
    x = np.random.default_rng(0).normal(size=(4, 5, 4)).astype(np.float32)
    _assert_values_kept_at_16_bits(model, x)


def test_hard_swish_the_converter_fuses_becomes_one_activation():
    """``fuse_hard_swish``: ``x · relu6(x + 3)`` then ``/ 6`` or ``· (1/6)``, as TF ops or Keras layers, is planned as
    one ``Activation(hard_swish)`` under the last layer's name (the converter's one HARD_SWISH op). The chains it does
    not fuse stay: ``relu6(x + 3) · x``, MobileNetV3's ``x · (relu6(x + 3) / 6)``, an inner tensor read twice, another
    constant, a plain ReLU; and every chain stays where only layer inputs are quantized. The values are the same."""
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="conv")(inp)
    fused = [x * tf.nn.relu6(x + 3.0) / 6.0,
             L.Rescaling(1 / 6, name="layers_div")(L.Multiply()([x, L.ReLU(6.0)(L.Rescaling(1.0, 3.0)(x))])),
             (x * L.Activation("relu6")(3.0 + x)) * (1.0 / 6.0)]
    shared = tf.nn.relu6(x + 3.0)
    kept = [tf.nn.relu6(x + 3.0) * x / 6.0, x * (tf.nn.relu6(x + 3.0) / 6.0), x * shared / 6.0 + shared,
            x * tf.nn.relu6(x + 2.0) / 6.0, x * tf.nn.relu(x + 3.0) / 6.0]
    model = keras.Model(inp, [L.Flatten()(t) for t in fused + kept])
    plan = _plan_of(model)
    swishes = [p for p in plan.layers if L.Activation is type(p.layer)
               and p.layer.activation is qresearch.hard_swish]
    conv = next(p for p in plan.layers if p.layer.name == "conv")
    assert len(swishes) == 3 and "layers_div" in [p.layer.name for p in swishes]
    assert all(p.node.in_refs == conv.node.out_refs for p in swishes)   # each reads x itself
    assert all(p.kind == "output" and p.spec.integer_op_of(p.layer) == "HARD_SWISH" for p in swishes)
    assert sum(isinstance(p.layer, L.Multiply) for p in plan.layers) == len(kept)   # each kept chain's product
    inputs_only = _plan_of(model, quantize_ops="inputs")
    assert not any(L.Activation is type(p.layer) and p.layer.activation is qresearch.hard_swish
                   for p in inputs_only.layers)
    x = np.random.default_rng(0).normal(scale=3.0, size=(4, 6, 6, 3)).astype(np.float32)
    _assert_values_kept_at_16_bits(model, x)


def test_a_normalized_dot_becomes_a_unit_normalization_of_each_input_then_the_dot():
    """``split_normalized_dots``: each input of a ``Dot(normalize=True)`` is normalised over its contracted axis by a
    ``UnitNormalization`` (over the last axis: one L2_NORMALIZATION), then the Dot runs without normalisation under
    its name; a shared Dot and every Dot where only layer inputs are quantized stay. The values are the same."""
    inp = keras.Input((5, 4))
    a, b = L.Dense(4, name="a")(inp), L.Dense(4, name="b")(inp)
    shared = L.Dot(axes=2, normalize=True, name="shared")
    outs = [L.Dot(axes=-1, normalize=True, name="rows")([a, b]),
            L.Dot(axes=1, normalize=True, name="vectors")([L.Flatten()(a), L.Flatten()(b)]),
            L.Dot(axes=(2, 1), normalize=True, name="mixed")([a, L.Permute((2, 1))(b)]),
            shared([a, b]), shared([b, a])]
    model = keras.Model(inp, [L.Flatten()(t) for t in outs])
    plan = _plan_of(model)
    units = {p.layer.name: p.layer.axis for p in plan.layers if isinstance(p.layer, L.UnitNormalization)}
    assert units == {"rows_l2_normalize_0": -1, "rows_l2_normalize_1": -1, "vectors_l2_normalize_0": -1,
                     "vectors_l2_normalize_1": -1, "mixed_l2_normalize_0": -1, "mixed_l2_normalize_1": 1}, units
    dots = {p.layer.name: p.layer.normalize for p in plan.layers if isinstance(p.layer, L.Dot)}
    assert dots == {"rows": False, "vectors": False, "mixed": False, "shared": True}, dots
    inputs_only = _plan_of(model, quantize_ops="inputs")
    assert not any(isinstance(p.layer, L.UnitNormalization) for p in inputs_only.layers)
    x = np.random.default_rng(0).normal(size=(4, 5, 4)).astype(np.float32)
    _assert_values_kept_at_16_bits(model, x)


def test_a_relu_repeating_another_on_the_same_tensor_is_merged_into_it():
    """``merge_duplicate_relus``: a second ReLU (layer, ``Activation("relu")`` or ``tf.nn.relu``) on a tensor already
    through one is dropped and its readers read the first (the converter merges the two ops, then fuses the one into
    the conv); a ReLU6 beside a ReLU, and a ReLU of another tensor, stay; a model output renamed to the first's
    reads the same values."""
    inp = keras.Input((6, 6, 3))
    c = L.Conv2D(4, 1, name="conv")(inp)
    d = L.Conv2D(4, 1, name="other")(inp)
    a = L.ReLU(name="relu_a")(c)
    outs = [L.Conv2D(2, 1, name="reads_a")(a), L.Conv2D(2, 1, name="reads_b")(L.Activation("relu", name="relu_b")(c)),
            L.Conv2D(2, 1, name="reads_c")(tf.nn.relu(c)), L.ReLU(6.0, name="relu6")(c), L.ReLU(name="relu_d")(d),
            L.ReLU(name="relu_out")(c)]
    model = keras.Model(inp, outs)
    plan = _plan_of(model)
    relus = [p for p in plan.layers if isinstance(p.layer, (L.ReLU, L.Activation))]
    kept = [p for p in relus if p.layer.name not in ("relu6", "relu_d")]   # the one ReLU of the conv left
    assert len(relus) == 3 and len(kept) == 1, [p.layer.name for p in relus]
    a_out = kept[0].node.out_refs
    assert all(next(p for p in plan.layers if p.layer.name == name).node.in_refs == a_out
               for name in ("reads_a", "reads_b", "reads_c"))
    assert plan.graph.output_refs[-1] == a_out[0]
    inputs_only = _plan_of(model, quantize_ops="inputs")
    assert sum(isinstance(p.layer, (L.ReLU, L.Activation)) for p in inputs_only.layers) == 5   # and a TF op
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32)
    _assert_values_kept_at_16_bits(model, x)
