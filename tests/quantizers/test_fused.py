"""The XLA-fused training passes (quantizers/fused.py) against plain TF autodiff, bit for bit, on tensors
large and oddly sized enough for XLA's vectorised loops and their tails, with NaN, ±inf, ±0, rounding ties
and clip edges in the input and in the incoming gradient; in a tf.function (as in training) and eagerly
(as in calibration). XLA rewrites some float expressions (FMA contraction, ``(a/b)/c``, ReluGrad's
select): a pass that picked one up would fail here."""
import numpy as np
import pytest

from qresearch._compat import tf
from qresearch.quantizers import ops
from qresearch.quantizers.dorefa import clipped_unit_ste
from qresearch.quantizers.dorefa import fused_weights as dorefa_fused_weights
from qresearch.quantizers.pact import pact_ste

from .test_ops import _uniform_ste_autodiff
from .test_pact import _pact_autodiff

SHAPE = (33, 17, 13, 6)


@pytest.fixture(params=[(33, 17, 13, 6), (5, 7, 3, 6)], ids=["first_trace", "relaxed_trace"])
def _shape(request):
    """Each check on ``SHAPE`` on a second shape too: the shared traces are then retraced with relaxed shapes,
    which changes XLA's code (an FMA appeared only there in a fused DoReFa forward). The weight checks take
    their shapes as parameters, two each, and so are retraced without it."""
    global SHAPE
    SHAPE = request.param


both_shapes = pytest.mark.usefixtures("_shape")


def _inputs(scale, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SHAPE) * 4 * scale).astype("float32")
    edges = np.float32(scale) * np.array([0.5, 1.5, -2.5, 7.0, -8.0, 15.0, 9.0, 1e-3, -1e-3], "float32")
    x.flat[:13] = np.concatenate([edges, [np.nan, np.inf, -np.inf, -0.0]]).astype("float32")
    dy = rng.standard_normal(SHAPE).astype("float32")
    dy.flat[100:104] = [np.nan, np.inf, -0.0, 0.0]
    dy.flat[:13] = -np.abs(dy.flat[:13])   # negative gradients at the edges: the sign of zero shows
    return x, dy


def _outputs(fn, x, dy, params, graph):
    """``[y, dx, dparam...]`` of ``fn(x, *params)`` for the incoming gradient ``dy``."""
    def step(xt, dyt, *ps):
        with tf.GradientTape() as tape:
            tape.watch([xt, *ps])
            y = fn(xt, *ps)
        return [y] + tape.gradient(y, [xt, *ps], output_gradients=dyt)

    args = [tf.constant(x), tf.constant(dy)] + [tf.constant(p) for p in params]
    if not graph:
        return [t.numpy() for t in step(*args)]
    # placeholders for every input, as in a model (a constant scale would let grappler rewrite the reference)
    spec = tf.TensorSpec((None,) + SHAPE[1:], tf.float32)
    concrete = tf.function(step).get_concrete_function(
        spec, spec, *[tf.TensorSpec(np.shape(p), tf.float32) for p in params])
    return [t.numpy() for t in concrete(*args)]


def _assert_same_bits(fused, reference):
    assert len(fused) == len(reference)
    for got, want in zip(fused, reference):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@both_shapes
@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("case", ["per_tensor", "per_channel", "offset", "offset_per_channel", "unsigned"])
def test_uniform_ste_bits(case, graph, monkeypatch):
    monkeypatch.setattr(ops, "FUSED_MIN_ELEMENTS", 0)   # every size through the XLA passes
    qn, qp = (0, 15) if case == "unsigned" else (8, 7)
    channel = case.endswith("per_channel")
    s = (np.linspace(0.05, 0.4, 6, dtype="float32").reshape(1, 1, 1, 6) if channel else np.float32(0.23))
    x, dy = _inputs(0.23, 1)
    params = [s] + ([np.float32(-0.4) * np.ones_like(s)] if case.startswith("offset") else [])

    def run(f):
        return _outputs(lambda t, *p: f(t, p[0], qn, qp, *p[1:]), x, dy, params, graph)

    _assert_same_bits(run(ops.uniform_ste), run(_uniform_ste_autodiff))


@pytest.mark.parametrize("case", ["per_tensor", "offset_per_channel"])
def test_uniform_ste_on_a_small_tensor_runs_plain_autodiff_with_the_fused_bits(case, monkeypatch):
    """Under ``FUSED_MIN_ELEMENTS`` (a small kernel) ``uniform_ste`` is plain autodiff, no XLA call,
    and gives the fused passes' bits."""
    x = np.random.default_rng(3).standard_normal((5, 5, 6, 16)).astype("float32")
    dy = np.random.default_rng(4).standard_normal(x.shape).astype("float32")
    s = np.linspace(0.05, 0.4, 16, dtype="float32") if case != "per_tensor" else np.float32(0.23)
    params = [s] + ([np.float32(-0.4) * np.ones_like(s)] if case.startswith("offset") else [])

    def run():
        @tf.function(autograph=False)
        def step(xt, dyt, *ps):
            with tf.GradientTape() as tape:
                tape.watch([xt, *ps])
                y = ops.uniform_ste(xt, ps[0], 8, 7, *ps[1:])
            return [y, *tape.gradient(y, [xt, *ps], output_gradients=dyt)]

        return [t.numpy() for t in step(tf.constant(x), tf.constant(dy), *map(tf.constant, params))]

    assert x.size < ops.FUSED_MIN_ELEMENTS
    graph = tf.function(lambda t: ops.uniform_ste(t, tf.constant(s), 8, 7), autograph=False) \
        .get_concrete_function(tf.TensorSpec(x.shape)).graph
    assert not [op for op in graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall")]
    plain = run()
    monkeypatch.setattr(ops, "FUSED_MIN_ELEMENTS", 0)
    _assert_same_bits(run(), plain)


@both_shapes
@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_pact_ste_bits(signed, per_channel, graph):
    a = np.linspace(0.9, 2.5, 6, dtype="float32").reshape(1, 1, 1, 6) if per_channel else np.float32(2.1)
    x, dy = _inputs(0.3, 2)
    x.flat[20:24] = [a.flat[0], -a.flat[0], a.flat[0] / 2, -a.flat[0] / 2]
    qp = 7 if signed else 15

    def run(f):
        return _outputs(lambda t, at: f(t, at, qp, signed), x, dy, [a], graph)

    _assert_same_bits(run(pact_ste), run(_pact_autodiff))


@both_shapes
@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_clipped_unit_ste_bits(bits, signed, graph):
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    x, dy = _inputs(0.25, 3)
    x.flat[20:28] = [0.0, 1.0, 0.5 / levels, 1.5 / levels, -1.0, -0.5 / levels, -1.5 / levels, -1.0 - 1e-7]

    def run(f):
        return _outputs(f, x, dy, [], graph)

    if signed:   # DoReFa's signed activations (DoReFaQuantizer.quantize) with the clip at 1
        reference = run(lambda t: ops.round_ste(tf.clip_by_value(t, -1.0, 1.0) * float(levels)) / float(levels))
    else:
        reference = run(lambda t: ops.quantize_unit_ste(tf.clip_by_value(t, 0.0, 1.0), bits))
    _assert_same_bits(run(lambda t: clipped_unit_ste(t, bits, signed=signed)), reference)


@both_shapes
@pytest.mark.parametrize("quantize", [lambda w, s: ops.uniform_ste(w, s, 8, 7),
                                      lambda w, s: ops.uniform_ste(w, s, 8, 7, offset=s * 0.5),
                                      lambda w, s: pact_ste(w, s * 10.0, 15, False),
                                      lambda w, s: clipped_unit_ste(w * s, 4),
                                      lambda w, s: dorefa_fused_weights(w * s, 4, (0,), True)],
                         ids=["lsq", "lsq_plus", "pact", "dorefa", "dorefa_weights"])
def test_gradients_through_a_cond_branch_equal_those_outside_it(quantize, monkeypatch):
    """A quantizer inside ``tf.cond`` (a tensor ``training`` flag, fold_batch_stats' freeze): the fused
    backward's inputs must reach the branch's gradient (they once were unresolved captures)."""
    monkeypatch.setattr(ops, "FUSED_MIN_ELEMENTS", 0)   # the XLA passes at this size too
    x = tf.Variable(np.random.default_rng(0).standard_normal(SHAPE[-2:]).astype("float32"))
    s = tf.Variable(0.1)
    take = tf.Variable(True)

    @tf.function
    def grads(in_cond):
        with tf.GradientTape() as tape:
            w = x * 2.0
            y = tf.cond(take, lambda: quantize(w, s), lambda: w) if in_cond else quantize(w, s)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, s])

    for inside, outside in zip(grads(True), grads(False)):
        assert np.array_equal(inside.numpy().view(np.uint32), outside.numpy().view(np.uint32))


@both_shapes
@pytest.mark.parametrize("forward", [lambda t: ops.uniform_ste(t, tf.constant(0.23), 8, 7, tf.constant(-0.4)),
                                     lambda t: clipped_unit_ste(t, 4),
                                     lambda t: clipped_unit_ste(t, 4, signed=True)],
                         ids=["lsq_plus", "dorefa", "dorefa_signed"])
def test_a_training_forward_on_an_activation_is_one_xla_call(forward):
    """LSQ+'s and DoReFa's forwards on an activation (batch unknown when traced) run as one XLA call, none of
    their elementwise ops outside it (the plain chain was 7–9 passes over the tensor)."""
    graph = tf.function(forward, autograph=False).get_concrete_function(tf.TensorSpec((None,) + SHAPE[1:])).graph
    types = [op.type for op in graph.get_operations()]
    assert types.count("PartitionedCall") + types.count("StatefulPartitionedCall") == 1
    assert not {"RealDiv", "Round", "Minimum", "Maximum", "Mul", "Sub", "AddV2"} & set(types)


# 4 bits runs the passes 2 and 8 run, with another level count: `make test-slow` runs it (each case compiles them).
WEIGHT_BITS = [2, pytest.param(4, marks=pytest.mark.slow), 8]


def _weights(shape, seed, per_channel):
    """``(w, dy)``: weights with ties for the max in a channel, non-finite entries (NaN only ``per_channel``) in
    another, ±0 and a rounding tie, and a channel whose max is under the floor ``EPS``; an incoming gradient
    with ±0 and, ``per_channel``, a NaN in one channel (per tensor a NaN makes the whole gradient NaN, and
    then only a NaN's sign bit would tell how it was reached)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * 0.2).astype("float32")
    flat = w.reshape(-1, shape[-1])
    flat[3, 0] = flat[7, 0] = np.abs(flat[:, 0]).max() * 1.5   # two maxima of |w| (and of |tanh w|): shared
    flat[5, 0] = -flat[3, 0]                                   # and a third, negative
    flat[:4, 1] = [np.inf, -np.inf, np.nan, -0.0]
    flat[:3, 2] = [0.0, -0.0, np.arctanh(0.5).astype("float32")]
    flat[:, 4] *= 1e-9   # its max under ops.EPS: the floor takes over, no gradient through the max
    dy = rng.standard_normal(shape).astype("float32")
    dy.reshape(-1, shape[-1])[8:11, 3] = [np.nan if per_channel else 1.0, -0.0, 0.0]
    if not per_channel:
        w.reshape(-1, shape[-1])[:3, 1] = [np.inf, -np.inf, 1e30]
    return w, dy


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("weight_scale", ["unit", "max"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("bits", WEIGHT_BITS)
@pytest.mark.parametrize("shape", [(120, 84), (3, 3, 17, 24)], ids=["dense", "conv"])
def test_dorefa_weights_bits(shape, bits, per_channel, weight_scale, graph):
    """DoReFa's fused weight transform (XLA passes, TF's Tanh and sums) against the plain chain under
    autodiff: the value and the weight's gradient, bit for bit, with the NaN of a non-finite channel."""
    from qresearch.quantizers import create

    q = create({"name": "dorefa", "bits": bits, "per_channel": per_channel, "weight_scale": weight_scale},
               role="weights")
    axes = [len(shape) - 1] if per_channel else None
    w, dy = _weights(shape, bits, per_channel)

    def run(f):
        def step(wt, dyt):
            with tf.GradientTape() as tape:
                tape.watch(wt)
                y = f(wt)
            return [y, tape.gradient(y, wt, output_gradients=dyt)]

        if not graph:
            return [t.numpy() for t in step(tf.constant(w), tf.constant(dy))]
        spec = tf.TensorSpec(shape, tf.float32)
        return [t.numpy() for t in tf.function(step).get_concrete_function(spec, spec)(tf.constant(w),
                                                                                       tf.constant(dy))]

    fused = run(lambda t: dorefa_fused_weights(t, bits, q.reduce_axes(t, axes), weight_scale == "max"))
    reference = run(lambda t: q.weights_autodiff(t, axes))
    _assert_same_bits(fused, reference)


def test_dorefa_weights_of_a_large_kernel_run_in_xla_calls():
    """A kernel over ``ops.FUSED_MIN_ELEMENTS`` takes the fused weight transform in a training step: TF's Tanh,
    the two sums and four XLA calls (forward, a product per sum, backward), none of the chain's elementwise ops
    or their gradients outside them."""
    from qresearch.quantizers import create

    q = create({"name": "dorefa", "bits": 4, "per_channel": True, "weight_scale": "max"}, role="weights")
    w = tf.Variable(np.random.default_rng(0).standard_normal((400, 120)).astype("float32"))
    assert w.shape.num_elements() >= ops.FUSED_MIN_ELEMENTS

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            y = q.quantize_weights(w, [1])
        return tape.gradient(y, w, output_gradients=tf.ones_like(y))

    types = [op.type for op in step.get_concrete_function().graph.get_operations()]
    assert types.count("PartitionedCall") + types.count("StatefulPartitionedCall") == 4
    assert types.count("Tanh") == 1 and types.count("Sum") == 2
    assert not {"TanhGrad", "Sign", "RealDiv", "Round", "Abs", "Max", "Mul"} & set(types)


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("accumulator_bits", [14, 32], ids=["bound_binds", "bound_loose"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("bits", WEIGHT_BITS)
@pytest.mark.parametrize("shape", [(120, 84), (3, 3, 17, 24)], ids=["dense", "conv"])
def test_a2q_training_weights_bits(shape, bits, per_channel, accumulator_bits, graph):
    """A2Q's fused training transform (XLA passes and TF's sums) against ``A2QQuantizer.integers`` times
    the step under autodiff: the value and the gradients of the weight, the log2 step and the log2 norm, bit for
    bit (a zero channel, a NaN in the incoming gradient, steps on which weights fall on rounding ties)."""
    _check_a2q_training_weights(shape, bits, per_channel, accumulator_bits, graph, "float32")


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_a2q_training_weights_bits_with_power_of_two_steps(per_channel, graph):
    _check_a2q_training_weights((3, 3, 17, 24), 4, per_channel, 14, graph, "pot")


def _check_a2q_training_weights(shape, bits, per_channel, accumulator_bits, graph, scale_format):
    from qresearch.quantizers import create
    from qresearch.quantizers.a2q import fused_training_weights

    q = create({"name": "a2q", "bits": bits, "per_channel": per_channel, "accumulator_bits": accumulator_bits,
                "input_bits": 4, "scale_format": scale_format}, role="weights")
    axes = [len(shape) - 1] if per_channel else None
    norm_axes = (len(shape) - 1,)
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal(shape) * 0.2).astype("float32")
    flat = x.reshape(-1, shape[-1])
    flat[:, 5] = 0.0
    flat[:4, 1] = [0.25, -0.25, 0.75, -0.0]
    dy = rng.standard_normal(shape).astype("float32")
    if per_channel:
        dy.reshape(-1, shape[-1])[8:11, 3] = [np.nan, -0.0, 0.0]
    t0, d0 = (v.numpy() for v in q.initial_params(tf.constant(x), axes, norm_axes))
    t0 = (t0 - 1.0 + np.round(rng.standard_normal(t0.shape) * 0.3)).astype("float32")  # steps 2^k: ties

    def plain(xt, t, d):
        qv, s = q.integers(xt, t, d, axes, norm_axes)
        return tf.cast(qv * q.broadcast(tf.cast(s, tf.float64), xt, axes), tf.float32)

    def fused(xt, t, d):
        s, s64, g = q.step_and_norm(t, d)
        return fused_training_weights(xt, q.broadcast(g, xt, norm_axes), q.broadcast(s64, xt, axes),
                                      q.broadcast(tf.cast(s, tf.float64), xt, axes), q.grid, float(q.budget),
                                      q.reduce_axes(xt, norm_axes))

    def run(f):
        def step(xt, dyt, t, d):
            with tf.GradientTape() as tape:
                tape.watch([xt, t, d])
                y = f(xt, t, d)
            return [y] + tape.gradient(y, [xt, t, d], output_gradients=dyt)

        args = [tf.constant(a) for a in (x, dy, t0, d0)]
        if not graph:
            return [v.numpy() for v in step(*args)]
        specs = [tf.TensorSpec(a.shape, tf.float32) for a in args]
        return [v.numpy() for v in tf.function(step).get_concrete_function(*specs)(*args)]

    _assert_same_bits(run(fused), run(plain))


@pytest.mark.parametrize("preset", ["dorefa", "a2q"])
def test_a_model_trains_to_the_same_bits_with_the_fused_weight_transforms(preset, monkeypatch):
    """Two training steps of a model whose large kernel takes DoReFa's or A2Q's fused weight transform leave
    every weight and quantizer variable with the bits of the same steps run on the plain ops (calibration,
    the quantizers' data-dependent starts and the training function included)."""
    import qresearch
    from qresearch._compat import keras

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 160)).astype("float32")
    y = rng.integers(0, 10, 64)

    def train():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((160,)), keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dense(10)])
        q = qresearch.quantize(model, preset, calibration_data=x[:32])
        q.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        q.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        return [v.numpy() for v in q.variables]

    assert 160 * 128 >= ops.FUSED_MIN_ELEMENTS
    fused = train()
    monkeypatch.setattr(ops, "FUSED_MIN_ELEMENTS", 10**9)   # every tensor through the plain ops
    plain = train()
    _assert_same_bits([np.asarray(v, np.float32).ravel() for v in fused if v.dtype == np.float32],
                      [np.asarray(v, np.float32).ravel() for v in plain if v.dtype == np.float32])
