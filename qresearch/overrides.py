"""The command line's overrides, checked before Hydra parses them: ``check_overrides`` names the
closest valid keys for a misspelt one ("did you mean"), and ``with_implied_groups`` picks a
group's ``custom`` option when only its ``_target_`` is given. ``qresearch.run.cli`` calls both."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, List, Mapping, Sequence

import yaml
from omegaconf import OmegaConf

from qresearch.config import Config
from qresearch.errors import ConfigError
from qresearch.paths import CONF_DIR

#: Config groups a user picks options from (``dataset=mnist``).
GROUPS = ("dataset", "model", "scheme", "hardware", "training", "logger", "paths")
#: Groups whose options are ``# @package _global_`` files added with ``+group=option``.
GLOBAL_GROUPS = ("experiment", "sweep", "hparams_search", "precision")
#: Groups whose ``custom`` option is picked when only ``GROUP._target_=...`` is given (``with_implied_groups``).
TARGET_GROUPS = ("dataset", "model")
#: Usual abbreviations of config keys, named first in "did you mean" (``training.qat.lr``).
KEY_ALIASES = {"lr": "learning_rate", "learning-rate": "learning_rate", "bs": "batch_size", "batch": "batch_size",
               "wd": "weight_decay", "optim": "optimizer", "opt": "optimizer", "epoch": "epochs",
               "n_epochs": "epochs", "num_epochs": "epochs", "seeds": "seed", "bit": "bits", "nbits": "bits"}


def _known_keys(node: Any, prefix: str = "") -> List[str]:
    keys = []
    if isinstance(node, Mapping):
        for k, v in node.items():
            if str(k) == "defaults":
                continue
            path = f"{prefix}.{k}" if prefix else str(k)
            keys.append(path)
            keys.extend(_known_keys(v, path))
    return keys


def _schema_keys() -> List[str]:
    return _known_keys(OmegaConf.to_container(OmegaConf.structured(Config), enum_to_str=True))


def group_options(group: str, conf_dir: Path = CONF_DIR) -> List[str]:
    folder = Path(conf_dir) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _group_keys(group: str, conf_dir: Path) -> List[str]:
    keys = set()
    for option in group_options(group, conf_dir):
        try:
            data = yaml.safe_load((Path(conf_dir) / group / f"{option}.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        keys.update(f"{group}.{k}" for k in _known_keys(data))
    return sorted(keys)


def check_overrides(args: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Fail fast, with suggestions, on command-line overrides of keys that exist nowhere.

    Hydra rejects them too ("Key 'epoch' is not in struct"); this check names the closest
    valid keys. It looks at the schema and at every option of every group, so it accepts a
    key that only some options have (Hydra then checks it against the chosen one).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [a for a in args if "=" in a and not a.startswith(("-", "+", "~"))]
    if not candidates:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # Hydra reports syntax errors itself, with its own message
        return
    known = set(_schema_keys())
    for group in GROUPS:
        known.add(group)
        known.update(_group_keys(group, conf_dir))
    problems = []
    for ov in overrides:
        key = ov.key_or_group
        if ov.package or key.startswith("hydra") or key in GLOBAL_GROUPS or key in known:
            continue
        top = key.split(".")[0]
        if top in ("scheme", "hardware") and "." in key:
            continue  # free-form specs: their own validation names the valid fields
        close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        head, _, last = key.rpartition(".")
        alias = f"{head}.{KEY_ALIASES[last]}" if head and last in KEY_ALIASES else KEY_ALIASES.get(key)
        if alias in known:  # a usual abbreviation (lr, bs, wd) names its key first
            close = [alias] + [c for c in close if c != alias][:2]
        siblings = sorted(k for k in known if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0] and "." in k) \
            if "." in key else sorted(k for k in known if "." not in k)
        msg = f"unknown config key {key!r}."
        if close:
            msg += f" Did you mean {' or '.join(repr(c) for c in close)}?"
        if siblings:
            msg += f" Valid keys here: {', '.join(siblings)}."
        msg += f" To add a new key on purpose, write +{ov.input_line}."
        problems.append(msg)
    if problems:
        raise ConfigError("\n".join(problems))


def plugins_as_list(args: Sequence[str]) -> List[str]:
    """``plugins=my_mod`` (or ``plugins=a,b``) -> ``plugins=[my_mod]`` / ``plugins=[a,b]``.

    ``plugins`` is a list, and Hydra refuses a bare name for it ("Value 'str' is not a ListConfig"),
    while one module without brackets is what users type first. A comma list here means several
    modules together, not a sweep over plugin sets.
    """
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        if sep and key.lstrip("+") == "plugins" and value and not value.startswith("["):
            a = f"{key}=[{value}]"
        out.append(a)
    return out


def with_implied_groups(args: Sequence[str]) -> List[str]:
    """``model._target_=pkg.build`` (or ``dataset._target_=...``) alone also picks ``model=custom``.

    The other options of the group (mlp, digits, ...) have no ``_target_`` key, so Hydra would
    refuse the override ("Key '_target_' is not in struct"), and their keys (mlp's hidden sizes)
    are not options of the user's function; ``custom`` holds only the target (and, for datasets,
    qresearch's own keys). An explicit group choice on the line is left alone.
    """
    out = list(args)
    keys = [a.split("=", 1)[0] for a in args if "=" in a]
    for group in TARGET_GROUPS:
        target_key = f"{group}._target_"
        if any(k.lstrip("+~") == group for k in keys) or not any(k.lstrip("+") == target_key for k in keys):
            continue
        # custom has the key, so an append (+model._target_) would collide with it: set it instead
        out = [a.lstrip("+") if a.split("=", 1)[0].lstrip("+") == target_key else a for a in out]
        out.append(f"{group}=custom")
    return out
