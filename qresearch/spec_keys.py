"""Key names that scheme specs, quantizer specs and hardware targets share. No TensorFlow here: schemes and targets
are validated before it loads."""
from collections.abc import Mapping

#: The keys that name a quantizer's algorithm in a spec (``quantizer: lsq`` or ``name: lsq``); where a spec gives
#: both, the last one here wins.
NAME_KEYS = ("quantizer", "name")
#: The fields every quantizer has, which make its grid: a hardware target constrains them, ``low_bits`` may not
#: change them, and a spec that switches algorithm keeps them.
GRID_FIELDS = ("bits", "symmetric", "narrow_range", "per_channel", "axis", "signed", "scale_format")
#: A spec's rule of fields that apply at or below a width: ``low_bits: {max_bits: N, <field>: <value>, ...}`` (a
#: quantizer spec's, ``quantizers.registry``; a scheme's, ``schemes.low_bits``).
LOW_BITS_KEY = "low_bits"


def split_low_bits(value, where: str, example: str):
    """``(max_bits, fields)`` of a ``low_bits`` rule (``(0, {})`` for None), its shape checked; ``where`` names it
    in errors (``quantizer 'minmax': low_bits``), ``example`` shows one."""
    from qresearch.errors import ConfigError

    if value is None:
        return 0, {}
    if not isinstance(value, Mapping) or "max_bits" not in value:
        raise ConfigError(f"{where} must be a dict with max_bits and the fields that apply at or below that width, "
                          f"e.g. {example}; got {value!r}")
    fields = dict(value)
    max_bits = fields.pop("max_bits")
    if isinstance(max_bits, bool) or not isinstance(max_bits, int) or not 2 <= max_bits <= 16:
        raise ConfigError(f"{where}.max_bits must be a bit width in [2, 16], got {max_bits!r}")
    return max_bits, fields
