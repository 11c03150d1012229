"""A2Q (Colbert et al., ICCV 2023) against a numpy transcription of its bound and forward, written here.

Nothing below reads qresearch's formulas: the budget ``L = floor((2^(P-1)-1) / max|x|)``, the forward
``q = clip(round(g·v/(||v||_1·s)))`` (toward zero in channels whose nearest rounding breaks the budget) and the
closed-form straight-through gradients are re-derived in numpy (float64), and every bound is checked on integers
in int64.
"""
import json

import numpy as np
import pytest

from .conftest import build, grads, run
from qresearch._compat import keras, tf
from qresearch.errors import ConfigError
from qresearch.quantizers import create

LN2 = np.log(2.0)


# ----------------------------------------------------------------- numpy reference
def max_x(n, signed):
    return 2 ** (n - 1) if signed else 2**n - 1


def budget(p, n, signed):
    return (2 ** (p - 1) - 1) // max_x(n, signed)


def ref_integers(v, t, d, bits, L, narrow=True):
    """Integer weights of A2Q for kernel ``v`` (output channels last), log2 step ``t`` (per channel or
    scalar) and log2 norm ``d`` (per channel). Float64 throughout; the step as the float32 TF uses."""
    qp = 2 ** (bits - 1) - 1
    qn = qp if narrow else qp + 1
    s = np.float32(np.exp2(np.float64(t))).astype(np.float64)
    g = np.minimum(np.exp2(np.float64(d)), L * s)
    red = tuple(range(v.ndim - 1))
    n = np.maximum(np.abs(v.astype(np.float64)).sum(axis=red), 1e-30)
    u = np.clip(g * v / (n * s), -qn, qp)
    near = np.round(u)
    zero = np.trunc(u)
    fits = np.abs(near).sum(axis=red) <= L
    return np.where(fits, near, zero), u, s, g, n


def ref_grads(v, t, d, bits, L, r):
    """Closed-form gradients of Σ r·y, y = s·q (straight-through round, autodiff clip), w.r.t. v, t, d.

    inside = not clipped. dy/ds = q - u·inside; dy/dg = inside·v/n; dy_i/dv_j = (g/n)·inside_i·(δ_ij -
    v_i·sign(v_j)/n). s = 2^t, g = min(2^d, L·s): dg/dd = ln2·g where 2^d is the smaller, else dg/dt = ln2·g.
    """
    qp = 2 ** (bits - 1) - 1
    q, u, s, g, n = ref_integers(v, t, d, bits, L)
    raw = g * v / (n * s)
    inside = (raw > -qp) & (raw < qp)
    red = tuple(range(v.ndim - 1))
    dl_ds = (r * (q - u * inside)).sum(axis=red)
    dl_dg = (r * inside * v / n).sum(axis=red)
    active = np.exp2(np.float64(d)) > L * s
    dl_dt = LN2 * s * dl_ds + np.where(active, LN2 * g * dl_dg, 0.0)
    dl_dd = np.where(active, 0.0, LN2 * g * dl_dg)
    ri = r * inside
    dl_dv = (g / n) * (ri - np.sign(v) * (ri * v).sum(axis=red) / n)
    return dl_dv, dl_dt, dl_dd


def kernel(shape, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(*shape) * np.linspace(0.05, 1.0, shape[-1])).astype("float32")


def integers_of(y, s):
    """The integer weights a float output holds on steps ``s``, checked to be integers."""
    qf = y.astype(np.float64) / np.asarray(s, np.float64)
    q = np.round(qf)
    np.testing.assert_allclose(qf, q, atol=1e-4)
    return q.astype(np.int64)


def a2q(bits, p, n, signed=False, **kw):
    return create({"name": "a2q", "bits": bits, "accumulator_bits": p, "input_bits": n, "input_signed": signed,
                   **kw}, role="weights")


# (bits, P, N, input_signed, bound binds for a plain min-max grid?)
CASES = [
    (4, 16, 8, False, True),
    (8, 32, 8, False, False),
    (8, 20, 8, True, True),
    (2, 12, 8, False, True),
    (16, 24, 8, False, True),
    (3, 12, 4, False, None),
    (8, 24, 4, True, False),
]


# ------------------------------------------------------------------------- the bound
@pytest.mark.parametrize("bits, p, n, signed, binds", CASES)
@pytest.mark.parametrize("per_channel", [True, False])
def test_bound_holds_after_rounding(bits, p, n, signed, binds, per_channel):
    x = kernel((3, 3, 16, 6), seed=bits + p)
    q = a2q(bits, p, n, signed, per_channel=per_channel)
    L = budget(p, n, signed)
    assert q.budget == L
    w = build(q, x.shape)
    y = run(q, x, w)                                   # training pass: initialises t, d
    t, d = w["log2_step"].numpy(), w["log2_norm"].numpy()
    s = np.exp2(np.float64(t)).astype(np.float32)
    ints = integers_of(y, s)
    l1 = np.abs(ints).sum(axis=(0, 1, 2))
    assert (l1 <= L).all(), (l1, L)
    assert (l1 * max_x(n, signed) <= 2 ** (p - 1) - 1).all()
    assert np.abs(ints).max() <= 2 ** (bits - 1) - 1
    # The numpy reference gives the same integers.
    expected, *_ = ref_integers(x, t, d, bits, L)
    np.testing.assert_array_equal(ints, expected)
    # Initialisation: s = max|v|/Qp (one per channel, or for the tensor), g = ||v||_1.
    qp = 2 ** (bits - 1) - 1
    max_abs = np.abs(x).max(axis=(0, 1, 2)) if per_channel else np.abs(x).max()
    np.testing.assert_allclose(2.0**t, max_abs / qp, rtol=1e-5)
    np.testing.assert_allclose(2.0**d, np.abs(x).sum(axis=(0, 1, 2)), rtol=1e-5)
    # Does the bound bind? A plain symmetric min-max grid with the same step breaks it exactly when it does.
    plain = np.abs(np.round(np.clip(x / s, -qp, qp))).sum(axis=(0, 1, 2))
    if binds is not None:
        assert (plain > L).any() == binds, (plain, L)
    # Inference: one FakeQuant per channel over [-Qp·s, Qp·s] holding the same integers.
    y_inf = run(q, x, w, training=False)
    np.testing.assert_array_equal(integers_of(y_inf, s), ints)


def test_bound_holds_before_initialisation_and_in_every_channel_layout():
    """Inference before any data uses the estimate from the weights; depthwise-like 2-axis channels."""
    x = kernel((3, 3, 4, 2), seed=3)
    q = a2q(4, 14, 8, axis=[2, 3])
    w = build(q, x.shape)
    y = run(q, x, w, training=False)
    L = budget(14, 8, False)
    max_abs = np.abs(x).max(axis=(0, 1))
    s = np.exp2(np.float32(np.log(max_abs / 7.0) / np.log(2.0))).astype(np.float32)
    ints = integers_of(y, s)
    assert (np.abs(ints).sum(axis=(0, 1)) <= L).all()
    assert w["initialized"].numpy() == 0.0


@pytest.mark.parametrize("per_channel", [True, False])
def test_init_max_keeps_the_weights_scale_with_the_same_integers(per_channel):
    """``init: max``: step ``max(max|v|/Qp, ||v||_1/L)`` (for the tensor: the largest channel's), norm ``||v||_1``.
    Where the bound binds it holds ``paper``'s integers on a larger step, so ``s·q`` is nearer ``v`` (not shrunk);
    where it does not, it is ``paper``."""
    x = kernel((5, 5, 6, 8), seed=11)
    x[..., :3] *= np.random.RandomState(1).rand(5, 5, 6, 3) < 0.1   # sparse channels: the bound is loose there
    bits, p, n = 4, 16, 8
    L, qp = budget(p, n, False), 2 ** (bits - 1) - 1
    paper, full = a2q(bits, p, n, per_channel=per_channel), a2q(bits, p, n, per_channel=per_channel, init="max")
    wp, wf = build(paper, x.shape), build(full, x.shape)
    yp, yf = run(paper, x, wp), run(full, x, wf)
    l1, max_abs = np.abs(x).sum(axis=(0, 1, 2)), np.abs(x).max(axis=(0, 1, 2))
    expect = np.maximum(max_abs / qp, l1 / L) if per_channel else max(max_abs.max() / qp, l1.max() / L)
    s_full = np.exp2(np.float64(wf["log2_step"].numpy())).astype(np.float32)
    np.testing.assert_allclose(s_full, expect, rtol=1e-5)
    np.testing.assert_allclose(2.0 ** wf["log2_norm"].numpy(), l1, rtol=1e-5)
    s_paper = np.exp2(np.float64(wp["log2_step"].numpy())).astype(np.float32)
    ints_p, ints_f = integers_of(yp, s_paper), integers_of(yf, s_full)
    binds = (np.abs(np.round(x / s_paper)).sum(axis=(0, 1, 2)) > L)
    assert binds.any() and not binds.all(), "the case needs binding and loose channels"
    assert (np.abs(ints_f).sum(axis=(0, 1, 2)) <= L).all()
    if per_channel:
        np.testing.assert_array_equal(ints_f, ints_p)      # same integers, only the step differs
        np.testing.assert_array_equal(yf[..., ~binds], yp[..., ~binds])
    err = lambda y: np.square(y.astype(np.float64) - x).sum(axis=(0, 1, 2))  # noqa: E731
    # Rounded toward zero, s·q never overshoots v, so a larger step only brings it nearer; here over the channels
    # the bound binds (some keep nearest rounding, which can overshoot: not asserted channel by channel).
    assert err(yf)[binds].sum() < 0.8 * err(yp)[binds].sum(), (err(yf), err(yp))
    # Inference holds the same integers on the same step.
    np.testing.assert_array_equal(integers_of(run(full, x, wf, training=False), s_full), ints_f)


@pytest.mark.parametrize("rule", ["mse", "percentile"])
def test_init_rules_a2q_does_not_implement_are_refused(rule):
    with pytest.raises(ConfigError, match=r"init must be one of 'paper', 'max'.*" + rule):
        a2q(4, 16, 8, init=rule)


def test_inference_traced_after_initialisation_carries_no_estimate():
    """Before any data the inference pass estimates the step from the weights (tested above); a graph traced
    once the flag is set reads the variables only (the estimate's logs are absent), with the same values."""
    x = kernel((3, 3, 8, 4), seed=5)
    q = a2q(4, 16, 8)
    w = build(q, x.shape)

    def inference_graph():
        fn = tf.function(lambda v: q(v, False, w))
        return fn, {op.type for op in fn.get_concrete_function(tf.constant(x)).graph.get_operations()}

    fn, ops_before = inference_graph()
    assert "Log" in ops_before
    run(q, x, w)                                   # the training pass initialises t and d
    eager = run(q, x, w, training=False)
    fn, ops_after = inference_graph()
    assert "Log" not in ops_after
    np.testing.assert_array_equal(fn(tf.constant(x)).numpy(), eager)


def test_zero_channel_and_zero_kernel_give_zeros():
    x = kernel((8, 3))
    x[:, 1] = 0.0
    q = a2q(4, 16, 8)
    w = build(q, x.shape)
    y = run(q, x, w)
    assert np.isfinite(y).all() and (y[:, 1] == 0).all() and (y[:, 0] != 0).any()
    q2 = a2q(4, 16, 8)
    w2 = build(q2, x.shape)
    assert (run(q2, np.zeros_like(x), w2) == 0).all()


# ------------------------------------------------------------- inactive = plain grid
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_inactive_equals_plain_symmetric_per_channel(bits):
    """With a loose accumulator (P=32) A2Q is the symmetric narrow per-channel grid with step max|v|/Qp:
    min-max's weights, the same integers (ties aside: none in random data)."""
    x = kernel((3, 3, 8, 5), seed=bits)
    q = a2q(bits, 32, 8)
    mm = create({"name": "minmax", "bits": bits, "per_channel": True}, role="weights")
    wq, wm = build(q, x.shape), build(mm, x.shape)
    qp = 2 ** (bits - 1) - 1
    s = (np.abs(x).max(axis=(0, 1, 2)) / qp).astype(np.float32)
    for training in (True, False):
        y_a2q, y_mm = run(q, x, wq, training), run(mm, x, wm, training)
        np.testing.assert_array_equal(integers_of(y_a2q, s), integers_of(y_mm, s))
        np.testing.assert_allclose(y_a2q, y_mm, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------- gradients
@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize("bits", [3, 8])
def test_gradients_match_closed_form(active, bits):
    x = kernel((4, 6, 3), seed=7 + bits)
    p, n = 14, 8
    L = budget(p, n, False)
    q = a2q(bits, p, n)
    w = build(q, x.shape)
    qp = 2 ** (bits - 1) - 1
    # A step a bit below max|v|/Qp (some weights clip); the norm below (inactive) or above (active) L·s.
    t = np.log2(np.abs(x).max(axis=(0, 1)) / qp * 0.8).astype(np.float32)
    norm = np.abs(x).sum(axis=(0, 1))
    d = np.log2(np.minimum(norm, 0.5 * L * 2.0**t) if not active else np.maximum(norm, 2.0 * L * 2.0**t))
    w["log2_step"].assign(t)
    w["log2_norm"].assign(d.astype(np.float32))
    w["initialized"].assign(1.0)
    d = w["log2_norm"].numpy()
    r = np.random.RandomState(5).randn(*x.shape).astype("float32")
    gx, gt, gd = grads(q, x, w, r, [w["log2_step"], w["log2_norm"]])
    ex, et, ed = ref_grads(x.astype(np.float64), t, d, bits, L, r.astype(np.float64))
    np.testing.assert_allclose(gt, et, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gd, ed, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gx, ex, rtol=1e-4, atol=1e-6 * np.abs(ex).max())
    if active:
        assert np.all(gd == 0.0)  # the norm is clamped at L·s: its gradient goes to the step


def test_step_gradient_against_finite_difference():
    """A check of the closed form itself: with rounding frozen (the STE's assumption), dL/dt of the
    unrounded forward by central differences equals the closed form's value."""
    x = kernel((5, 4), seed=11).astype(np.float64)
    bits, L = 4, budget(13, 8, False)
    t = np.log2(np.abs(x).max(axis=0) / 7 * 0.9)
    d = np.log2(np.abs(x).sum(axis=0) * 0.5)
    r = np.random.RandomState(2).randn(*x.shape)
    q, *_ = ref_integers(x, t, d, bits, L)

    def loss(tt, dd):
        s = np.exp2(tt)
        g = np.minimum(np.exp2(dd), L * s)
        u = np.clip(g * x / (np.abs(x).sum(axis=0) * s), -7, 7)
        return (r * s * (u + (q - ref_integers(x, t, d, bits, L)[1]))).sum()  # rounding offset frozen

    h = 1e-6
    for c in range(x.shape[1]):
        e = np.zeros_like(t)
        e[c] = h
        fd_t = (loss(t + e, d) - loss(t - e, d)) / (2 * h)
        fd_d = (loss(t, d + e) - loss(t, d - e)) / (2 * h)
        _, et, ed = ref_grads(x, np.float32(t), d, bits, L, r)
        np.testing.assert_allclose(fd_t, et[c], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(fd_d, ed[c], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------- worst-case accumulation
def worst_case_inputs(ints, n, signed):
    """Per output channel: every input at an extreme, with the signs that maximise and that minimise the sum."""
    lo, hi = (-(2 ** (n - 1)), 2 ** (n - 1) - 1) if signed else (0, 2**n - 1)
    return [np.where(ints > 0, hi, lo), np.where(ints > 0, lo, hi)]


@pytest.mark.parametrize("layer_kind", ["dense", "conv"])
@pytest.mark.parametrize("bits, p, n, signed", [(4, 16, 8, False), (8, 18, 6, True), (8, 20, 8, False)])
def test_worst_case_input_fits_the_accumulator(layer_kind, bits, p, n, signed):
    shape = (96, 4) if layer_kind == "dense" else (3, 3, 12, 4)
    x = kernel(shape, seed=p)
    q = a2q(bits, p, n, signed)
    w = build(q, x.shape)
    run(q, x, w)
    s = np.exp2(np.float64(w["log2_step"].numpy())).astype(np.float32)
    ints = integers_of(run(q, x, w, training=False), s)
    lo, hi = -(2 ** (p - 1)), 2 ** (p - 1) - 1
    if layer_kind == "dense":
        layer = keras.layers.Dense(shape[-1], use_bias=False)
    else:
        layer = keras.layers.Conv2D(shape[-1], 3, use_bias=False)
    layer.build((None,) + ((shape[0],) if layer_kind == "dense" else (3, 3, shape[2])))
    layer.set_weights([ints.astype("float32")])
    worst_seen = 0
    for c in range(shape[-1]):
        for xin in worst_case_inputs(ints[..., c], n, signed):
            xin = xin.astype(np.int64)
            want = int((xin * ints[..., c]).sum())                     # numpy int64
            got = layer(xin[None].astype("float32")).numpy().reshape(-1)[c]  # the Keras layer, exact below 2^24
            assert got == want
            assert lo <= want <= hi, (want, lo, hi)
            worst_seen = max(worst_seen, abs(want))
    # The extremes are real: the largest one uses most of the budget when the bound binds.
    l1 = np.abs(ints).reshape(-1, shape[-1]).sum(axis=0)
    assert worst_seen >= l1.max() * (2 ** (n - 1) - 1 if signed else 2**n - 1) // 2


def test_plain_quantizer_would_overflow_where_a2q_does_not():
    """The worst case of the min-max grid at 4 bits overflows a 12-bit accumulator; A2Q's does not."""
    x = kernel((64, 3), seed=1)
    mm = create({"name": "minmax", "bits": 4, "per_channel": True}, role="weights")
    wm = build(mm, x.shape)
    s = (np.abs(x).max(axis=0) / 7).astype(np.float32)
    plain = integers_of(run(mm, x, wm), s)
    assert (np.abs(plain).sum(axis=0) * 255 > 2**11 - 1).any()
    q = a2q(4, 12, 8)
    w = build(q, x.shape)
    y = run(q, x, w)
    ints = integers_of(y, np.exp2(np.float64(w["log2_step"].numpy())).astype(np.float32))
    assert (np.abs(ints).sum(axis=0) * 255 <= 2**11 - 1).all()


# ----------------------------------------------------------------- config and errors
def test_config_round_trips_and_defaults():
    spec = {"name": "a2q", "bits": 4, "accumulator_bits": 14, "input_bits": 6, "input_signed": True,
            "per_channel": False, "narrow_range": False, "axis": -1}
    q = create(spec)
    cfg = q.get_config()
    again = type(q).from_config(json.loads(json.dumps(cfg)))
    assert again == q and again.get_config() == cfg
    assert create({"name": "a2q", **cfg}) == q
    d = create("a2q", role="weights").get_config()
    assert d["per_channel"] and d["symmetric"] and d["narrow_range"] and d["signed"]
    assert d["accumulator_bits"] == 32 and d["input_bits"] == 8 and d["input_signed"] is False


@pytest.mark.parametrize("spec, fragments", [
    ({"accumulator_bits": 8, "input_bits": 8}, ["accumulator_bits=8", "accumulator_bits >= 9", "input_bits"]),
    ({"accumulator_bits": 8, "input_bits": 8, "input_signed": True}, ["accumulator_bits >= 9"]),
    ({"accumulator_bits": 4, "input_bits": 4}, ["accumulator_bits >= 5"]),
    ({"accumulator_bits": 1}, ["accumulator_bits", "[2, 64]"]),
    ({"accumulator_bits": 16.0}, ["accumulator_bits", "integer"]),
    ({"input_bits": 0}, ["input_bits", "[1, 32]"]),
    ({"input_signed": "no"}, ["input_signed", "true or false"]),
    ({"symmetric": False}, ["symmetric: true"]),
    ({"signed": False}, ["signed: true"]),
])
def test_bad_params_name_the_fix(spec, fragments):
    with pytest.raises(ConfigError) as info:
        create({"name": "a2q", **spec})
    msg = str(info.value)
    assert "'a2q'" in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_smallest_accumulator_keeps_one_level():
    """P = N + 1: L = 1, one weight of magnitude 1 per channel at most."""
    x = kernel((10, 3))
    q = a2q(4, 9, 8)
    assert q.budget == 1
    w = build(q, x.shape)
    ints = integers_of(run(q, x, w), np.exp2(np.float64(w["log2_step"].numpy())).astype(np.float32))
    assert (np.abs(ints).sum(axis=0) <= 1).all()


def test_refused_for_activations():
    with pytest.raises(ConfigError, match="for weights"):
        build(a2q(4, 16, 8, per_channel=False), None, name="post_activation")


# -------------------------------------------------------------------- in a scheme
SCHEME = {"weights": {"quantizer": "a2q", "bits": 4, "accumulator_bits": 16, "norm_penalty": 1e-3},
          "activations": {"quantizer": "minmax", "bits": 8}}


@pytest.mark.parametrize("scheme", [SCHEME, "a2q"], ids=["dict", "preset"])
def test_trains_inside_a_scheme_and_keeps_the_bound(scheme):
    import qresearch

    rng = np.random.RandomState(0)
    x = rng.randn(128, 16).astype("float32")
    y = (x[:, :4].sum(axis=1) > 0).astype("int64")
    inputs = keras.Input((16,))
    h = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(h))
    qmodel = qresearch.quantize(model, scheme, calibration_data=x[:32])
    assert len(qmodel.losses) == (2 if scheme is SCHEME else 0)  # the norm penalty of each A2Q layer, if asked
    qmodel.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = qmodel.fit(x, y, batch_size=32, epochs=4, verbose=0, shuffle=False).history["loss"]
    assert np.isfinite(hist).all() and hist[-1] < hist[0], hist
    L = budget(16, 8, False)
    checked = 0
    for layer in qmodel.layers:
        for weight, quantizer, qvars in getattr(layer, "_weight_vars", []):
            if quantizer.registry_name != "a2q":
                continue
            s = np.exp2(np.float64(qvars["log2_step"].numpy())).astype(np.float32)
            ints = integers_of(quantizer(weight, False, qvars).numpy(), s)
            assert (np.abs(ints).sum(axis=0) <= L).all()
            checked += 1
    assert checked == 2
    assert np.isfinite(qmodel(x, training=False).numpy()).all()


def test_integer_emulation_reads_the_grid():
    """On tflite_int8 (per-tensor Dense weights, forced by the target) the integer-kernel emulation reads A2Q's
    grid from its one FakeQuant and computes what the float simulation computes, up to requantization."""
    import qresearch
    from qresearch.kernels import fake_quant_range

    x = np.random.RandomState(0).rand(32, 8, 8, 3).astype("float32")
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(h)))
    scheme = {"weights": {"quantizer": "a2q", "bits": 8, "accumulator_bits": 18},
              "activations": {"quantizer": "minmax", "bits": 8}}
    outs = {}
    for kernels in ("target", None):
        qm = qresearch.quantize(model, scheme, hardware="tflite_int8", calibration_data=x, kernels=kernels,
                                adapt=True)
        assert qm.qresearch_info["kernels"] == ("tflite_builtin" if kernels else None)
        outs[kernels] = qm(x, training=False).numpy()
        a2q_weights = [(w, q, v) for layer in qm.layers for w, q, v in getattr(layer, "_weight_vars", [])
                       if q.registry_name == "a2q"]
        assert len(a2q_weights) == 3
        for weight, quantizer, qvars in a2q_weights:  # the emulation's reading of the grid: one FakeQuant
            assert fake_quant_range(quantizer, qvars, weight) is not None
    scale = np.abs(outs[None]).max()
    np.testing.assert_allclose(outs["target"], outs[None], atol=0.05 * scale)


# ------------------------------------------------------------------------- TFLite
@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")
def test_tflite_stores_the_bounded_integers():
    """The converter reads the one FakeQuant per channel: the int8 filters it stores are A2Q's integers, within
    the budget, and the converted model computes what the Keras model computes."""
    from ai_edge_litert.interpreter import Interpreter

    from .conftest import KernelActivationConfig, toy_data
    from qresearch._compat import tfmot

    p, n = 18, 8
    L = budget(p, n, False)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv2")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(h)))

    def annotate(layer):
        if not hasattr(layer, "kernel"):
            return layer
        per_channel = not isinstance(layer, keras.layers.Dense)  # per-channel Dense does not convert (TF 2.21)
        act = create({"name": "minmax", "bits": 8}, role="activations") if layer.name != "logits" else None
        config = KernelActivationConfig(a2q(8, p, n, per_channel=per_channel), act)
        return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with tfmot.quantization.keras.quantize_scope({"KernelActivationConfig": KernelActivationConfig}):
        qmodel = tfmot.quantization.keras.quantize_apply(annotated)
    x, y = toy_data(32)
    qmodel.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, batch_size=16, epochs=1, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(qmodel)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    kernel_ops = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    filters = {op["op_name"]: details[op["inputs"][1]] for op in kernel_ops}
    # The convolutions run int8; the logits (no output quantizer here) stay float, on A2Q's grid values.
    convs = [details[op["inputs"][1]] for op in kernel_ops if op["op_name"] == "CONV_2D"]
    assert len(convs) == 2 and all(t["dtype"] == np.int8 for t in convs)
    for t in convs:
        ints = interpreter.get_tensor(t["index"]).astype(np.int64)
        per_out = np.abs(ints.reshape(ints.shape[0], -1)).sum(axis=1)  # TFLite filters: output channels first
        assert (per_out <= L).all(), (t["name"], per_out, L)
        assert (per_out * 255 <= 2 ** (p - 1) - 1).all()
        assert per_out.max() > L // 2  # the budget is used, not trivially met
    fc = interpreter.get_tensor(filters["FULLY_CONNECTED"]["index"])  # (out, in)
    wrapper = qmodel.get_layer("quant_logits")
    (_, _, qvars), = wrapper._weight_vars
    ints = integers_of(fc.T, np.exp2(np.float64(qvars["log2_step"].numpy())).astype(np.float32))
    assert (np.abs(ints).sum(axis=0) <= L).all()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [8, 6, 6, 2])
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x[:8])
    interpreter.invoke()
    want = qmodel(x[:8], training=False).numpy()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), want, atol=0.03 * np.abs(want).max())


def test_saves_and_loads(tmp_path):
    import qresearch

    x = np.random.RandomState(0).randn(64, 16).astype("float32")
    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(inputs)))
    qmodel = qresearch.quantize(model, "a2q", calibration_data=x)
    qmodel.compile(keras.optimizers.Adam(0.01), "mse")
    qmodel.fit(x, np.ones((64, 2), "float32"), epochs=1, verbose=0)
    qmodel.save(str(tmp_path / "m"))
    loaded = qresearch.load_model(str(tmp_path / "m"))
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), qmodel(x, training=False).numpy())


def test_norm_penalty_pulls_the_clamped_norm_back():
    """The paper's penalty λ·Σ max(d - T - t, 0): a layer loss with gradient λ on d (-λ on t) where the norm
    is clamped, 0 elsewhere; absent when norm_penalty is 0."""
    x = kernel((3, 3, 16, 6), seed=4)
    layer = keras.layers.Layer()
    q = a2q(4, 16, 8, norm_penalty=0.01)
    w = build(q, x.shape, layer=layer)
    run(q, x, w)  # initialise: g = ||v||_1, above L·s in the channels where the bound binds
    t, d = w["log2_step"].numpy().astype(np.float64), w["log2_norm"].numpy().astype(np.float64)
    excess = d - np.log2(budget(16, 8, False)) - t
    assert (excess > 0).any()
    with tf.GradientTape() as tape:
        loss = tf.add_n(layer.losses)
    gt, gd = tape.gradient(loss, [w["log2_step"], w["log2_norm"]])
    np.testing.assert_allclose(loss.numpy(), 0.01 * np.maximum(excess, 0).sum(), rtol=1e-5)
    np.testing.assert_allclose(gd.numpy(), 0.01 * (excess > 0))
    np.testing.assert_allclose(gt.numpy(), -0.01 * (excess > 0))
    plain = keras.layers.Layer()
    build(a2q(4, 16, 8), x.shape, layer=plain)
    assert plain.losses == []


def test_power_of_two_steps_keep_the_bound():
    x = kernel((3, 3, 16, 6), seed=9)
    q = a2q(4, 15, 8, scale_format="pot")
    w = build(q, x.shape)
    y = run(q, x, w)
    s = np.exp2(np.ceil(w["log2_step"].numpy().astype(np.float64))).astype(np.float32)
    assert (s >= np.abs(x).max(axis=(0, 1, 2)) / 7 * (1 - 1e-6)).all()  # ceil: never a finer step
    ints = integers_of(y, s)
    assert (np.abs(ints).sum(axis=(0, 1, 2)) <= budget(15, 8, False)).all()
    np.testing.assert_array_equal(integers_of(run(q, x, w, training=False), s), ints)
