"""Variant labels: ``algorithm[key=value,...]``, one labeller for the run and the report.

A run is labelled by the overrides it was given; the report by the config keys that vary among
runs of one algorithm. Both leave out the same keys (``config.is_coordinate``: seeds, bit widths,
the target, keys that change nothing computed), so a run's label and its report line agree.
"""
from __future__ import annotations

from typing import Iterable

from qresearch.config import is_coordinate


def setting_key(setting: str) -> str:
    """``+model.width=8`` -> ``model.width``."""
    return setting.split("=", 1)[0].lstrip("+~")


def variant_label(algorithm: str, settings: Iterable[str]) -> str:
    """The algorithm, plus every ``key=value`` setting whose key is not a coordinate, sorted."""
    extra = sorted(s.lstrip("+~") for s in settings if not is_coordinate(setting_key(s)))
    return f"{algorithm}[{','.join(extra)}]" if extra else algorithm
