"""bn_folding: fold_batch_stats (schemes/batch_stats_fold.py, Krishnamoorthi 2018 §3.2.2) against numpy: the
training forward with batch statistics and the correction, the frozen form after bn_freeze_steps and in
inference, moving statistics as Keras' BatchNormalization moves them, gradients to W, b, γ, β against an
independent TF expression, the plan, save/load."""
import numpy as np
import pytest

import qresearch
from qresearch._compat import keras, tf
from qresearch.schemes import BatchStatsFold
from qresearch.schemes.folding import fold_weights

from .helpers import randomize_bn

f32 = np.float32
EPS = 1e-3
MOMENTUM = 0.9
SCHEME = {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True}, "activations": None,
          "bn_folding": "fold_batch_stats", "bn_freeze_steps": 2}
KINDS = ("conv", "depthwise", "dense")


def _model(kind, seed=0):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    if kind == "dense":
        inp = keras.Input((5,))
        h = L.Dense(4, name="lin")(inp)
    else:
        inp = keras.Input((6, 6, 3))
        h = L.Conv2D(4, 3, name="lin")(inp) if kind == "conv" else \
            L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="lin")(inp)
    out = L.BatchNormalization(momentum=MOMENTUM, epsilon=EPS, name="bn")(h)
    return randomize_bn(keras.Model(inp, out), seed)


def _data(kind, n=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5) if kind == "dense" else (n, 6, 6, 3)).astype(f32)


# ------------------------------------------------------------------ numpy references
def np_linear(kind, x, w):
    if kind == "dense":
        return x @ w
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # (n, 4, 4, c, 3, 3)
    if kind == "conv":
        return np.einsum("nijcab,abco->nijo", win, w)
    y = np.einsum("nijcab,abcm->nijcm", win, w)
    return y.reshape(y.shape[:3] + (-1,))  # output channel c·multiplier + m


def np_fold(kind, w, g):
    return w * (g.reshape(w.shape[-2], w.shape[-1]) if kind == "depthwise" else g)


def np_fake_quant(kind, w):
    """The weight quantizer in training (minmax, 8 bits, per channel, symmetric narrow): TF's FakeQuant on
    [-127·s, 127·s], s = max|w|/127 per output channel, rounding half up."""
    flat = w.reshape(-1, w.shape[-2] * w.shape[-1]) if kind == "depthwise" else w.reshape(-1, w.shape[-1])
    s = (np.abs(flat).max(axis=0) * f32(1 / 127)).astype(f32)
    lo = -127 * s
    q = np.floor((np.clip(flat, lo, 127 * s) - lo) / s + f32(0.5)) * s + lo
    return q.reshape(w.shape).astype(f32)


class State:
    def __init__(self, w):
        self.kernel = w._kernel.numpy()
        self.bias = w.layer.bias.numpy()
        self.gamma, self.beta = w.bn_gamma.numpy(), w.bn_beta.numpy()
        self.mean, self.var = w.bn_moving_mean.numpy(), w.bn_moving_variance.numpy()


def np_batch_stats_forward(kind, x, s: State):
    y = np_linear(kind, x, s.kernel) + s.bias
    axes = tuple(range(y.ndim - 1))
    mean_b, var_b = y.mean(axes), y.var(axes)
    sigma_b, sigma = np.sqrt(var_b + EPS), np.sqrt(s.var + EPS)
    wq = np_fake_quant(kind, np_fold(kind, s.kernel, s.gamma / sigma))
    out = np_linear(kind, x, wq) * (sigma / sigma_b) + s.beta + s.gamma * (s.bias - mean_b) / sigma_b
    n = y.size // y.shape[-1]
    unbiased = var_b * n / (n - 1) if kind != "dense" else var_b  # Keras' fused kernel (4-D): unbiased
    new_mean = s.mean - (s.mean - mean_b) * (1 - MOMENTUM)
    new_var = s.var - (s.var - unbiased) * (1 - MOMENTUM)
    return out, new_mean, new_var


def np_frozen_forward(kind, x, s: State):
    g = s.gamma / np.sqrt(s.var + EPS)
    return np_linear(kind, x, np_fake_quant(kind, np_fold(kind, s.kernel, g))) + s.beta + (s.bias - s.mean) * g


def _qat(kind, **scheme):
    m = _model(kind)
    return m, qresearch.quantize(m, dict(SCHEME, **scheme), calibration_data=_data(kind, seed=2))


def _wrapper(q) -> BatchStatsFold:
    (w,) = [layer for layer in q.layers if isinstance(layer, BatchStatsFold)]
    return w


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("kind", KINDS)
def test_training_forward_then_freeze_then_inference_against_numpy(kind):
    m, q = _qat(kind)
    w = _wrapper(q)
    assert w.freeze_steps == 2 and w.batch_norm["momentum"] == MOMENTUM
    assert w.batch_norm["unbiased_variance"] == (kind != "dense")
    x = _data(kind)
    keras_bn = keras.models.clone_model(m)  # the float model, for Keras' own moving-statistics update
    keras_bn.set_weights(m.get_weights())
    for step in range(2):  # batch statistics, corrected; moving statistics move
        s = State(w)
        out = q(x, training=True).numpy()
        ref, mean, var = np_batch_stats_forward(kind, x, s)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(w.bn_moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w.bn_moving_variance.numpy(), var, rtol=1e-5, atol=1e-6)
        keras_out = keras_bn(x, training=True).numpy()
        bn = keras_bn.get_layer("bn")
        np.testing.assert_allclose(w.bn_moving_mean.numpy(), bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w.bn_moving_variance.numpy(), bn.moving_variance.numpy(), rtol=1e-5, atol=1e-6)
        # the forward is the batch-normalised output, up to the 8-bit weights
        assert np.abs(out - keras_out).max() < 0.05 * np.abs(keras_out).max()
    s = State(w)
    frozen = q(x, training=True).numpy()  # step 2 = bn_freeze_steps: the inference form, statistics frozen
    np.testing.assert_allclose(frozen, np_frozen_forward(kind, x, s), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(w.bn_moving_mean.numpy(), s.mean)
    np.testing.assert_array_equal(w.bn_moving_variance.numpy(), s.var)
    assert int(w.bn_steps.numpy()) == 3
    np.testing.assert_allclose(q(x, training=False).numpy(), np_frozen_forward(kind, x, s), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_inference_is_the_static_fold_of_the_current_weights(kind):
    m, q = _qat(kind, bn_freeze_steps=None)
    w = _wrapper(q)
    x = _data(kind)
    before = q(x, training=False).numpy()
    np.testing.assert_allclose(before, m(x, training=False).numpy(), rtol=0.05, atol=0.05)  # float model, 8 bits
    q(x, training=True)  # moves the statistics
    bn = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    bn.build((None, w.bn_gamma.shape[0]))
    bn.set_weights([w.bn_gamma.numpy(), w.bn_beta.numpy(), w.bn_moving_mean.numpy(), w.bn_moving_variance.numpy()])
    attr = "depthwise_kernel" if kind == "depthwise" else "kernel"
    want = fold_weights(w.layer, bn, (attr, {"depthwise": lambda k, g: np_fold("depthwise", k, g)}.get(
        kind, lambda k, g: k * g)))
    kernel, bias = w.folded()
    np.testing.assert_array_equal(kernel.numpy(), want[attr])  # the same float32 operations, bit for bit
    np.testing.assert_array_equal(bias.numpy(), want["bias"])
    assert int(w.bn_steps.numpy()) == 1  # never frozen (bn_freeze_steps: null) ...
    q(x, training=True)
    assert not np.array_equal(w.bn_moving_mean.numpy(), bn.moving_mean.numpy())  # ... still moving


def _tf_linear(kind, x, w):
    if kind == "dense":
        return tf.matmul(x, w)
    if kind == "conv":
        return tf.nn.conv2d(x, w, 1, "VALID")
    return tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "VALID")


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_w_gamma_beta_as_an_independent_expression(kind):
    _, q = _qat(kind)
    w = _wrapper(q)
    x = tf.constant(_data(kind))
    r = tf.constant(np.random.default_rng(3).normal(size=q(x, training=False).shape).astype(f32))
    kernel, bias, gamma, beta = w._kernel, w.layer.bias, w.bn_gamma, w.bn_beta
    var = tf.constant(w.bn_moving_variance.numpy())
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(q(x, training=True) * r)
    got = tape.gradient(loss, [kernel, bias, gamma, beta])

    # the paper's Figure 9 written out: BN batch statistics of conv(x, W) + b, fake-quantized W·γ/σ (straight
    # through, range from the weights' max |.|, no gradient to it), correction σ/σ_B
    with tf.GradientTape() as tape:
        y = _tf_linear(kind, x, kernel) + bias
        mean_b, var_b = tf.nn.moments(y, list(range(y.shape.rank - 1)))
        g = gamma / tf.sqrt(var + EPS)
        w_fold = kernel * (tf.reshape(g, kernel.shape[-2:]) if kind == "depthwise" else g)
        flat = tf.reshape(w_fold, [-1, int(np.prod(w_fold.shape[-2:])) if kind == "depthwise" else w_fold.shape[-1]])
        s = tf.stop_gradient(tf.reduce_max(tf.abs(flat), axis=0)) * f32(1 / 127)
        wq = tf.reshape(tf.quantization.fake_quant_with_min_max_vars_per_channel(
            flat, -127 * s, 127 * s, num_bits=8, narrow_range=True), w_fold.shape)
        sigma_b = tf.sqrt(var_b + EPS)
        out = _tf_linear(kind, x, wq) * (tf.sqrt(var + EPS) / sigma_b) + beta + gamma * (bias - mean_b) / sigma_b
        loss = tf.reduce_sum(out * r)
    want = tape.gradient(loss, [kernel, bias, gamma, beta])
    for name, a, b in zip(("W", "b", "gamma", "beta"), got, want):
        assert a is not None, name
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4, err_msg=name)
    assert np.abs(got[0].numpy()).max() > 0 and np.abs(got[2].numpy()).max() > 0


def test_the_plan_folds_with_batch_statistics_only_where_the_weight_is_quantized():
    L = keras.layers
    inp = keras.Input((6, 6, 3))
    h = L.BatchNormalization(name="bn_a")(L.Conv2D(4, 3, use_bias=False, name="a")(inp))
    h = L.BatchNormalization(name="bn_b")(L.Conv2D(4, 3, use_bias=False, name="b")(L.ReLU()(h)))
    m = keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(h)))
    spec = dict(qresearch.schemes.get("tflite_int8").to_dict(), bn_folding="fold_batch_stats",
                overrides=[{"match": "b", "weights": None}])
    q = qresearch.quantize(m, spec)
    kinds = {layer.layer.name: type(layer).__name__ for layer in q.layers if hasattr(layer, "layer")}
    assert kinds["a"] == "BatchStatsFold" and kinds["b"] != "BatchStatsFold"  # float kernel: static fold
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in q.layers)
    report = qresearch.schemes.describe(q)
    assert "trained with batch statistics" in str(report)


def test_save_load_keeps_the_layer_its_statistics_and_its_step(tmp_path):
    _, q = _qat("conv", bn_freeze_steps=5)
    x = _data("conv")
    q.compile(keras.optimizers.SGD(0.01), "mse")
    q.fit(x, np.zeros(q(x).shape, f32), batch_size=8, epochs=1, verbose=0)  # 2 steps
    w = _wrapper(q)
    assert int(w.bn_steps.numpy()) == 2
    q.save(str(tmp_path / "qat"))
    loaded = qresearch.load_model(str(tmp_path / "qat"))
    lw = _wrapper(loaded)
    assert lw.freeze_steps == 5 and int(lw.bn_steps.numpy()) == 2
    for a, b in ((w.bn_moving_mean, lw.bn_moving_mean), (w.bn_moving_variance, lw.bn_moving_variance),
                 (w.bn_gamma, lw.bn_gamma), (w._kernel, lw._kernel)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(q(x, training=False).numpy(), loaded(x, training=False).numpy())
    np.testing.assert_allclose(q(x, training=True).numpy(), loaded(x, training=True).numpy(), rtol=1e-6, atol=1e-6)


def test_bn_freeze_steps_is_checked():
    with pytest.raises(qresearch.ConfigError, match="bn_freeze_steps"):
        qresearch.schemes.SchemeSpec.from_dict(dict(SCHEME, bn_freeze_steps=-1))
    with pytest.raises(qresearch.ConfigError, match="bn_folding"):
        qresearch.schemes.SchemeSpec.from_dict(dict(SCHEME, bn_folding="fold_batch_statistics"))


def test_progressive_bits_carry_the_bn_of_a_batch_stats_fold():
    from qresearch.schemes.transfer import copy_layer_weights

    m, q = _qat("conv")
    q(_data("conv"), training=True)  # moves the statistics
    low = qresearch.quantize(m, dict(SCHEME, weights=dict(SCHEME["weights"], bits=4)))
    copy_layer_weights(q, low)
    for a, b in zip(_wrapper(q).bn_weights + [_wrapper(q)._kernel], _wrapper(low).bn_weights + [_wrapper(low)._kernel]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
