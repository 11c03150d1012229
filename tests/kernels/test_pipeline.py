"""Integer pipelines from target data (qresearch/kernels/pipeline.py, hardware/pipeline.py) against an
independent numpy reference written from the spec (tflite-int8-spec.md §2-4 and the pipeline's own rules):
FakeQuant and converter grids, integer weights and bias, accumulator width with saturation or wrapping,
fixed-point or shift requantization with each rounding, the output clamp. Bit for bit, on an MLP and a CNN,
at a wide and at narrow accumulators."""
import numpy as np
import pytest

import qresearch
from qresearch import hardware as hw
from qresearch._compat import keras, tf
from qresearch.kernels import accumulator_stats, emulated_kernels
from qresearch.kernels.pipeline import accumulate, round_shift

L = keras.layers
ROUNDING_CASES = ["half_away_from_zero", "half_up", "half_even", "floor"]


# ----------------------------------------------------------------------------- numpy reference
def ref_round_shift(v, s, rounding):
    """Python integers: v / 2^s rounded (s may be negative)."""
    if s <= 0:
        return v << -s
    q, r = v >> s, v - ((v >> s) << s)  # floor division and its remainder in [0, 2^s)
    half = 1 << (s - 1)
    if rounding == "floor":
        return q
    if rounding == "half_up":
        return q + (r >= half)
    if rounding == "half_even":
        return q + (r > half or (r == half and q % 2 == 1))
    if rounding == "half_away_from_zero":
        return q + (r > half or (r == half and v >= 0))
    raise ValueError(rounding)


def ref_wrap_or_saturate(v, bits, overflow):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if overflow == "saturate":
        return min(max(v, lo), hi)
    return (v - lo) % (1 << bits) + lo


def half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def grid(lo, hi, bits, narrow):
    """(scale, zero point, qmin, qmax) as the converter stores them: the scale in double, then float32."""
    qmin, qmax = -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    lo, hi = np.float64(lo), np.float64(hi)
    scale = np.float64(np.float32((hi - lo) / (qmax - qmin)))
    zp_min, zp_max = qmin - lo / scale, qmax - hi / scale
    zp = zp_min if abs(qmin) + abs(lo / scale) < abs(qmax) + abs(hi / scale) else zp_max
    return scale, float(half_away(np.clip(zp, qmin, qmax))), qmin, qmax


def tf_fake_quant(x, lo, hi, bits, narrow):
    """TensorFlow's FakeQuantWithMinMaxVars kernel in float32 (nudged zero point, floor(x/s + 0.5))."""
    f = np.float32
    qmin, qmax = f(1 if narrow else 0), f(2 ** bits - 1)
    lo, hi = f(lo), f(hi)
    scale = (hi - lo) / (qmax - qmin)
    zp = qmin - lo / scale
    zp = qmin if zp < qmin else qmax if zp > qmax else f(half_away(zp))
    nmin, nmax = (qmin - zp) * scale, (qmax - zp) * scale
    shifted = np.clip(x.astype(f), nmin, nmax) - nmin
    return np.floor(shifted * (f(1) / scale) + f(0.5)) * scale + nmin


def endpoints(quantizer, qvars):
    """The (min, max) a min-max quantizer hands FakeQuant: its own rule on its range variables."""
    lo, hi = quantizer.fake_quant_range(qvars["min"], qvars["max"])
    return np.asarray(lo, np.float64), np.asarray(hi, np.float64)


def multiplier(m):
    """(M, shift) with m = M·2^(shift-31), M rounded half away from frac·2^31 (spec §2.2)."""
    frac, e = np.frexp(m)
    big = int(half_away(frac * 2.0 ** 31))
    if big == 2 ** 31:
        big, e = big // 2, e + 1
    return big, int(e)


FLOAT_ROUNDING = {"half_even": np.rint, "half_away_from_zero": lambda y: np.sign(y) * np.floor(np.abs(y) + 0.5),
                  "half_up": lambda y: np.floor(y + 0.5), "floor": np.floor}


def requantize(acc, m, pipe, factors=None):
    if pipe["requantize"] == "float32":   # float32(acc)·float32(S_in·S_w/S_out), the scale formed in float32
        f = np.float32
        s_in, s_w, s_out = (f(v) for v in factors)
        return int(FLOAT_ROUNDING[pipe["rounding"]](float(f(acc) * f(f(s_in * s_w) / s_out))))
    if pipe["requantize"] == "shift":
        k = int(round(-np.log2(m)))
        assert 2.0 ** -k == m  # power-of-two scales: exact
        return ref_round_shift(acc, k, pipe["rounding"])
    big, e = multiplier(m)
    return ref_round_shift(acc * big, 31 - e, pipe["rounding"])


def ref_layer(offsets, wrapper, in_grid, pipe, acc_log):
    """One conv/dense wrapper on integer input offsets -> (output offsets, output grid)."""
    layer = wrapper.layer
    weight, wq, wv = wrapper._weight_vars[0]
    w = np.asarray(weight, np.float32)
    lo, hi = endpoints(wq, wv)
    w_fq = np.empty_like(w)
    scales = np.empty(w.shape[-1])
    for c in range(w.shape[-1]):
        w_fq[..., c] = tf_fake_quant(w[..., c], lo[c], hi[c], wq.bits, wq.narrow_range)
        scales[c] = grid(lo[c], hi[c], wq.bits, wq.narrow_range)[0]
    w_int = half_away(w_fq / scales).astype(np.int64)
    if isinstance(layer, L.Conv2D):
        kh, kw = w.shape[:2]
        patches = np.lib.stride_tricks.sliding_window_view(offsets, (kh, kw), axis=(1, 2))  # N,H',W',C,kh,kw
        acc = np.einsum("nhwcij,ijco->nhwo", patches, w_int)
    else:
        acc = offsets @ w_int
    s_in = in_grid[0]
    bias = half_away(np.asarray(layer.bias, np.float64) / (s_in * scales)).astype(np.int64)
    b_lo, b_hi = -(2 ** (pipe["bias_bits"] - 1)), 2 ** (pipe["bias_bits"] - 1) - 1
    bias = np.clip(bias, b_lo, b_hi)
    after = pipe.get("bias_add", "accumulator") == "requantize"  # the bias joins after the accumulator
    if not after:
        acc = acc + bias
    acc_log[wrapper.name] = acc
    held = np.vectorize(lambda v: ref_wrap_or_saturate(int(v), pipe["accumulator_bits"], pipe["overflow"]),
                        otypes=[np.int64])(acc)
    if after:
        held = held + bias
    oq, ov = wrapper._output_quantizers[0], wrapper._output_quantizer_vars
    s_out, z_out, qmin, qmax = grid(*endpoints(oq, ov), oq.bits, oq.narrow_range)
    out = np.empty_like(held)
    flat, flat_out = held.reshape(-1, held.shape[-1]), out.reshape(-1, out.shape[-1])
    for c in range(held.shape[-1]):
        m = s_in * scales[c] / s_out
        flat_out[:, c] = [requantize(int(v), m, pipe, (s_in, scales[c], s_out)) for v in flat[:, c]]
    relu = keras.activations.serialize(layer.activation) == "relu"
    q = np.clip(out + z_out, max(qmin, z_out) if relu else qmin, qmax)
    return (q - z_out).astype(np.int64), (s_out, z_out, qmin, qmax)


def ref_model(q, x, pipe):
    """The whole model in integers: QUANTIZE, then each compute layer (Flatten moves data only)."""
    qin = next(l for l in q.layers if type(l).__name__ == "QuantizeInput")
    g = grid(*endpoints(qin.quantizer, qin.quantizer_vars), qin.quantizer.bits, qin.quantizer.narrow_range)
    s, z, qmin, qmax = g
    offsets = (np.clip(half_away((x / np.float32(s)).astype(np.float32)) + z, qmin, qmax) - z).astype(np.int64)
    accs = {}
    for layer in q.layers:
        if isinstance(layer, qresearch.schemes.QuantizeWrapper) and layer._weight_vars:
            offsets, g = ref_layer(offsets, layer, g, pipe, accs)
        elif isinstance(getattr(layer, "layer", layer), L.Flatten):
            offsets = offsets.reshape(len(offsets), -1)
    return offsets, g, accs


# ----------------------------------------------------------------------------- models and targets
def mlp():
    inp = keras.Input((12,))
    h = L.Dense(16, activation="relu")(inp)
    return keras.Model(inp, L.Dense(5)(h))


def cnn():
    inp = keras.Input((6, 6, 3))
    h = L.Conv2D(8, 3, activation="relu")(inp)
    h = L.Conv2D(6, 3)(h)
    return keras.Model(inp, L.Dense(4)(L.Flatten()(h)))


SCHEME = {"weights": {"quantizer": "minmax", "bits": 4, "per_channel": True, "symmetric": True,
                      "narrow_range": True},
          "activations": {"quantizer": "minmax", "bits": 8}}


def target(name, pot=False, **pipe):
    d = hw.get("npu_w4a8").to_dict()
    d.update(name=name, first_last_bits=None, pipeline=dict(pipe, ops=["QUANTIZE", *hw_ops()]))
    if pot:
        for role in ("weights", "activations"):
            d[role] = dict(d[role], scale_format=["pot"], symmetry="symmetric", zero_point="zero")
        d["activations"]["bits"] = [8]
    return hw.register(name, d, overwrite=True)


def hw_ops():
    return ["CONV_2D", "FULLY_CONNECTED"]


def quantized(builder, tgt, scheme=SCHEME, seed=0):
    keras.utils.set_random_seed(seed)
    model = builder()
    for layer in model.layers:  # non-zero biases, so the bias path is exercised
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(np.random.default_rng(seed).normal(0, 0.3, layer.bias.shape))
    shape = (64,) + tuple(model.input_shape[1:])
    x = np.random.default_rng(seed + 1).uniform(-1, 2, shape).astype("float32")
    q = qresearch.quantize(model, scheme, hardware=tgt, calibration_data=x)
    return q, x


PIPES = [dict(accumulator_bits=32, overflow="wrap", bias_bits=32, requantize="fixed_point", rounding="half_away_from_zero"),
         dict(accumulator_bits=12, overflow="saturate", bias_bits=16, requantize="fixed_point", rounding="half_up"),
         dict(accumulator_bits=12, overflow="wrap", bias_bits=10, requantize="fixed_point", rounding="half_even"),
         dict(accumulator_bits=14, overflow="saturate", bias_bits=32, requantize="fixed_point", rounding="floor"),
         dict(accumulator_bits=12, overflow="wrap", bias_bits=24, bias_add="requantize", requantize="fixed_point",
              rounding="half_away_from_zero"),
         dict(accumulator_bits=32, overflow="wrap", bias_bits=32, requantize="float32", rounding="half_even"),
         dict(accumulator_bits=16, overflow="saturate", bias_bits=16, requantize="float32",
              rounding="half_away_from_zero")]


@pytest.mark.parametrize("builder", [mlp, cnn])
@pytest.mark.parametrize("pipe", PIPES, ids=lambda p: f"acc{p['accumulator_bits']}-{p['overflow']}-{p['rounding']}"
                                                     f"-bias_{p.get('bias_add', 'accumulator')}-{p['requantize']}")
def test_pipeline_matches_the_numpy_reference_bit_for_bit(builder, pipe):
    tgt = target(f"ref_{builder.__name__}_{pipe['accumulator_bits']}_{pipe['overflow']}_{pipe.get('bias_add')}_"
                 f"{pipe['requantize']}", **pipe)
    q, x = quantized(builder, tgt)
    assert q.qresearch_info["kernels"] == tgt.name
    y = q(x, training=False).numpy()
    offsets, (s, z, _, _), accs = ref_model(q, x, pipe)
    np.testing.assert_array_equal(np.round(y.astype(np.float64) / s).astype(np.int64), offsets)
    # the accumulator statistics are the reference's accumulators, before overflow handling
    stats = accumulator_stats(q, x, batch_size=16)
    bits = pipe["accumulator_bits"]
    for name, acc in accs.items():
        over = np.count_nonzero((acc < -(2 ** (bits - 1))) | (acc > 2 ** (bits - 1) - 1))
        assert stats[name]["max_abs"] == np.abs(acc).max() and stats[name]["overflowing"] == over
        assert stats[name]["outputs"] == acc.size and stats[name]["accumulator_bits"] == bits
    if bits <= 12:  # 12-bit accumulators do overflow on these models: the check has teeth
        assert sum(s["overflowing"] for s in stats.values()) > 0


def test_shift_requantization_on_power_of_two_scales():
    pipe = dict(accumulator_bits=16, overflow="saturate", bias_bits=16, requantize="shift", rounding="half_up")
    tgt = target("ref_shift", pot=True, **pipe)
    scheme = {"weights": dict(SCHEME["weights"], scale_format="pot"),
              "activations": {"quantizer": "minmax", "bits": 8, "symmetric": True, "scale_format": "pot"}}
    q, x = quantized(mlp, tgt, scheme)
    y = q(x, training=False).numpy()
    offsets, (s, _, _, _), _ = ref_model(q, x, pipe)
    np.testing.assert_array_equal(np.round(y.astype(np.float64) / s).astype(np.int64), offsets)


@pytest.mark.parametrize("builder", [mlp, cnn])
def test_a_wide_pipeline_with_xnnpack_rounding_equals_the_xnnpack_emulation(builder):
    # XNNPACK: QUANTIZE half away, conv/FC requantized in float32 rounding half to even, int32 accumulators and bias
    tgt = target(f"wide_{builder.__name__}", accumulator_bits=32, overflow="wrap", requantize="float32",
                 rounding="half_even")
    q, x = quantized(builder, tgt)
    ours = q(x, training=False).numpy()
    with emulated_kernels("xnnpack"):
        np.testing.assert_array_equal(ours, q(x, training=False).numpy())


def test_narrow_accumulators_move_the_outputs():
    wide, x = quantized(cnn, target("acc32", accumulator_bits=32, overflow="wrap"))
    narrow, _ = quantized(cnn, target("acc12", accumulator_bits=12, overflow="saturate"))
    assert not np.array_equal(wide(x, training=False).numpy(), narrow(x, training=False).numpy())


# ----------------------------------------------------------------------------- the integer primitives
@pytest.mark.parametrize("rounding", ROUNDING_CASES)
def test_round_shift_matches_python_integers(rounding):
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.integers(-2 ** 40, 2 ** 40, 400), np.arange(-40, 41)])
    for s in (-3, 0, 1, 2, 5, 17):
        got = round_shift(tf.constant(values, tf.int64), tf.constant(s, tf.int64), rounding).numpy()
        assert got.tolist() == [ref_round_shift(int(v), s, rounding) for v in values], (rounding, s)


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_accumulate_matches_twos_complement(overflow):
    values = np.array([-70000, -32769, -32768, -1, 0, 32767, 32768, 65535, 99999], np.int64)
    got = accumulate(tf.constant(values), 16, overflow).numpy().tolist()
    assert got == [ref_wrap_or_saturate(int(v), 16, overflow) for v in values]


# ----------------------------------------------------------------------------- bad targets
def _bad(**pipe):
    d = hw.get("npu_w4a8").to_dict()
    return dict(d, name="bad", pipeline=pipe)


@pytest.mark.parametrize("pipe, message", [
    (dict(accumulator_bits=10), "cannot hold even one product of 4-bit weights and 8-bit activations \\(12 bits\\); widen it"),
    (dict(accumulator_bits=20), "can overflow, so say what the hardware does: overflow: saturate or overflow: wrap"),
    (dict(requantize="shift"), "shift requantization needs power-of-two scales.*weights.scale_format: \\[pot\\]"),
    (dict(requantize="float32", rounding="gemmlowp"), "gemmlowp is a fixed-point rounding.*XNNPACK: half_even"),
    (dict(ops=["CONV_2D", "RSQRT"]), "no integer handler for \\['RSQRT'\\]"),
    (dict(overflow="clip"), "pipeline.overflow: one of"),
    (dict(accumulator_bits=32, bias_add="later"), "pipeline.bias_add: one of"),
    (dict(accumulator_bits=40), "pipeline.accumulator_bits: an integer in \\[8, 32\\]"),
    (dict(colour="red"), "unknown pipeline keys \\['colour'\\]"),
])
def test_bad_pipelines_are_refused_naming_the_field_and_fix(pipe, message):
    with pytest.raises(qresearch.ConfigError, match=message):
        hw.Target.from_dict(_bad(**pipe))


def test_a_pipeline_and_a_kernel_set_together_are_refused():
    d = dict(_bad(accumulator_bits=32), kernels="tflite_builtin")
    with pytest.raises(qresearch.ConfigError, match="remove kernels: tflite_builtin"):
        hw.Target.from_dict(d)


def test_describe_shows_the_accumulators_on_given_data():
    q, x = quantized(cnn, target("described", accumulator_bits=12, overflow="saturate"))
    report = qresearch.schemes.describe(q, data=x)
    assert report["accumulators"] == accumulator_stats(q, x)
    text = str(report)
    assert "accumulators (described kernels; on the data given):" in text
    assert all(name in text for name in report["accumulators"])
    assert "accumulators" not in qresearch.schemes.describe(q)  # no data: no accumulators


def cnn_without_bias():
    inp = keras.Input((6, 6, 3))
    h = L.Conv2D(16, 3, activation="relu", use_bias=False)(inp)
    h = L.Conv2D(16, 3, use_bias=False)(h)
    return keras.Model(inp, L.Dense(4, use_bias=False)(L.Flatten()(h)))


def test_a2q_takes_the_pipeline_width_and_never_overflows_it():
    """A2Q bounds each channel's integer l1 norm for the target's accumulator (bias excluded: these layers have
    none); min-max weights on the same model and hardware overflow it."""
    tgt = target("a2q_acc13", accumulator_bits=13, overflow="wrap")
    a2q = {"weights": {"quantizer": "a2q", "bits": 4}, "activations": {"quantizer": "minmax", "bits": 8}}
    q, x = quantized(cnn_without_bias, tgt, a2q)
    notes = q.qresearch_info["coercions"]
    assert any(n.startswith("weights.accumulator_bits: 32 -> 13") for n in notes), notes
    stats = accumulator_stats(q, x)
    assert stats and all(s["overflowing"] == 0 and s["bits_needed"] <= 13 for s in stats.values()), stats
    plain, _ = quantized(cnn_without_bias, tgt)
    assert sum(s["overflowing"] for s in accumulator_stats(plain, x).values()) > 0


def test_a2q_with_biases_never_overflows_when_the_bias_joins_after_the_accumulator():
    """Layers with biases: on hardware that adds the bias in its requantization stage only the dot product
    lives in the accumulator, which A2Q bounds; where the bias starts the accumulator it can push past it."""
    a2q = {"weights": {"quantizer": "a2q", "bits": 4}, "activations": {"quantizer": "minmax", "bits": 8}}
    after = target("a2q_bias_after", accumulator_bits=13, overflow="wrap", bias_add="requantize")
    q, x = quantized(cnn, after, a2q)
    assert all(s["overflowing"] == 0 for s in accumulator_stats(q, x).values())
    plain, _ = quantized(cnn, after)
    assert sum(s["overflowing"] for s in accumulator_stats(plain, x).values()) > 0
