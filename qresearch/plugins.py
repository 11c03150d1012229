"""Your own code on the command line: ``plugins=[my_pkg.my_quant]`` and ``_target_`` paths.

A plugin is any importable module that registers things when imported (a quantizer with
``@qresearch.quantizers.register``, a dataset loader, a model builder, a scheme preset, a
hardware target). The modules listed in the config key ``plugins`` and in the environment
variable ``QRESEARCH_PLUGINS`` (comma-separated) are imported

* by ``qresearch.run.cli`` before Hydra composes the config, so the checks that run before any
  job (override keys, the sweep's shared config) already see the plugin's names, and
* at the start of every job, because launcher workers (joblib, submitit, ray) receive only the
  config, not the parent process's imports.

Installed packages can instead declare the entry-point group ``qresearch.plugins``
(``qresearch.registry``): those load on the first registry lookup, with no flag.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any, Callable, List, Sequence

from qresearch.errors import ConfigError, QResearchError

PLUGINS_ENV = "QRESEARCH_PLUGINS"
PLUGINS_KEY = "plugins"


class PluginImportError(QResearchError, ImportError):
    """A module named in ``plugins`` (or ``QRESEARCH_PLUGINS``) could not be imported."""


def _cwd_importable() -> None:
    # Users run from their project folder and name modules that live there (plugins=[my_quant]).
    # `python -m` puts that folder on sys.path, but launcher workers, console scripts and
    # notebooks started elsewhere do not; appended (not prepended) so it never shadows an
    # installed package of the same name.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def from_env() -> List[str]:
    """Module names in ``QRESEARCH_PLUGINS`` (comma-separated; blanks ignored)."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _names(modules: Any) -> List[str]:
    if modules is None:
        return []
    if isinstance(modules, str):
        return [m.strip() for m in modules.split(",") if m.strip()]
    out: List[str] = []
    for m in modules:
        out.extend(_names(m))
    return out


def import_plugins(modules: Any = None, *, env: bool = True) -> List[str]:
    """Import every plugin module (the given names, then ``QRESEARCH_PLUGINS``); returns their names.

    Importing twice is free (Python caches modules), so callers need not coordinate.
    """
    names = _names(modules) + (from_env() if env else [])
    if not names:
        return []
    _cwd_importable()
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except Exception as exc:  # any error while importing a plugin is the plugin's, named as such
            raise PluginImportError(_import_failure(name, exc)) from exc
    return list(dict.fromkeys(names))


def _import_failure(name: str, exc: BaseException) -> str:
    missing = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and missing and (name == missing or name.startswith(missing + ".")):
        return (f"plugin module {name!r} could not be imported: {type(exc).__name__}: {exc}. "
                f"Fix: make it importable from where you run: run from the folder that holds it "
                f"(the current folder, {os.getcwd()}, is searched), add its folder to PYTHONPATH, or install its "
                f"package (pip install -e .); or correct the name in plugins=[...] / {PLUGINS_ENV}.")
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames and not isinstance(exc, SyntaxError) else ""
    return (f"plugin module {name!r} was found but failed while importing: {type(exc).__name__}: {exc}{at}. "
            f"Fix the error in the module (run `python -c 'import {name}'` to see the full traceback).")


def overrides_plugins(args: Sequence[str]) -> List[str]:
    """The module names a command line gives to ``plugins=[...]`` (``+plugins``/``++plugins`` too;
    a swept ``plugins=[a],[b]`` gives every one), before Hydra parses the line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [a for a in args if "=" in a and a.split("=", 1)[0].lstrip("+") == PLUGINS_KEY]
    if not lines:
        return []
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except Exception:  # Hydra reports syntax errors itself, with its own message
        return []
    names: List[str] = []
    for ov in overrides:
        value = ov.value()
        values = getattr(value, "list", None)  # a choice sweep: every option's modules
        for v in (values if values is not None else [value]):
            names.extend(_names(v))
    return names


def import_object(path: Any, what: str, contract: str) -> Callable[..., Any]:
    """The callable a dotted ``_target_`` path names, or a ConfigError saying how to fix it."""
    module, _, attr = str(path).rpartition(".")
    if not module or not attr:
        raise ConfigError(f"{what} {path!r} is not a dotted path: give 'package.module.function', {contract}")
    _cwd_importable()
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        raise ConfigError(f"{what} {path!r}: module {module!r} cannot be imported ({type(exc).__name__}: {exc}). "
                          f"Fix: run from the folder that holds it, add that folder to PYTHONPATH or install "
                          f"its package; the function is {contract}") from exc
    obj = getattr(mod, attr, None)
    if obj is None:
        public = sorted(n for n in vars(mod) if not n.startswith("_") and callable(getattr(mod, n)))
        raise ConfigError(f"{what} {path!r}: module {module!r} has no {attr!r} "
                          f"(it has: {', '.join(public) or 'nothing'}); the function is {contract}")
    if not callable(obj):
        raise ConfigError(f"{what} {path!r} is a {type(obj).__name__}, not a function; it should be {contract}")
    return obj


__all__ = ["PLUGINS_ENV", "PluginImportError", "from_env", "import_object", "import_plugins", "overrides_plugins"]
