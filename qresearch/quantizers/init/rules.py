"""Init rules: how a quantizer's step/clip/range starts, from the statistics of its data.

Each rule maps ``(quantizer, Stats)`` to ``(values, valid)``: one value per declared parameter
(``Quantizer.init_params``) and a per-channel mask of usable entries. Rules other than ``paper`` first
choose a range ``[lo, hi]`` per channel in the quantizer's range mode (``Quantizer.init_range``:
``symmetric`` |x| <= c, ``unsigned`` 0 <= x <= c, ``asymmetric`` lo <= x <= hi, always containing 0),
then ``values_from_range`` turns it into the parameters by their kind (``PARAM_KINDS``).

- ``paper``: the algorithm's own rule (``Quantizer.paper_init``): LSQ's 2·mean|x|/sqrt(Qp) (Esser et al.
  2020, §2.1), LSQ+'s min/max or μ±3σ (Bhalgat et al. 2020, §3.3), PACT's fixed α (Choi et al. 2018, §3),
  min-max tracking for ``minmax``/``pot``.
- ``max``: the full range, nothing clipped (max|x|, or min/max).
- ``percentile``: the ``init_percentile``-th percentile of |x| (asymmetric: the ``100-p`` and ``p``
  percentiles of x), the percentile calibration of e.g. Wu et al. 2020, "Integer Quantization for Deep
  Learning Inference".
- ``mse``: the clip minimising the quantization MSE ``Σ (x - Q_c(x))²`` on the quantizer's own grid,
  searched over ``MSE_CANDIDATES`` clips ``c = k/K · max``, per channel (Banner et al. 2019's objective;
  the grid search of Nagel et al. 2021, "A White Paper on Neural Network Quantization", §3.1, MSE range
  setting).
- ``mse_no_shrink``: the least-MSE candidate among those that do not shrink the tensor along itself,
  ``Σ x·Q_c(x) >= Σ x²`` per channel (else the candidate that shrinks it least). An MSE-optimal clip sits where
  the error is orthogonal to ``Q(x)``, so ``Σ x·Q(x) = Σ Q(x)² < Σ x²``: each layer's output shrinks by
  ``1 - MSE/Σx²``, and through a deep net the shrinkage compounds (Banner et al. 2019, §3.3, find quantized
  weights' norm shrunk and correct it after the fact; a single learned step has no separate scale to do that).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

from qresearch._compat import tf
from qresearch.registry import Registry

#: Number of clip candidates ``k/K · max``, ``k = 1..K``, in the MSE search (1% resolution).
MSE_CANDIDATES = 100

INIT_RULES: Registry = Registry(
    "init rule", how_to_add="decorate a function (quantizer, stats) -> (values, valid) with "
    "@qresearch.quantizers.init.register_init_rule('NAME') in a module passed as plugins=[your_module].")


def register_init_rule(name: str, *, overwrite: bool = False):
    """Decorator: register an init rule ``fn(quantizer, stats) -> (values, valid)`` under ``name``."""
    return INIT_RULES.register(name, overwrite=overwrite)


# ----------------------------------------------------------------- from a range to the parameters
def _step_and_offset(q, lo, hi):
    """The uniform grid ``[-qn, qp]·s + o`` that spans ``[lo, hi]`` (o = 0 unless asymmetric)."""
    qn, qp = q.init_grid
    if q.init_range == "asymmetric":
        s = (hi - lo) / float(qn + qp)
        return s, lo + qn * s
    return hi / float(qp), tf.zeros_like(hi)


#: What each declared parameter kind is, given the range [lo, hi] and its grid (step s, offset o).
PARAM_KINDS: Dict[str, Callable] = {
    "step": lambda lo, hi, s, o: s,       # LSQ, LSQ+
    "offset": lambda lo, hi, s, o: o,     # LSQ+ (asymmetric)
    "clip": lambda lo, hi, s, o: hi,      # PACT's α, DoReFa's activation clip
    "min": lambda lo, hi, s, o: lo,       # minmax, pot
    "max": lambda lo, hi, s, o: hi,
}


def values_from_range(q, lo, hi) -> Tuple[Dict[str, tf.Tensor], tf.Tensor]:
    s, o = _step_and_offset(q, lo, hi)
    values = {key: PARAM_KINDS[kind](lo, hi, s, o) for key, kind in q.init_params.items()}
    valid = tf.logical_and(tf.math.is_finite(hi - lo), hi - lo > 0.0)
    return values, valid


def _ranged(choose_range):
    """A rule from a function choosing ``(lo, hi)`` per channel."""
    def rule(q, stats):
        lo, hi = choose_range(q, stats)
        return values_from_range(q, tf.minimum(lo, 0.0), tf.maximum(hi, 0.0))
    rule.__doc__ = choose_range.__doc__
    return rule


def _magnitudes(q, sample):
    """What a one-sided clip bounds: |x| (symmetric) or x's positive part (unsigned)."""
    return tf.abs(sample) if q.init_range == "symmetric" else tf.nn.relu(sample)


def _lower(q, upper):
    return -upper if q.init_range == "symmetric" else tf.zeros_like(upper)


# ----------------------------------------------------------------- the rules
@register_init_rule("paper")
def paper(q, stats):
    """The algorithm's published rule (``Quantizer.paper_init``)."""
    return q.paper_init(stats)


@register_init_rule("max")
@_ranged
def max_range(q, stats):
    """The whole observed range: nothing clipped."""
    if q.init_range == "asymmetric":
        return stats.min, stats.max
    upper = stats.max_abs if q.init_range == "symmetric" else stats.max
    return _lower(q, upper), upper


def percentile(values, p: float):
    """``np.percentile(values, p, axis=0)`` (linear interpolation between the closest ranks)."""
    ordered = tf.sort(values, axis=0)
    n = tf.shape(ordered)[0]
    # the rank in float64: in float32 its rounding, times a wide gap between neighbours, is visible
    pos = (float(p) / 100.0) * tf.cast(n - 1, tf.float64)
    below = tf.cast(tf.floor(pos), tf.int32)
    above = tf.minimum(below + 1, n - 1)
    frac = pos - tf.cast(below, tf.float64)
    a, b = tf.cast(tf.gather(ordered, below), tf.float64), tf.cast(tf.gather(ordered, above), tf.float64)
    return tf.cast(a + frac * (b - a), values.dtype)


@register_init_rule("percentile")
@_ranged
def percentile_range(q, stats):
    """The ``init_percentile``-th percentile of the (sampled) values."""
    p = q.init_percentile
    if q.init_range == "asymmetric":
        return percentile(stats.sample, 100.0 - p), percentile(stats.sample, p)
    upper = percentile(_magnitudes(q, stats.sample), p)
    return _lower(q, upper), upper


def quantization_error(q, x, lo, hi):
    """``Σ_rows (x - Q(x))²`` per channel for the grid spanning ``[lo, hi]`` (round half to even, as the
    training forward)."""
    qn, qp = q.init_grid
    s, o = _step_and_offset(q, lo, hi)
    s = tf.maximum(s, 1e-12)
    xq = _on_grid(x, s, o, -float(qn), float(qp))
    return tf.reduce_sum(tf.square(x - xq), axis=0)


@register_init_rule("mse")
@_ranged
def mse_range(q, stats):
    """The candidate range ``k/K · [lo, hi]`` with the least quantization MSE on the (sampled) values."""
    lo, hi = _search_bounds(q, stats)
    fractions = _candidate_fractions()
    if tf.executing_eagerly():
        errors = candidate_errors(q, stats.sample, fractions, lo, hi)
    else:
        # One candidate at a time (map_fn): memory stays one sample's size, whatever the number of candidates.
        errors = tf.map_fn(lambda f: quantization_error(q, stats.sample, f * lo, f * hi), fractions)
    best = tf.gather(fractions, tf.argmin(errors, axis=0))
    return best * lo, best * hi


@register_init_rule("mse_no_shrink")
@_ranged
def mse_no_shrink_range(q, stats):
    """The least-MSE candidate range ``k/K · [lo, hi]`` with ``Σ x·Q(x) >= Σ x²``; without one, the one with the
    largest ``Σ x·Q(x)`` (the least shrinking)."""
    lo, hi = _search_bounds(q, stats)
    fractions = _candidate_fractions()
    x = stats.sample
    errors, projections = _grid_terms(x, *_candidate_grids(q, fractions, lo, hi))
    kept = projections >= tf.reduce_sum(tf.square(x), axis=0)
    least_error_kept = tf.argmin(tf.where(kept, errors, float("inf")), axis=0)
    best = tf.gather(fractions, tf.where(tf.reduce_any(kept, axis=0), least_error_kept,
                                         tf.argmax(projections, axis=0)))
    return best * lo, best * hi


def _search_bounds(q, stats):
    """The range the candidates are fractions of: the whole observed range, in the quantizer's range mode."""
    if q.init_range == "asymmetric":
        return tf.minimum(stats.min, 0.0), tf.maximum(stats.max, 0.0)
    hi = stats.max_abs if q.init_range == "symmetric" else tf.maximum(stats.max, 0.0)
    return _lower(q, hi), hi


def _candidate_fractions():
    return tf.range(1, MSE_CANDIDATES + 1, dtype=tf.float32) / float(MSE_CANDIDATES)


def candidate_errors(q, x, fractions, lo, hi):
    """``quantization_error`` of every candidate range ``f · [lo, hi]`` on rows ``x`` (``[K, channels]``), the same
    numbers as the map_fn above: each candidate's grid is computed here, element for element as there, and the
    per-candidate loop runs as one traced function (eager map_fn dispatches ~6 ops per candidate from Python:
    seconds per calibration). Also ``minmax``'s ``range_rule: mse`` search in a training step."""
    return _grid_errors(x, *_candidate_grids(q, fractions, lo, hi))


def _candidate_grids(q, fractions, lo, hi):
    """``(steps, offsets, lowest, highest)`` of the grids spanning each candidate range ``f · [lo, hi]``."""
    qn, qp = q.init_grid
    f = tf.reshape(fractions, [-1, 1])
    s, o = _step_and_offset(q, f * lo, f * hi)
    return tf.maximum(s, 1e-12), o, tf.constant(-float(qn)), tf.constant(float(qp))


def _on_grid(x, s, o, lowest, highest):
    """``x`` rounded (half to even) onto the grid ``[lowest, highest]·s + o``: the training forward's rounding."""
    return tf.clip_by_value(tf.round((x - o) / s), lowest, highest) * s + o


@tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)] * 3 + [tf.TensorSpec([], tf.float32)] * 2,
             autograph=False)
def _grid_errors(x, steps, offsets, lowest, highest):
    """Per candidate k: ``Σ_rows (x - Q_k(x))²`` on the grid ``[lowest, highest]·steps[k] + offsets[k]``. The
    grid is an input, never a graph constant: grappler would turn a division by a constant into a
    multiplication by its reciprocal, which rounds differently."""
    def error(grid):
        xq = _on_grid(x, *grid, lowest, highest)
        return tf.reduce_sum(tf.square(x - xq), axis=0)

    return tf.map_fn(error, (steps, offsets), fn_output_signature=tf.TensorSpec([None], tf.float32))


@tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)] * 3 + [tf.TensorSpec([], tf.float32)] * 2,
             autograph=False)
def _grid_terms(x, steps, offsets, lowest, highest):
    """Per candidate k: ``Σ_rows (x - Q_k(x))²`` and ``Σ_rows x·Q_k(x)`` (``_grid_errors``' grid), one candidate
    at a time."""
    def terms(grid):
        xq = _on_grid(x, *grid, lowest, highest)
        return tf.reduce_sum(tf.square(x - xq), axis=0), tf.reduce_sum(x * xq, axis=0)

    spec = tf.TensorSpec([None], tf.float32)
    return tf.map_fn(terms, (steps, offsets), fn_output_signature=(spec, spec))


def evaluate(q, stats):
    """``(values, valid)`` of the quantizer's init rule on ``stats``, or None (keep the variables)."""
    return INIT_RULES.get(q.init)(q, stats)
