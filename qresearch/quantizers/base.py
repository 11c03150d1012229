"""The base class every quantizer plugin derives from.

A quantizer does the math on one tensor (tfmot's split: a ``QuantizeConfig``
says which tensors of a layer, a ``Quantizer`` how). Subclasses store every
``__init__`` argument as an attribute of the same name; ``get_config`` reads
them back from the signature, so a plugin round-trips without extra code.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

from qresearch import _autograph
from qresearch._compat import tf, tfmot
from qresearch.errors import ConfigError
from qresearch.quantizers import ops, replicas
from qresearch.quantizers.channels import channel_axes_for

SCALE_FORMATS = ("float32", "pot")
MIN_BITS, MAX_BITS = 2, 16
#: Initialisation fields every quantizer accepts (ignored by one with nothing to initialise), and defaults.
INIT_FIELDS = {"init": "paper", "init_percentile": 99.99}
#: Attribute marking a trainable variable as a quantizer parameter (step, clip, offset): the training
#: settings (learning-rate multiplier, no weight decay, freezing) find them by it.
QUANTIZER_PARAM_ATTR = "_qresearch_quantizer_param"
#: Attribute marking every variable a quantizer built (parameters, ranges, flags).
QUANTIZER_VAR_ATTR = "_qresearch_quantizer_variable"
_UNSET = object()


def is_quantizer_param(variable) -> bool:
    """Whether ``variable`` is a trainable quantizer parameter (a step, clip or offset)."""
    return bool(getattr(variable, QUANTIZER_PARAM_ATTR, False))


def is_quantizer_variable(variable) -> bool:
    """Whether a quantizer built ``variable`` (its parameters, tracked ranges, flags)."""
    return bool(getattr(variable, QUANTIZER_VAR_ATTR, False))


class Quantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """A tfmot ``Quantizer`` with the common spec fields.

    Args:
      bits: bit width, 2–16.
      symmetric: zero point fixed at 0 (signed) or at the grid's bottom (unsigned).
      narrow_range: drop the most negative level (``[-127, 127]`` at 8 bits).
      per_channel: one set of parameters per output channel (weights only).
      axis: channel axis or axes; ``None`` picks them from the layer
        (Dense/Conv: last; Conv*Transpose: -2; depthwise: in·multiplier).
      signed: signed grid (weights, pre-activations) or unsigned (after ReLU).
      scale_format: ``"float32"`` or ``"pot"`` (scales rounded to powers of two).
      init: how the declared parameters (``init_params``) start: ``paper`` (the algorithm's own rule),
        ``max``, ``percentile`` or ``mse`` (``qresearch.quantizers.init.rules``); from the calibration
        data (every batch) when given, else from the first training batch; weights from their tensor.
      init_percentile: the percentile of ``init: percentile``.

    A plugin gets every init rule by declaring ``init_params`` (``{weights-dict key: kind}``, kinds
    ``step``, ``clip``, ``offset``, ``min``, ``max``): the base class accepts ``init``/``init_percentile``
    in its constructor, serialises them, adds the "initialised" flag and sets the variables before
    ``quantize`` runs. ``paper_init`` supplies the algorithm's own rule.
    """

    #: Name in the quantizer registry; set by ``qresearch.quantizers.register``.
    registry_name: ClassVar[str] = ""
    #: Defaults applied by ``create(spec, role=...)`` for "weights" / "activations".
    role_defaults: ClassVar[Dict[str, Dict[str, Any]]] = {}
    #: Whether this algorithm can honour ``scale_format="pot"``.
    supports_pot_scales: ClassVar[bool] = True
    #: Variables the init rules set: ``{key in the weights dict: kind}`` (see ``init.rules.PARAM_KINDS``).
    init_params: ClassVar[Dict[str, str]] = {}
    #: Key of the 0/1 flag set once the parameters were initialised (added by ``build`` if missing).
    init_flag: ClassVar[str] = "initialized"

    def __init_subclass__(cls, **kwargs):
        """Every subclass constructor accepts ``init``/``init_percentile`` without declaring them."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__init__")
        if own is None or getattr(own, "_takes_init_fields", False):
            return

        @functools.wraps(own)
        def __init__(self, *args, init=_UNSET, init_percentile=_UNSET, **kw):
            own(self, *args, **kw)
            self._set_init_fields(init, init_percentile, check=type(self).__init__ is __init__)

        __init__._takes_init_fields = True
        cls.__init__ = __init__

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = False,
        narrow_range: bool = False,
        per_channel: bool = False,
        axis: Optional[Sequence[int] | int] = None,
        signed: bool = True,
        scale_format: str = "float32",
        *,
        init: str = INIT_FIELDS["init"],
        init_percentile: float = INIT_FIELDS["init_percentile"],
    ):
        name = self.registry_name or type(self).__name__
        if isinstance(bits, bool) or not isinstance(bits, (int,)) or not MIN_BITS <= bits <= MAX_BITS:
            raise ConfigError(f"quantizer {name!r}: bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
        for flag, value in (("symmetric", symmetric), ("narrow_range", narrow_range),
                            ("per_channel", per_channel), ("signed", signed)):
            if not isinstance(value, bool):
                raise ConfigError(f"quantizer {name!r}: {flag} must be true or false, got {value!r}")
        if scale_format not in SCALE_FORMATS:
            raise ConfigError(f"quantizer {name!r}: scale_format must be one of {SCALE_FORMATS}, got {scale_format!r}")
        if scale_format == "pot" and not self.supports_pot_scales:
            raise ConfigError(f"quantizer {name!r} cannot use power-of-two scales; use scale_format: float32 "
                              "or the 'pot' quantizer")
        if axis is not None:
            items = list(axis) if isinstance(axis, (list, tuple)) else [axis]
            if not items or any(isinstance(a, bool) or not isinstance(a, int) for a in items):
                raise ConfigError(f"quantizer {name!r}: axis must be null, an integer or a list of integers, "
                                  f"got {axis!r}")
            axis = items if isinstance(axis, (list, tuple)) else int(axis)
        self.bits = int(bits)
        self.symmetric = symmetric
        self.narrow_range = narrow_range
        self.per_channel = per_channel
        self.axis = axis
        self.signed = signed
        self.scale_format = scale_format
        self._set_init_fields(init, init_percentile, check=type(self).__init__ is Quantizer.__init__)

    def _set_init_fields(self, init, init_percentile, check: bool) -> None:
        """Set the init fields (the outermost constructor's values win); the constructor the instance's
        class resolves to checks them, once every other field is set."""
        if init is not _UNSET:
            self.init = init
        if init_percentile is not _UNSET:
            self.init_percentile = init_percentile
        if check:
            self._check_init_fields()

    def _check_init_fields(self) -> None:
        from qresearch.quantizers.init.rules import INIT_RULES

        name = self.registry_name or type(self).__name__
        self.init_percentile = check_number(name, "init_percentile", self.init_percentile, low=0.0, high=100.0,
                                            low_open=True)
        if not isinstance(self.init, str) or self.init not in INIT_RULES.names():
            raise ConfigError(f"quantizer {name!r}: init must be one of {', '.join(map(repr, INIT_RULES.names()))}, "
                              f"got {self.init!r}")
        # A quantizer with nothing to initialise (no init_params; DoReFa's weights) ignores ``init``: a scheme
        # that sets it for a role keeps working when a sweep swaps that role's quantizer.
        self.check_init()

    def check_init(self) -> None:
        """Quantizer-specific checks of ``init`` against the other fields; override to refuse a pair."""

    # ----------------------------------------------------------------- grids
    @property
    def grid(self) -> Tuple[int, int]:
        """``(qn, qp)``: integers lie in ``[-qn, qp]`` (symmetric signed) or ``[0, qp]``."""
        return ops.integer_grid(self.bits, self.signed and self.symmetric, self.narrow_range)

    def range_from_input(self) -> bool:
        """Whether the range is chosen from the tensor being quantized (``pot``'s ``pot_rounding: mse``): then
        calling the quantizer on another tensor does not put it on the same grid."""
        return False

    def pot(self, scale):
        """Apply the power-of-two scale format, if configured."""
        return ops.pot_ste(scale) if self.scale_format == "pot" else scale

    # ------------------------------------------------------------- channels
    def channel_axes(self, tensor_shape, name: str, layer) -> Optional[Tuple[int, ...]]:
        """Sorted, non-negative channel axes for this tensor, or None (per-tensor)."""
        if not self.per_channel:
            return None
        if tensor_shape is None:
            raise ConfigError(
                f"quantizer {self.registry_name!r}: per_channel is for weights; tfmot gives activation "
                f"quantizers no tensor shape (tensor {name!r}). Set per_channel: false for activations."
            )
        rank = len(tensor_shape)
        if self.axis is None:
            axes = channel_axes_for(layer, name)
        else:
            axes = self.axis if isinstance(self.axis, list) else [self.axis]
        if any(not -rank <= a < rank for a in axes):
            raise ConfigError(
                f"quantizer {self.registry_name!r}: axis {self.axis!r} is out of range for tensor {name!r} "
                f"of shape {tuple(tensor_shape)}"
            )
        return tuple(sorted(a % rank for a in axes))

    @staticmethod
    def param_shape(tensor_shape, axes) -> Tuple[int, ...]:
        return () if axes is None else tuple(int(tensor_shape[a]) for a in axes)

    @staticmethod
    def reduce_axes(x, axes):
        """Axes to reduce over for statistics: all but the channel axes."""
        rank = x.shape.rank
        return list(range(rank)) if axes is None else [a for a in range(rank) if a not in axes]

    @staticmethod
    def broadcast(param, x, axes):
        """Reshape a per-channel parameter so it broadcasts against ``x``."""
        if axes is None:
            return param
        shape = [param.shape[axes.index(i)] if i in axes else 1 for i in range(x.shape.rank)]
        return tf.reshape(param, shape)

    # ----------------------------------------------------------- tfmot API
    def build(self, tensor_shape, name, layer):
        _keep_layer_weights_first(layer)
        axes = self.channel_axes(tensor_shape, name, layer)
        weights = dict(self.build_params(self.param_shape(tensor_shape, axes), name, layer))
        if self.init_active() and self.init_flag not in weights and self.init_keys(weights):
            first = self.init_keys(weights)[0]
            weights[self.init_flag] = self.add_flag(layer, f"{name}_{first}_initialized")
        for value in weights.values():
            if isinstance(value, tf.Variable):
                setattr(value, QUANTIZER_VAR_ATTR, True)
                if value.trainable:
                    setattr(value, QUANTIZER_PARAM_ATTR, True)
        weights["channel_axes"] = axes
        # tfmot builds activation quantizers with no shape and output quantizers with an
        # unknown batch dimension; weights always have a full static shape.
        weights["per_example"] = _is_per_example(tensor_shape)
        return weights

    def build_params(self, shape: Tuple[int, ...], name: str, layer) -> Dict[str, Any]:
        """Create this quantizer's variables on ``layer``; override in subclasses."""
        return {}

    def latent_weights(self, w, axes):
        """The value a weight variable starts QAT from, given the float model's weight ``w`` (numpy) and this
        tensor's channel ``axes``; None keeps ``w``. A quantizer whose training transform is not the identity
        before rounding (DoReFa's tanh) returns the value the transform maps back to ``w``, so the QAT model
        starts from the float model's function; ``schemes.build`` assigns it once, after the float weights
        are copied (a QAT model's own weights, ``weights_from`` or a saved model, are not transformed)."""
        return None

    def __call__(self, inputs, training, weights, **kwargs):
        axes = weights.get("channel_axes")
        quantize = _autograph.user_code(self.quantize)  # a plugin's quantize converts as before
        if not (training and self.init_active() and self.init_keys(weights)):
            return quantize(inputs, bool(training), weights, axes)
        from qresearch.quantizers.init import collect

        collector = collect.current()
        if collector is not None and weights.get("per_example", False):
            collector.observe(self, inputs, weights, axes)  # set after the last calibration batch
            return inputs
        with tf.control_dependencies([self.init_in_graph(inputs, weights, axes)]):
            return quantize(inputs, True, weights, axes)

    # ------------------------------------------------------ initialisation
    def init_active(self) -> bool:
        """Whether the parameters start from data (any rule but a ``paper`` rule that reads none)."""
        return self.init != "paper" or self.paper_uses_data()

    def paper_uses_data(self) -> bool:
        """Whether ``paper_init`` reads the data; False: the constructor's values are the paper's start."""
        return False

    def paper_init(self, stats):
        """The algorithm's own rule: ``(values, valid)`` from ``stats`` (``init.stats.Stats``), or None."""
        return None

    @property
    def init_range(self) -> str:
        """The range the rules fit: ``symmetric`` (|x| <= c), ``unsigned`` (0..c) or ``asymmetric``."""
        if not self.symmetric:
            return "asymmetric"
        return "symmetric" if self.signed else "unsigned"

    @property
    def init_grid(self) -> Tuple[int, int]:
        """``(qn, qp)`` of the grid the MSE rule measures against."""
        return self.grid

    def init_keys(self, weights):
        """The declared parameters this instance built (an asymmetric offset, an activation-only clip)."""
        return [k for k in self.init_params if k in weights]

    def assign_init(self, weights, stats):
        """Evaluate the init rule on ``stats`` and write the usable entries; returns whether any was."""
        from qresearch.quantizers.init.rules import evaluate

        result = evaluate(self, stats)
        flag = weights[self.init_flag]
        if result is None:
            return tf.constant(False)
        values, valid = result
        for key in self.init_keys(weights):
            var = weights[key]
            value = tf.reshape(tf.cast(values[key], var.dtype), var.shape)
            ok = tf.reshape(valid, var.shape)
            var.assign(tf.where(ok, value, var))
        flag.assign(tf.where(tf.reduce_any(valid), 1.0, flag))
        return tf.reduce_any(valid)

    @staticmethod
    def set_at_trace(flag) -> bool:
        """Whether ``flag`` (an "initialised" flag) is already 1 where a graph is being traced: the graph
        then needs neither the initialisation nor a placeholder estimate (never true in an eager call)."""
        return _already_set(flag)

    @staticmethod
    def init_from_data(flag, variables, estimate):
        """A quantizer's own data-dependent initialisation outside the ``init`` rules (A2Q's norm and step),
        once: assign ``estimate()`` -> ``(values, valid)`` to ``variables`` while ``flag`` is 0, writing only
        valid entries and setting ``flag`` once any was. Read the variables under
        ``tf.control_dependencies([result])``."""
        if _already_set(flag):
            return tf.constant(False)  # traced after initialisation: no tf.cond in the step

        def initialise():
            values, valid = estimate()
            for var, value in zip(variables, values):
                var.assign(tf.where(valid, tf.cast(value, var.dtype), var))
            flag.assign(tf.where(tf.reduce_any(valid), 1.0, flag))
            return tf.constant(True)

        return tf.cond(tf.equal(flag, 0.0), initialise, lambda: tf.constant(False))

    def init_in_graph(self, x, weights, axes):
        """Initialise once from ``x`` (the weight tensor, or the first training batch without calibration)."""
        from qresearch.quantizers.init.stats import as_rows, stats_of

        flag = weights[self.init_flag]
        if _already_set(flag):
            # A graph traced after initialisation (a training step after calibration) carries no
            # initialisation at all: the tf.cond and the flag read would cost every step.
            return tf.constant(False)
        # Only usable entries are written and the flag is set once any was, so a dead batch (all zeros,
        # all NaN) defers initialisation to the next one.
        if replicas.active():
            # Several replicas: the whole batch's statistics, reduced outside the tf.cond (a sync point
            # cannot sit in a branch), so every replica writes the same values.
            stats = replicas.sync_stats(stats_of(as_rows(x, axes)))
            return tf.cond(tf.equal(flag, 0.0), lambda: self.assign_init(weights, stats), lambda: tf.constant(False))
        return tf.cond(tf.equal(flag, 0.0), lambda: self.assign_init(weights, stats_of(as_rows(x, axes))),
                       lambda: tf.constant(False))

    def quantize(self, x, training: bool, weights: Dict[str, Any], axes):
        """Fake-quantize ``x``. ``training`` is a Python bool (tfmot's smart_cond branches). A plugin's
        ``quantize`` goes through AutoGraph under ``tf.function``, so a Python ``if`` on a tensor works as in
        any Keras layer; qresearch's own quantizers branch on static facts only and skip it (``_autograph``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement quantize()")

    def get_config(self) -> Dict[str, Any]:
        params = inspect.signature(type(self).__init__).parameters
        config = {k: getattr(self, k) for k, p in params.items()
                  if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        # accepted by every constructor without being in its signature (registry.parameters lists them too)
        config.update({k: getattr(self, k, v) for k, v in INIT_FIELDS.items()})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def to_spec(self) -> Dict[str, Any]:
        """The plain-data spec ``create()`` rebuilds this quantizer from: ``{"name": ..., **config}``.

        Format-independent (JSON, YAML, Keras h5 configs), unlike Keras' registered-name
        serialization, which legacy h5 loading does not resolve.
        """
        return {"name": self.registry_name, **self.get_config()}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash((type(self), repr(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------- helpers
    @staticmethod
    def add_variable(layer, name: str, shape, init: float, trainable: bool, regularizer=None):
        from qresearch._compat import keras

        return layer.add_weight(
            name, shape=shape, initializer=keras.initializers.Constant(init),
            trainable=trainable, regularizer=regularizer,
        )

    @staticmethod
    def add_flag(layer, name: str):
        """A non-trainable 0/1 scalar: set once the quantizer has seen data."""
        from qresearch._compat import keras

        return layer.add_weight(name, shape=(), initializer=keras.initializers.Constant(0.0), trainable=False)


def check_number(quantizer: str, field: str, value, *, low=None, high=None, low_open=False,
                 high_open=False) -> float:
    """A finite real number in the given bounds, or a ConfigError naming the field."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high}")
        want = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
        raise ConfigError(f"quantizer {quantizer!r}: {field} must be {want}, got {value!r}")
    return float(value)


def check_bool(quantizer: str, field: str, value) -> bool:
    """A bool, or a ConfigError naming the field."""
    if not isinstance(value, bool):
        raise ConfigError(f"quantizer {quantizer!r}: {field} must be true or false, got {value!r}")
    return value


def check_choice(quantizer: str, field: str, value, choices):
    """One of ``choices``, or a ConfigError naming the field and the valid values."""
    if value not in choices:
        raise ConfigError(f"quantizer {quantizer!r}: {field} must be one of {', '.join(map(repr, choices))}, "
                          f"got {value!r}")
    return value


def _keep_layer_weights_first(wrapper) -> None:
    """List the wrapped layer's trainable weights before this quantizer's variables.

    tfmot's ``QuantizeWrapperV2.build`` puts the inner layer's weights first only if the
    inner layer is already built — true after ``quantize_apply``, false when a saved
    model is rebuilt from its config. Trainable quantizer variables (LSQ steps, PACT α)
    then change the weight order and an h5 load assigns values to the wrong variables.
    tfmot's own quantizers have no trainable variables, so it never shows there.
    """
    inner = getattr(wrapper, "layer", None)
    if inner is None or not getattr(inner, "built", False) \
            or not isinstance(wrapper, tfmot.quantization.keras.QuantizeWrapperV2):
        return
    own = wrapper._trainable_weights
    missing = [w for w in inner.trainable_weights if not any(w is v for v in own)]
    for i, w in enumerate(missing):
        own.insert(i, w)


def _already_set(flag) -> bool:
    """Whether ``flag`` is already 1 where a graph is being traced (never inside an eager call: there the
    tf.cond costs nothing and reads the value anyway). Read outside the graph, at trace time."""
    if tf.executing_eagerly():
        return False
    try:
        with tf.init_scope():
            return bool(tf.executing_eagerly() and float(flag.numpy()) != 0.0)
    except (AttributeError, TypeError, ValueError, tf.errors.OpError):
        return False


def _is_per_example(tensor_shape) -> bool:
    if tensor_shape is None:
        return True
    dims = tf.TensorShape(tensor_shape)
    return dims.rank is None or (dims.rank > 0 and dims[0] is None)
