"""The quantizer registry: ``register``, ``get``, ``names``, ``create``."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Dict, Mapping, Optional, Union

from qresearch._compat import keras
from qresearch.errors import ConfigError, QResearchError
from qresearch.registry import Registry
from qresearch.spec_keys import GRID_FIELDS, LOW_BITS_KEY, NAME_KEYS, split_low_bits

QUANTIZERS: Registry = Registry(
    "quantizer", how_to_add="decorate a Quantizer subclass with @qresearch.quantizers.register('NAME') in a "
    "module of yours, then pass plugins=[your_module] on the command line (or import the module in Python) "
    "and use it as scheme.weights.quantizer=NAME.")
# Each quantizer is Keras-serializable as "qresearch>quantizer:<name>": the name a saved model stores.
KERAS_PACKAGE, KERAS_PREFIX = "qresearch", "quantizer:"
ROLES = ("weights", "activations")
# A spec's ``low_bits: {max_bits: N, <field>: <value>, ...}`` (``spec_keys.LOW_BITS_KEY``): fields that replace the
# spec's own where its width is at most N bits (a preset's range rule for 2-3-bit grids, where the 8-bit one fails),
# so a preset stays one scheme across a bit-width sweep. Its fields are checked as the spec's own, whether they apply
# or not (``create``).


def register(name: str, *, overwrite: bool = False):
    """Class decorator: register a ``qresearch.quantizers.Quantizer`` subclass under ``name``.

    Also registers it as Keras-serializable, so models using it save and load.
    """
    from qresearch.quantizers.base import Quantizer

    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise QResearchError(f"quantizer {name!r}: {cls!r} must subclass qresearch.quantizers.Quantizer")
        # The name is claimed first: a refused duplicate must not replace the Keras
        # deserialization entry of the class that owns the name.
        QUANTIZERS.register(name, cls, overwrite=overwrite)
        cls.registry_name = name
        keras.utils.register_keras_serializable(package=KERAS_PACKAGE, name=KERAS_PREFIX + name)(cls)
        return cls

    return add


def keras_name(name: str) -> str:
    """The name a saved model stores for the quantizer registered as ``name``."""
    return f"{KERAS_PACKAGE}>{KERAS_PREFIX}{name}"


def get(name: str):
    """The quantizer class registered under ``name``."""
    return QUANTIZERS.get(name)


def names():
    """Sorted names of every registered quantizer."""
    return QUANTIZERS.names()


def parameters(cls) -> Dict[str, Any]:
    """A quantizer class's spec fields and their defaults."""
    from qresearch.quantizers.base import INIT_FIELDS

    sig = inspect.signature(cls.__init__)
    fields = {k: p.default for k, p in sig.parameters.items()
              if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    # Accepted by every constructor (Quantizer.__init_subclass__): ``init: paper`` is valid for any
    # quantizer, so a scheme can switch algorithms and keep it; other rules need declared parameters.
    fields.update({k: v for k, v in INIT_FIELDS.items() if k not in fields})
    return fields


def create(spec: Union[str, Mapping[str, Any], Any], role: Optional[str] = None, **overrides):
    """Build a quantizer from a name, a dict spec or an instance.

    ``spec`` is e.g. ``"lsq"`` or ``{"name": "lsq", "bits": 4, "per_channel": True}``
    (``"quantizer"`` is accepted for ``"name"``). ``role`` ("weights" or "activations")
    applies the algorithm's defaults for that role before the spec's own fields.
    """
    from qresearch.quantizers.base import Quantizer

    if isinstance(spec, Quantizer):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a quantizer spec must be a name or a dict with a 'name', got {spec!r}")
    fields = dict(spec)
    fields.update(overrides)
    name = None
    for key in NAME_KEYS:
        if key in fields:
            name = fields.pop(key)
    if name is None:
        raise ConfigError(f"quantizer spec {dict(spec)!r} has no 'name'; known quantizers: {', '.join(names())}")
    cls = get(name)
    if role is not None and role not in ROLES:
        raise ConfigError(f"role must be one of {ROLES}, got {role!r}")
    kwargs = dict(cls.role_defaults.get(role, {})) if role else {}
    kwargs.update(fields)
    valid = parameters(cls)
    max_bits, low = _low_bits(kwargs.pop(LOW_BITS_KEY, None), name)
    unknown = [k for k in list(kwargs) + [k for k in low if k not in kwargs] if k not in valid]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(valid) + [LOW_BITS_KEY], n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"quantizer {name!r} has no field {', '.join(hints)}. "
                          f"Valid fields: {', '.join(valid)}, {LOW_BITS_KEY}.")
    if low and kwargs.get("bits", valid.get("bits")) <= max_bits:
        kwargs.update(low)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"quantizer {name!r}: bad spec {kwargs!r}: {exc}") from exc


def _low_bits(value, name: str):
    """``(max_bits, fields)`` of a spec's ``low_bits`` entry (``(0, {})`` without one)."""
    max_bits, fields = split_low_bits(value, f"quantizer {name!r}: {LOW_BITS_KEY}", "{max_bits: 3, range_rule: mse}")
    fixed = [k for k in GRID_FIELDS + NAME_KEYS + (LOW_BITS_KEY,) if k in fields]
    if fixed:
        raise ConfigError(f"quantizer {name!r}: {LOW_BITS_KEY} cannot set {', '.join(fixed)}: it chooses how a "
                          "range is found or starts; the algorithm and its grid (what a hardware target checks) are "
                          "the spec's own")
    return max_bits, fields
