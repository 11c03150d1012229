"""One registry type for every plugin kind (quantizers, schemes, targets, ...).

Third-party packages add plugins through the entry-point group
``qresearch.plugins``: each entry point names a module (or a callable) that
registers its plugins when imported (or called). They are loaded on the first
lookup of any registry.
"""
from __future__ import annotations

import difflib
import importlib.metadata
import logging
from typing import Dict, Generic, Iterator, List, TypeVar

from qresearch.errors import QResearchError, UnknownNameError

T = TypeVar("T")
ENTRY_POINT_GROUP = "qresearch.plugins"
_log = logging.getLogger(__name__)
_entry_points_loaded = False


def load_entry_point_plugins() -> None:
    """Import every ``qresearch.plugins`` entry point once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            _log.warning("qresearch plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if callable(obj) and not isinstance(obj, type):
            obj()


class Registry(Generic[T]):
    """Maps names to plugins of one kind."""

    def __init__(self, kind: str, how_to_add: str = ""):
        self.kind = kind
        # Said after the known names when a lookup fails: how a user adds a plugin of this kind
        # (each registry knows its own decorator, config key or file), so the fix is in the message.
        self.how_to_add = how_to_add
        self._items: Dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        if not isinstance(name, str) or not name:
            raise QResearchError(f"{self.kind} names must be non-empty strings, got {name!r}")

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item and not overwrite:
                raise QResearchError(
                    f"{self.kind} {name!r} is already registered ({self._items[name]!r}); "
                    f"pick another name or pass overwrite=True"
                )
            self._items[name] = item
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        if not isinstance(name, str):  # also keeps unhashable specs (lists, dicts) out of the dict lookup
            raise UnknownNameError(self.unknown_message(name))
        if name not in self._items:
            load_entry_point_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name) -> str:
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        add = f" To add one: {self.how_to_add}" if self.how_to_add else ""
        return f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}.{add}"

    def names(self) -> List[str]:
        load_entry_point_plugins()
        return sorted(self._items)

    def __contains__(self, name) -> bool:
        load_entry_point_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"
