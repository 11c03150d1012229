"""Uniform affine quantization with observed (min, max) ranges.

Ranges follow the data as a moving average (activations) or the last batch's
values (weights), asymmetric or symmetric, per tensor or per channel. The
forward pass is TensorFlow's FakeQuant, so at 8 bits it is exactly what tfmot
and the TFLite converter use (nudged zero point, half-up rounding on the
shifted grid; ``../shared/docs/tflite-int8-spec.md`` §4).

``init: paper`` is that tracking itself. Another ``init`` rule sets the range once from the data (every
calibration batch, or the first training batch) instead of tracking it during calibration; in training
the range is then tracked from there (``last_value`` ranges follow each step's weights, so for weights
the rule matters for post-training quantization only).

``range_rule: mse`` tracks the range ``f · (min, max)``, with f the candidate ``k/K`` (``k = 1..K``,
``K = MSE_RANGE_CANDIDATES``) that quantizes the tensor with the smallest squared error, per channel where
per-channel: the MSE range setting of Nagel et al. 2021, "A White Paper on Neural Network Quantization",
arXiv:2106.08295, §3.1. f is searched on the first call and again every ``range_search_every`` training steps
(the search costs about a float step on LeNet-5, where min and max cost nothing); between searches the range is f
times each step's (min, max). Weights (``last_value``) take that range as it is; activations (``ema``) average
it, f times each batch's range, so an ``init: mse`` start is not pulled back to the max range by the average
(measured: a 2-bit model's QAT fell 11 pt below its own PTQ that way; notes/accuracy.md, twenty-eighth session).
``max`` (the default) keeps the tracked range, which never clips: at 2-3 bits it puts most values on 0.
"""
from __future__ import annotations

from qresearch._compat import tf
from qresearch.errors import ConfigError
from qresearch.quantizers import ops, replicas
from qresearch.quantizers.base import Quantizer, check_choice, check_number
from qresearch.quantizers.registry import register

RANGE_TRACKING = ("ema", "last_value")
RANGE_RULES = ("max", "mse")
#: Candidate ranges of ``range_rule: mse`` (5% apart): each call quantizes K copies of the tensor, so K is
#: what the search costs per training step.
MSE_RANGE_CANDIDATES = 20


def _candidate_fractions():
    """``(1, (K-1)/K, ..., 1/K)`` with ``K = MSE_RANGE_CANDIDATES``: the fractions ``range_rule: mse`` tries."""
    return tf.range(MSE_RANGE_CANDIDATES, 0, -1, dtype=tf.float32) / float(MSE_RANGE_CANDIDATES)


@register("minmax")
class MinMaxQuantizer(Quantizer):
    """Min-max uniform quantizer.

    Args (besides the common ones):
      range_tracking: ``"ema"`` (moving average, decay ``ema_decay``) or ``"last_value"``.
      ema_decay: moving-average decay; the first batch sets the range directly.
      init_min, init_max: range before any data is seen (tfmot's ±6).
      range_rule: ``"max"`` (track the observed range) or ``"mse"`` (track the fraction of it with the least
        squared error on the tensor; with ``ema``, the average of each batch's least-error range).
      range_search_every: with ``range_rule: mse``, training steps between searches of the fraction (1: every step).
    """

    role_defaults = {
        "weights": {"symmetric": True, "narrow_range": True, "range_tracking": "last_value"},
        "activations": {"range_tracking": "ema"},
    }
    init_params = {"min": "min", "max": "max"}
    init_flag = "seen"

    def __init__(self, bits=8, symmetric=False, narrow_range=False, per_channel=False, axis=None,
                 signed=True, scale_format="float32", range_tracking="ema", ema_decay=0.99,
                 init_min=-6.0, init_max=6.0, range_rule="max", range_search_every=50):
        super().__init__(bits, symmetric, narrow_range, per_channel, axis, signed, scale_format)
        name = self.registry_name
        check_choice(name, "range_tracking", range_tracking, RANGE_TRACKING)
        check_choice(name, "range_rule", range_rule, RANGE_RULES)
        if range_rule == "mse" and scale_format == "pot":
            raise ConfigError(f"quantizer {name!r}: range_rule 'mse' scales the range by fractions, which are not "
                              "powers of two; use the 'pot' quantizer with pot_rounding: mse")
        range_search_every = check_number(name, "range_search_every", range_search_every, low=1)
        if range_search_every != int(range_search_every):
            raise ConfigError(f"quantizer {name!r}: range_search_every must be a whole number of steps >= 1, got "
                              f"{range_search_every!r}")
        ema_decay = check_number(name, "ema_decay", ema_decay, low=0.0, high=1.0, high_open=True)
        init_min = check_number(name, "init_min", init_min, high=0.0)
        init_max = check_number(name, "init_max", init_max, low=0.0)
        if scale_format == "pot" and not symmetric:
            raise ConfigError(f"quantizer {name!r}: power-of-two scales need symmetric: true "
                              "(or use the 'pot' quantizer)")
        self.range_tracking = range_tracking
        self.ema_decay = ema_decay
        self.init_min = init_min
        self.init_max = init_max
        self.range_rule = range_rule
        self.range_search_every = int(range_search_every)

    def build_params(self, shape, name, layer):
        params = {
            "min": self.add_variable(layer, f"{name}_min", shape, self.init_min, trainable=False),
            "max": self.add_variable(layer, f"{name}_max", shape, self.init_max, trainable=False),
            "seen": self.add_flag(layer, f"{name}_seen"),
        }
        if self.range_rule == "mse":   # the chosen fraction, and the calls left until the next search
            params["fraction"] = self.add_variable(layer, f"{name}_fraction", shape, 1.0, trainable=False)
            params["search_in"] = self.add_variable(layer, f"{name}_search_in", (), 0.0, trainable=False)
        return params

    def observe(self, x, weights, axes):
        """Update the tracked range from a batch (finite values only)."""
        reduce = self.reduce_axes(x, axes)
        batch_min, batch_max = ops.reduce_finite_range(x, reduce, empty=0.0)
        if replicas.active():  # the global batch's range on every replica (training.strategy=mirrored)
            batch_min, batch_max = replicas.reduce_min(batch_min), replicas.reduce_max(batch_max)
        lo, hi, seen = weights["min"], weights["max"], weights["seen"]
        updates = []
        if self.range_rule == "mse":
            # The batch's range is cut to its least-error fraction before the moving average: an average of cut
            # ranges. Cutting the average instead would compound the fraction from step to step.
            fraction, search_in = weights["fraction"], weights["search_in"]
            f = self.searched_fraction(x, batch_min, batch_max, axes, search_in <= 0.0, fraction)
            left = tf.where(search_in <= 0.0, float(self.range_search_every - 1), search_in - 1.0)
            updates += [fraction.assign(f), search_in.assign(left)]
            batch_min, batch_max = f * batch_min, f * batch_max
        # A step traced once the flag is set (after calibration, or after the first batch) leaves out its
        # test and its write: the flag never goes back to 0, and they cost a handful of ops per step.
        may_be_first = not self.set_at_trace(seen)
        if self.range_tracking == "ema":
            d = self.ema_decay
            moved_min, moved_max = d * lo + (1 - d) * batch_min, d * hi + (1 - d) * batch_max
            if may_be_first:
                first = tf.equal(seen, 0.0)
                moved_min, moved_max = tf.where(first, batch_min, moved_min), tf.where(first, batch_max, moved_max)
            batch_min, batch_max = moved_min, moved_max
        updates += [lo.assign(batch_min), hi.assign(batch_max)]
        return tf.group(*updates, *([seen.assign(1.0)] if may_be_first else []))

    def fake_quant_range(self, lo, hi):
        """The (min, max) handed to FakeQuant for a tracked range."""
        if self.symmetric:
            max_abs = tf.maximum(-lo, hi)
            if self.scale_format == "pot":
                qn, qp = self.grid
                scale = self.pot(tf.maximum(max_abs, ops.EPS) / qp)
                return -qn * scale, qp * scale
            return ops.symmetric_range(max_abs, self.bits, self.signed, self.narrow_range)
        return tf.minimum(lo, 0.0), tf.maximum(hi, 0.0)

    def range_of(self, x, lo, hi, axes):
        """The (min, max) FakeQuant gets for ``x``, whose tracked range is (lo, hi); a subclass may choose it from
        ``x`` itself (``pot``'s ``pot_rounding: mse``)."""
        return self.fake_quant_range(lo, hi)

    def searched_fraction(self, x, lo, hi, axes, search, kept):
        """Where ``search``: the f in (1, (K-1)/K, ..., 1/K) whose range ``f · (lo, hi)`` quantizes ``x`` with the
        smallest ``Σ (x - Q_f(x))²``, per channel (the ``init: mse`` rule's search, ``init.rules.candidate_errors``,
        on this tensor; a tie keeps the larger range); else ``kept``. A training-step computation only: the
        converter does not fold the search, so the chosen range is stored, not recomputed, for inference.

        Under a strategy each replica holds a slice of the batch: the candidates' errors are averaged over the
        replicas, outside the search's ``tf.cond`` (where tf.distribute cannot reduce), so every copy keeps the
        fraction one device would pick on the whole batch."""
        if not replicas.active():
            return tf.cond(search, lambda: self._least_error_fraction(self.mse_errors(x, lo, hi, axes), lo),
                           lambda: tf.identity(kept))
        errors = tf.cond(search, lambda: self.mse_errors(x, lo, hi, axes),
                         lambda: tf.zeros([MSE_RANGE_CANDIDATES, tf.size(lo)]))
        return tf.where(search, self._least_error_fraction(replicas.reduce_mean(errors), lo), kept)

    def mse_errors(self, x, lo, hi, axes):
        """``[K, channels]``: the squared error of each candidate range ``f · (lo, hi)`` on ``x``."""
        from qresearch.quantizers.init.rules import candidate_errors
        from qresearch.quantizers.init.stats import as_rows

        fq_min, fq_max = (tf.reshape(tf.stop_gradient(r), [-1]) for r in self.fake_quant_range(lo, hi))
        return candidate_errors(self, as_rows(tf.stop_gradient(x), axes), _candidate_fractions(), fq_min, fq_max)

    @staticmethod
    def _least_error_fraction(errors, lo):
        return tf.reshape(tf.gather(_candidate_fractions(), tf.argmin(errors, axis=0)), tf.shape(lo))

    def quantize(self, x, training, weights, axes):
        from qresearch.quantizers.init import collect

        if training and self.init != "paper" and collect.current() is not None:
            training = False  # calibrating with an init rule: the rule, not the tracking, sets the range
        if training:
            with tf.control_dependencies([self.observe(x, weights, axes)]):
                lo, hi = tf.identity(weights["min"]), tf.identity(weights["max"])
        else:
            lo, hi = weights["min"], weights["max"]
        fq_min, fq_max = self.range_of(x, lo, hi, axes)
        # a tracked range is not trained (unless a subclass made it trainable): while training, the
        # backward gives x's gradient only
        trained = any(getattr(weights[k], "trainable", False) for k in ("min", "max"))
        return ops.fake_quant(x, fq_min, fq_max, self.bits, self.narrow_range, axes,
                              range_gradients=trained or not training, training=training)
