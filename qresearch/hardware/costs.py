"""A target's own per-op cost table (key ``costs`` of ``conf/hardware/<name>.yaml``), as data.

It lives with the targets (not in ``qresearch.mixed``) because it is a fact about a target: the Target
validates it when it is built, and the cost model (``qresearch.mixed.cost``) reads it from there.

Layout::

    costs:
      unit: pJ                       # what one entry measures (energy, cycles, ...)
      mac:                           # cost of ONE MAC per op class (Keras class name) or "default"
        default: {w8a8: 0.23, w4a8: 0.12, w4a4: 0.07, w2a2: 0.03}
        DepthwiseConv2D: {w8a8: 0.30}   # a class entry wins; a missing pair falls back to default
      weight_bit: 0.0                # optional: cost of storing/reading one weight bit
      activation_bit: 0.0            # optional: cost of writing one activation bit

``w<W>a<A>`` is (weight bits, input activation bits), the pair a BOP counts. A pair missing from a
class's entry and from ``default`` is an error naming it (no silent extrapolation).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional

from qresearch.errors import ConfigError

KEYS = ("unit", "mac", "weight_bit", "activation_bit")


def _number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and v >= 0


@dataclasses.dataclass(frozen=True)
class CostTable:
    """A target's cost of one MAC per op class and (weight, activation) width pair."""

    unit: str
    mac: Mapping[str, Mapping[str, float]]
    weight_bit: float = 0.0
    activation_bit: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "cost table") -> "CostTable":
        fix = "e.g. costs: {unit: pJ, mac: {default: {w8a8: 0.23, w4a4: 0.07}}}"
        if not isinstance(d, Mapping) or "mac" not in d:
            raise ConfigError(f"{where} needs 'mac': {{op class or default: {{w8a8: cost, ...}}}} ({fix}), got {d!r}")
        extra = sorted(set(d) - set(KEYS))
        if extra:
            raise ConfigError(f"{where}: unknown key {extra[0]!r}; valid keys: {', '.join(KEYS)} ({fix})")
        if not isinstance(d["mac"], Mapping) or not d["mac"]:
            raise ConfigError(f"{where}.mac must map an op class (or default) to its pairs ({fix}), got {d['mac']!r}")
        mac = {}
        for op, entries in d["mac"].items():
            if not isinstance(entries, Mapping):
                raise ConfigError(f"{where}.mac.{op} must map 'w<bits>a<bits>' to a number, got {entries!r}")
            for key, v in entries.items():
                if not (isinstance(key, str) and re.fullmatch(r"w\d+a\d+", key)) or not _number(v):
                    raise ConfigError(f"{where}.mac.{op}.{key}: keys are 'w<bits>a<bits>' (e.g. w4a8) and values "
                                      f"non-negative numbers, got {key!r}: {v!r}")
            mac[str(op)] = {str(k): float(v) for k, v in entries.items()}
        for key in ("weight_bit", "activation_bit"):
            if key in d and not _number(d[key]):
                raise ConfigError(f"{where}.{key} must be a non-negative number, got {d[key]!r}")
        return cls(unit=str(d.get("unit", "") or ""), mac=mac, weight_bit=float(d.get("weight_bit", 0.0)),
                   activation_bit=float(d.get("activation_bit", 0.0)))

    @classmethod
    def of(cls, source) -> Optional["CostTable"]:
        """A CostTable from itself, its dict, or a Target (its ``costs``, None when it has none)."""
        if source is None or isinstance(source, CostTable):
            return source
        if hasattr(source, "costs") and not isinstance(source, Mapping):
            return source.costs
        return cls.from_dict(source)

    def to_dict(self) -> dict:
        return {"unit": self.unit, "mac": {k: dict(v) for k, v in self.mac.items()},
                "weight_bit": self.weight_bit, "activation_bit": self.activation_bit}

    def mac_cost(self, op: str, w: int, a: int) -> float:
        key = f"w{w}a{a}"
        for entry in (self.mac.get(op, {}), self.mac.get("default", {})):
            if key in entry:
                return entry[key]
        raise ConfigError(f"cost table has no entry {key!r} for {op!r} nor under 'default': add it to the "
                          f"target's costs.mac (the table is never extrapolated)")

    def cost_at(self, op: str, macs: float, w: int, a_in: int, weight_bits: float, activation_bits: float) -> float:
        """One layer's cost: MACs x the cost of one MAC at (w, a_in) + its stored weight and written activation bits."""
        return macs * self.mac_cost(op, w, a_in) + weight_bits * self.weight_bit + activation_bits * self.activation_bit

    def layer_cost(self, row: Mapping[str, Any]) -> float:
        """A cost-model row's cost at its widths."""
        return self.cost_at(row["class"], row["macs"], row["w_bits"], row["a_in_bits"], row["weight_bits"],
                            row["activation_bits"])
