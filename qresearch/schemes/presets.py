"""Named schemes: ``register``, ``get``, ``names``; built-ins come from ``conf/scheme/*.yaml``.

Presets are stored as plain dicts and validated when fetched, so a preset naming a quantizer
plugin that registers later (or never) fails only when used, with the list of known quantizers.
"""
from __future__ import annotations

import copy
from typing import Any, List, Mapping, Union

import yaml

from qresearch.errors import ConfigError
from qresearch.paths import CONF_DIR
from qresearch.registry import Registry
from qresearch.schemes.spec import SchemeSpec

SCHEMES: Registry = Registry(
    "scheme", how_to_add="qresearch.schemes.register('NAME', {...}) in a module passed as plugins=[your_module] "
    "(or imported in Python); on the command line, a file NAME.yaml in conf/scheme/ or in a folder's scheme/ "
    "added with hydra.searchpath=[file://FOLDER]; or give the scheme as data: scheme.weights.quantizer=..., "
    "scheme.weights.bits=....")
_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    folder = CONF_DIR / "scheme"
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        if path.stem not in SCHEMES._items:
            SCHEMES.register(path.stem, _read(path))


def _read(path, seen=()) -> dict:
    """A scheme file as Hydra composes it: the sibling files its ``defaults`` name, then its own keys
    (``scheme/mixed.yaml`` is ``defaults: [lsq]`` plus its name)."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    merged: dict = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_" and entry not in seen:
            merged.update(_read(path.parent / f"{entry}.yaml", seen + (path.stem,)))
    merged.update({k: v for k, v in data.items() if not str(k).startswith("_") and k != "defaults"})
    return merged


def register(name: str, spec: Union[Mapping[str, Any], SchemeSpec], *, overwrite: bool = False):
    """Register a scheme preset (a dict or a SchemeSpec) under ``name``."""
    _load_builtin()
    data = spec.to_dict() if isinstance(spec, SchemeSpec) else dict(spec)
    if not isinstance(data, dict):
        raise ConfigError(f"scheme preset {name!r} must be a dict or SchemeSpec")
    SCHEMES.register(name, data, overwrite=overwrite)
    return spec


def get(name: str) -> SchemeSpec:
    """The preset ``name`` as a validated SchemeSpec."""
    _load_builtin()
    data = copy.deepcopy(SCHEMES.get(name))
    data.setdefault("name", name)
    try:
        return SchemeSpec.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"scheme preset {name!r}: {exc}") from None


def names() -> List[str]:
    _load_builtin()
    return SCHEMES.names()


def resolve(scheme) -> SchemeSpec:
    """A SchemeSpec (copied) from a SchemeSpec, a preset name or a scheme dict."""
    if isinstance(scheme, SchemeSpec):
        return copy.deepcopy(scheme)
    if isinstance(scheme, str):
        return get(scheme)
    if scheme is None:
        raise ConfigError("quantize needs a scheme: a preset name (see qresearch.schemes.names()), "
                          "a dict or a SchemeSpec")
    return SchemeSpec.from_dict(scheme)
