"""One experiment: ``python -m qresearch.run [overrides]``; a sweep: ``python -m qresearch.run -m ...``.

The Hydra entry point and nothing else: ``cli`` fixes the command line up before Hydra parses it
(flags after overrides, implied ``custom`` groups, plugins imported, misspelt keys named); ``main``,
the Hydra task function, runs one job (``qresearch.pipeline.run_job``) and returns its QAT
accuracy, which sweepers (Optuna) maximise. Every job is also one wandb run, grouped by sweep.
"""
from __future__ import annotations

import math
import sys
from typing import List, Optional

import hydra
from omegaconf import DictConfig

from qresearch import overrides
from qresearch.errors import ConfigError
from qresearch.paths import CONF_DIR
from qresearch.pipeline import run_job
from qresearch.plugins import PluginImportError, import_plugins, overrides_plugins
# Older conf files and notebooks name these here; conf/config.yaml names qresearch.sweep_callback.
from qresearch.sweep_callback import SweepSummary  # noqa: F401

__all__ = ["SweepSummary", "TrialFailed", "cli", "flags_first", "main", "run_job"]


class TrialFailed(RuntimeError):
    """A job failed in a sweeper that marks failed trials by an exception (its result.json has the error)."""


#: Sweepers that take a failed job's exception as "this trial failed" and go on (up to their
#: max_failure_rate), but crash on a NaN value: hydra-optuna-sweeper 1.3 tells optuna the NaN,
#: optuna refuses it, and the sweeper's fallback tells it again and raises out of the sweep.
#: Other sweepers (the basic one) stop at a raised job, so for them a failure is NaN.
RAISE_ON_FAILURE_SWEEPERS = ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",)


def _sweeper_target() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().sweeper.get("_target_") or "")
    except Exception:  # called without Hydra (tests, notebooks)
        return ""


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """The Hydra task function: one job; returns its QAT accuracy (NaN when it failed; an Optuna
    sweep gets TrialFailed instead, which marks the trial failed)."""
    value = run_job(cfg)
    if math.isnan(value) and _sweeper_target() in RAISE_ON_FAILURE_SWEEPERS:
        raise TrialFailed(f"job failed (error and partial results in its result.json under {cfg.paths.output_dir})")
    return value


#: Hydra's flags that take no value: accepted anywhere on the line (argparse wants them before the overrides).
_BARE_FLAGS = ("-m", "--multirun")


def flags_first(args: List[str]) -> List[str]:
    """``scheme=lsq -m bits=4,2`` -> ``-m scheme=lsq bits=4,2`` (Hydra's parser refuses the first form)."""
    return [a for a in args if a in _BARE_FLAGS] + [a for a in args if a not in _BARE_FLAGS]


def cli(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # model._target_=... (or dataset._target_) alone also picks model=custom: see with_implied_groups;
    # plugins=my_mod is read as plugins=[my_mod]
    args = overrides.plugins_as_list(overrides.with_implied_groups(flags_first(list(args))))
    sys.argv[1:] = args
    try:
        # Before Hydra composes: every check from here on (override keys, the sweep's shared
        # config, the scheme) must already see the names the plugins register.
        import_plugins(overrides_plugins(args))
    except PluginImportError as exc:
        print(f"Error importing plugins (nothing was run): {exc}", file=sys.stderr)
        raise SystemExit(2)
    try:
        overrides.check_overrides(args)
    except ConfigError as exc:
        print(f"Error in the overrides: {exc}", file=sys.stderr)
        raise SystemExit(2)
    main()


if __name__ == "__main__":
    # Run through the importable module, so launchers that pickle the task function
    # (joblib, submitit, ray) find it as qresearch.run.main.
    from qresearch.run import cli as _cli

    _cli()
