"""Key names that scheme specs, quantizer specs and hardware targets share. No TensorFlow here: schemes and targets
are validated before it loads."""

#: The keys that name a quantizer's algorithm in a spec (``quantizer: lsq`` or ``name: lsq``); where a spec gives
#: both, the last one here wins.
NAME_KEYS = ("quantizer", "name")
#: The fields every quantizer has, which make its grid: a hardware target constrains them, ``low_bits`` may not
#: change them, and a spec that switches algorithm keeps them.
GRID_FIELDS = ("bits", "symmetric", "narrow_range", "per_channel", "axis", "signed", "scale_format")
