"""The hardware-target registry. Built-ins are the YAML files in ``conf/hardware/``.

``register(name, target)`` accepts a ``Target``, a dict of Target fields or a path to a
YAML file, so a user's target is one call (or one file) away, like a built-in.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Union

from qresearch.errors import ConfigError
from qresearch.hardware.target import Target
from qresearch.paths import CONF_DIR
from qresearch.registry import Registry

TARGETS: Registry = Registry(
    "hardware target", how_to_add="qresearch.hardware.register('NAME', Target | dict | 'NAME.yaml') in a module "
    "passed as plugins=[your_module] (or imported in Python); on the command line, a file NAME.yaml in "
    "conf/hardware/ or in a folder's hardware/ added with hydra.searchpath=[file://FOLDER].")
BUILTIN_DIR = CONF_DIR / "hardware"


def _as_target(obj, name: str | None = None) -> Target:
    if isinstance(obj, Target):
        return obj
    if isinstance(obj, (str, Path)) and str(obj).endswith((".yaml", ".yml")):
        return Target.from_yaml(obj)
    if isinstance(obj, Mapping) or hasattr(obj, "items"):
        try:  # Hydra/OmegaConf node -> plain data
            from omegaconf import OmegaConf

            if OmegaConf.is_config(obj):
                obj = OmegaConf.to_container(obj, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        d = dict(obj)
        if name is not None:
            d.setdefault("name", name)
        return Target.from_dict(d, source=f"hardware target {name or d.get('name')!r}")
    raise ConfigError(f"a hardware target must be a Target, a dict or a .yaml path, got {obj!r}")


def register_kernels(target: Target) -> Target:
    """Register the kernel set of a target with a ``pipeline:`` under the target's name (its ``kernels``),
    so models quantized for it emulate it, also after loading in a process that registered the target."""
    if target.pipeline is not None:
        from qresearch.kernels import KERNELS  # TensorFlow: only for targets that emulate a pipeline

        KERNELS.register(target.name, target.pipeline.kernel_set(target.name, target.description), overwrite=True)
    return target


def register(name: str, target: Union[Target, Mapping, str, Path], *, overwrite: bool = False) -> Target:
    """Register a target under ``name`` (its ``name`` field must agree)."""
    t = register_kernels(_as_target(target, name))
    if t.name != name:
        raise ConfigError(f"hardware target registered as {name!r} has name {t.name!r}; make them equal")
    TARGETS.register(name, t, overwrite=overwrite)
    return t


def get(target: Union[str, Target, Mapping]) -> Target:
    """A registered target by name; a ``Target`` or a dict (e.g. a Hydra node) is validated and returned."""
    if isinstance(target, str):
        return TARGETS.get(target)
    return register_kernels(_as_target(target))


def names() -> List[str]:
    return TARGETS.names()


def load_builtins(directory: Path = BUILTIN_DIR) -> None:
    for path in sorted(Path(directory).glob("*.yaml")):
        if path.stem not in TARGETS._items:
            TARGETS.register(path.stem, register_kernels(Target.from_yaml(path)))
