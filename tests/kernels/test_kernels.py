"""The integer-kernel arithmetic (qresearch/kernels) against independent references: Python
integers (arbitrary precision, written from tflite-int8-spec.md §2) and closed-form cases."""
import math

import numpy as np
import pytest

from qresearch._compat import tf
from qresearch import kernels as integer


def ref_quantize_multiplier(m: float):
    if m <= 0:
        return 0, 0
    q, shift = math.frexp(m)
    fixed = int(math.floor(q * 2 ** 31 + 0.5))
    if fixed == 2 ** 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return fixed, shift


def ref_srdhm(a: int, b: int) -> int:
    ab = a * b
    nudge = 2 ** 30 if ab >= 0 else 1 - 2 ** 30
    total = ab + nudge
    return int(total / 2 ** 31) if abs(total) < 2 ** 52 else (abs(total) // 2 ** 31) * (1 if total >= 0 else -1)


def ref_shift_away(x: int, e: int) -> int:
    if e == 0:
        return x
    q, r = divmod(abs(x), 2 ** e)
    q += 1 if 2 * r >= 2 ** e else 0
    return q if x >= 0 else -q


def ref_shift_up(x: int, e: int) -> int:
    return (x + (2 ** (e - 1) if e > 0 else 0)) >> e


def ref_requantize(x: int, m: float, kind: str) -> int:
    if kind == "xnnpack":   # float32(x)·float32(m), rounded half to even
        return int(np.rint(np.float32(x) * np.float32(m)))
    fixed, shift = ref_quantize_multiplier(m)
    if kind == "single":
        total = 31 - shift
        return (x * fixed + 2 ** (total - 1)) >> total
    y = ref_srdhm(ref_int32(x * 2 ** max(shift, 0)), fixed)   # TFLite: x * (1 << left_shift) in int32
    return (ref_shift_up if kind == "tflite_builtin" else ref_shift_away)(y, max(-shift, 0))


def ref_int32(v: int) -> int:
    """``v`` in an int32 register (two's complement wrap-around)."""
    return (v + 2 ** 31) % 2 ** 32 - 2 ** 31


def test_srdhm_is_the_gemmlowp_formula():
    rng = np.random.RandomState(2)
    acc = np.concatenate([rng.randint(-2 ** 31, 2 ** 31, size=2000), np.arange(-70, 71)]).astype(np.int64)
    for m in [2 ** 30, 2 ** 30 + 1, 1518500250, 2 ** 31 - 1]:
        ties = np.array([k * 2 ** 31 // m for k in range(-8, 9)] + [2 ** 30 // m, -(2 ** 30 // m)], np.int64)
        x = np.concatenate([acc, ties, ties + 1, ties - 1])
        got = integer.srdhm(tf.constant(x), tf.constant(m, tf.int64)).numpy()
        assert got.tolist() == [ref_srdhm(int(a), m) for a in x], m
    # exact halves: x·M = ±2^30 (1 + 2k)
    x = np.array([1, -1, 3, -3, 5, -5], np.int64)
    got = integer.srdhm(tf.constant(x), tf.constant(2 ** 30, tf.int64)).numpy()
    assert got.tolist() == [ref_srdhm(int(a), 2 ** 30) for a in x]


@pytest.mark.parametrize("m", [1e-12, 3.1e-5, 0.0007, 0.0123, 0.25, 0.5, 0.7071, 0.999999999, 1.0, 1.5, 3.75])
def test_quantize_multiplier_matches_frexp(m):
    fixed, shift = integer.quantize_multiplier(tf.constant([m], tf.float64))
    assert (int(fixed[0]), int(shift[0])) == ref_quantize_multiplier(m)
    if fixed[0] > 0:
        assert 2 ** 30 <= int(fixed[0]) < 2 ** 31


def test_quantize_multiplier_matches_frexp_on_many_values_and_around_powers_of_two():
    rng = np.random.default_rng(0)
    powers = 2.0 ** np.arange(-40, 12)
    m = np.concatenate([np.exp(rng.uniform(np.log(1e-12), np.log(1e3), 5000)), powers,
                        np.nextafter(powers, 0), np.nextafter(powers, np.inf),
                        (2 ** 31 - 0.5) / 2 ** 31 * powers])  # rounds up to M = 2^31: moves to 2^30
    fixed, shift = integer.quantize_multiplier(tf.constant(m, tf.float64))
    assert list(zip(fixed.numpy().tolist(), shift.numpy().tolist())) == [ref_quantize_multiplier(v) for v in m]
    scalar = integer.quantize_multiplier(tf.constant(0.3, tf.float64))  # a scalar, as per-tensor grids give
    assert (int(scalar[0]), int(scalar[1])) == ref_quantize_multiplier(0.3)


def test_quantize_multiplier_flushes_tiny_and_zero():
    fixed, shift = integer.quantize_multiplier(tf.constant([0.0, 1e-11, 2.0 ** -40], tf.float64))
    assert fixed.numpy().tolist() == [0, ref_quantize_multiplier(1e-11)[0], 0]
    assert shift.numpy().tolist()[::2] == [0, 0]


@pytest.mark.parametrize("kind", ["tflite_builtin", "tflite_reference", "xnnpack"])
def test_requantize_matches_integer_reference(kind):
    rng = np.random.RandomState(1)
    multipliers = [0.0031, 0.047, 0.25, 0.3333, 0.9, 1.7]
    acc = np.concatenate([rng.randint(-2 ** 20, 2 ** 20, size=400), np.arange(-40, 41),
                          # exact ties of the final shift for m = 0.25 (x / 4 = k + 0.5)
                          np.array([2, 6, -2, -6, 10, -10])]).astype(np.int64)
    kernels = integer.KERNELS.get(kind)
    for m in multipliers:
        got = kernels.rescale(tf.constant(acc), tf.constant(m, tf.float64)).numpy()
        want = [ref_requantize(int(a), m, kind) for a in acc]
        assert got.tolist() == want, (kind, m)


@pytest.mark.parametrize("kind", ["tflite_builtin", "tflite_reference"])
def test_requantize_over_the_int32_range_and_many_multipliers(kind):
    rng = np.random.RandomState(7)
    acc = np.concatenate([rng.randint(-2 ** 31, 2 ** 31, size=300), rng.randint(-300, 300, size=100)]).astype(np.int64)
    kernels = integer.KERNELS.get(kind)
    for m in np.exp2(rng.uniform(-30, 2, size=12)).tolist() + [2.0 ** -20 * 3]:
        got = kernels.rescale(tf.constant(acc), tf.constant(m, tf.float64)).numpy()
        assert got.tolist() == [ref_requantize(int(a), m, kind) for a in acc], (kind, m)


@pytest.mark.parametrize("kind", ["tflite_builtin", "tflite_reference", "xnnpack"])
def test_per_channel_constants_broadcast_over_the_last_axis(kind):
    """A conv's multipliers are one per output channel (the last axis): the constants ``requantize_params``
    derives from them (per channel, outside the elementwise pass) requantize each column as its own scalar
    multiplier does in the integer reference."""
    rng = np.random.RandomState(3)
    multipliers = [0.0031, 0.047, 0.25, 0.9, 1.7, 2.0 ** -20 * 3]
    acc = rng.randint(-2 ** 24, 2 ** 24, size=(50, len(multipliers))).astype(np.int64)
    kernels = integer.KERNELS.get(kind)
    params = kernels.requantize_params(tf.constant(multipliers, tf.float64))
    got = kernels.apply_requantize(tf.constant(acc), params).numpy()
    want = [[ref_requantize(int(a), m, kind) for a, m in zip(row, multipliers)] for row in acc]
    assert got.tolist() == want


@pytest.mark.parametrize("kind", ["tflite_builtin", "tflite_reference"])
def test_a_multiplier_over_one_shifts_the_accumulator_left_in_int32(kind):
    """m >= 1 is a left shift of the accumulator in int32 (TFLite's ``x * (1 << left_shift)``, no saturation): a
    dead input's collapsed output scale (~4e-9) gives m ~ 1e3 and an accumulator of ~-2.5e7 then wraps (measured on
    LiteRT: a ReLU conv negative everywhere gave 127, not 0, tests/hardware/test_deploy.py)."""
    rng = np.random.RandomState(4)
    acc = np.concatenate([rng.randint(-2 ** 31, 2 ** 31, 300), [-24621014, -24545449, 2 ** 20, -(2 ** 20)],
                          rng.randint(-300, 300, 100)]).astype(np.int64)
    kernels = integer.KERNELS.get(kind)
    for m in (1.0, 1.5, 3.75, 1035.70056354, 2.0 ** 20 * 1.3):
        got = kernels.rescale(tf.constant(acc), tf.constant(m, tf.float64)).numpy()
        assert got.tolist() == [ref_requantize(int(a), m, kind) for a in acc], (kind, m)
    wrapped = kernels.rescale(tf.constant([-24621014], tf.int64), tf.constant(1035.70056354, tf.float64)).numpy()
    assert wrapped[0] > 0   # the product's sign flipped: what the kernel computes, not -2.5e10


def test_the_accumulator_wraps_in_int32():
    """A bias saturated to 2^31 - 1 (over a dead input's scale) plus the products wraps, as the int32 accumulator of
    the TFLite kernels does (the emulation before kept it in int64)."""
    kernels = integer.KERNELS.get("tflite_builtin")
    dot = tf.constant([10, -10, 0, 2 ** 31], tf.int64)
    bias = tf.constant(2 ** 31 - 1, tf.int64)
    want = [ref_int32(d + 2 ** 31 - 1) for d in (10, -10, 0, 2 ** 31)]
    assert kernels.accumulate(dot, bias).numpy().tolist() == want


def test_rounding_rules_differ_only_where_they_should():
    """m = 0.25 is (2^30, shift -1): SRDHM halves, the shift halves again. -2/4 = -0.5 rounds to 0 (ties
    up) or -1 (half away); -7/4 = -1.75 rounds twice, -3.5 -> -3 -> -1.5, to -1 (ties up) or -2."""
    acc = tf.constant([-2, 2, -7, 7], tf.int64)
    up = integer.KERNELS.get("tflite_builtin").rescale(acc, tf.constant(0.25, tf.float64)).numpy().tolist()
    away = integer.KERNELS.get("tflite_reference").rescale(acc, tf.constant(0.25, tf.float64)).numpy().tolist()
    assert up == [0, 1, -1, 2] and away == [-1, 1, -2, 2]


def test_grid_of_follows_the_converter():
    g = integer.grid_of(tf.constant(0.0), tf.constant(6.0), 8, False)       # ReLU6 range
    assert np.isclose(float(g.scale), np.float32(6 / 255)) and float(g.zero_point) == -128.0
    g = integer.grid_of(tf.constant(-127 * 0.02), tf.constant(127 * 0.02), 8, True)  # symmetric weights
    assert float(g.zero_point) == 0.0 and (g.qmin, g.qmax) == (-127, 127)
    g = integer.grid_of(tf.constant(-1.0), tf.constant(3.0), 8, False)
    assert float(g.zero_point) == round(-128 + 1.0 / (4.0 / 255))  # -64.25 -> -64
    # a range under 1e-6 (a dead activation, an all-zero weight channel): the converter's [-5e-7, 5e-7]
    for lo, hi in ((0.0, 0.0), (0.0, 1e-7), (-1e-8, 1e-8)):
        g = integer.grid_of(tf.constant(lo), tf.constant(hi), 8, False)
        assert float(g.scale) == float(np.float32(1e-6 / 255)) and float(g.zero_point) == -1.0
    g = integer.grid_of(tf.constant([0.0, -1.0]), tf.constant([0.0, 1.0]), 8, True)     # per channel, weights
    assert np.allclose(g.scale.numpy(), np.float32([1e-6 / 254, 2 / 254])) and np.all(g.zero_point.numpy() == 0)
    g = integer.grid_of(tf.constant(0.0), tf.constant(2e-6), 8, False)      # just over: the range as given
    assert float(g.scale) == float(np.float32(np.float32(2e-6) / 255.0)) and float(g.zero_point) == -128.0


def test_average_pool_counts_skip_padding():
    counts = integer.average_pool_counts(4, 4, (3, 3), (1, 1), "same")[0, :, :, 0]
    assert counts.tolist() == [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]
    assert integer.average_pool_counts(4, 6, (2, 2), (2, 2), "valid").shape == (1, 2, 3, 1)
    assert np.all(integer.average_pool_counts(5, 5, (2, 2), (2, 2), "valid") == 4)


def test_average_pool_rounds_half_away_from_raw_zero():
    """Raw sums -6 and -2 over 4 taps (-1.5 and -0.5) round to -2 and -1 (away from raw 0), where
    FakeQuant would round up about the zero point."""
    g = integer.Grid(tf.constant(0.5, tf.float64), tf.constant(-3.0, tf.float64), -128, 127)
    raw_sums = np.array([-6.0, -2.0, 6.0, 2.0])
    y_avg = (raw_sums / 4 - (-3.0)) * 0.5  # the float average of on-grid values
    out = integer.average_pool(tf.constant(y_avg, tf.float32), tf.constant(4.0, tf.float64), g).numpy()
    assert ((out / 0.5) + (-3.0)).round().tolist() == [-2.0, -1.0, 2.0, 1.0]


def test_mean_divides_the_multiplier_by_the_count():
    """MEAN of 64 values with S_in = S_out: multiplier (2^30 << 6) // 64, then one rounding."""
    g = integer.Grid(tf.constant(0.1, tf.float64), tf.constant(0.0, tf.float64), -128, 127)
    kernels = integer.KERNELS.get("tflite_builtin")
    for total in (0, 31, 32, 33, -32, -33, 6400):
        y = integer.mean(kernels, tf.constant([total * 0.1 / 64], tf.float32), 64, g, g).numpy()
        fixed, shift = ref_quantize_multiplier(1.0)
        k = min(6, 32, 31 + shift)
        want = ref_shift_away(ref_srdhm(total * 2 ** max(shift - k, 0), (fixed << k) // 64), max(k - shift, 0))
        assert round(float(y[0]) / 0.1) == max(-128, min(127, want)), total


def test_unknown_kernel_set_is_named():
    from qresearch.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown integer kernel set 'arm'.*tflite_builtin"):
        integer.KERNELS.get("arm")


def test_reference_fully_connected_rounds_once():
    """Measured on LiteRT's BUILTIN_REF kernels: FULLY_CONNECTED requantizes with one rounding."""
    acc = np.arange(-300, 300, 7).astype(np.int64)
    kernels = integer.KERNELS.get("tflite_reference")
    got = kernels.rescale(tf.constant(acc), tf.constant(0.0123, tf.float64), "FULLY_CONNECTED").numpy()
    assert got.tolist() == [ref_requantize(int(a), 0.0123, "single") for a in acc]


def test_softmax_closed_form_cases():
    out_grid = integer.Grid(tf.constant(1 / 256, tf.float64), tf.constant(-128.0, tf.float64), -128, 127)
    in_grid = integer.Grid(tf.constant(1.0, tf.float64), tf.constant(0.0, tf.float64), -128, 127)
    equal = integer.softmax(tf.constant([[3.0, 3.0, 3.0, 3.0]]), in_grid, out_grid).numpy()
    assert np.allclose(equal, 0.25)  # 64/256 each
    dominant = integer.softmax(tf.constant([[100.0, 0.0]]), in_grid, out_grid).numpy()
    assert dominant.tolist() == [[255 / 256, 0.0]]  # 256/256 saturates at q = 127
    half = integer.softmax(tf.constant([[0.0, -2.0, -2.0]]), in_grid, out_grid).numpy()
    e = np.exp(-2.0)
    assert np.allclose(half * 256, np.round(np.array([1, e, e]) / (1 + 2 * e) * 256))


@pytest.mark.parametrize("config, pure", [
    ({"name": "minmax", "bits": 8}, True),
    ({"name": "lsq", "bits": 8}, True),
    ({"name": "pact", "bits": 8}, True),                       # [0, α]: the FakeQuant range clips
    ({"name": "pact", "bits": 8, "signed": True}, False),      # max(x, -α) before FakeQuant
])
def test_pure_fake_quant_tells_a_quantizer_that_clips_before_its_fakequant(config, pure):
    """Only a pass that is one FakeQuant of its input keeps on-grid values on their grid points, so only
    then does the emulation hand a kernel's integers on to the next kernel (schemes/emulation.py)."""
    from qresearch._compat import keras
    from qresearch.quantizers import create

    q = create(config, role="activations")
    qvars = q.build(None, "output", keras.layers.Layer())
    assert integer.pure_fake_quant(q, qvars) is pure
    assert integer.grid_of_quantizer(q, qvars) is not None
