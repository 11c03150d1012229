"""The sweep's Hydra callback (``hydra.callbacks.sweep_summary`` in conf/config.yaml): checks the
sweep's shared config once before any job starts, and at the end counts the results, writes the
report next to the runs and logs it to wandb in the sweep's group."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Dict

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qresearch import config as qconfig
from qresearch.config import to_dict
from qresearch.errors import ConfigError
from qresearch.labels import setting_key
from qresearch.plugins import PluginImportError, import_plugins
from qresearch.results import load_results

log = logging.getLogger("qresearch.run")


class SweepSummary(Callback):
    """Hydra callback: check the sweep's shared config before any job starts; afterwards, count
    the sweep's results and say how to report them."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The config with the non-swept overrides: a bad value there would fail every job, so
        # fail once, now, with the valid choices (swept values are checked by each job).
        # Hydra turns a callback's exceptions into warnings, so stop with SystemExit.
        try:
            import_plugins(config.get("plugins"))  # also those an experiment file or conf/local names
            hc = config.get("hydra") or {}
            # A swept dataset key (dataset.path=a.npz,b.npz) is unset in this shared config: leave
            # the dataset's own check (its file, its target) to each job, which has its value.
            swept = self._swept_keys(hc)
            qconfig.validate(config, check_data=not any(k.split(".")[0] == "dataset" for k in swept))
            # the sweep's grid (file) and command-line values: key -> value text
            given = {str(k): str(v) for k, v in dict((hc.get("sweeper") or {}).get("params") or {}).items()}
            for o in (hc.get("overrides") or {}).get("task") or []:
                given[setting_key(o)] = o.split("=", 1)[1] if "=" in o else ""
            bits = config.get("bits")
            if bits is None and given.get("bits", "null") not in ("null", ""):
                bits = given["bits"]
            qconfig.check_bits_shorthand(bits, given)
        except (ConfigError, PluginImportError) as exc:
            print(f"Error in the sweep's config (no job was started): {exc}", file=sys.stderr)
            raise SystemExit(2)

    @staticmethod
    def _swept_keys(hc: Any) -> set:
        """Keys the sweep gives several values (its file's grid and the command line)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        lines = [f"{k}={v}" for k, v in dict((hc.get("sweeper") or {}).get("params") or {}).items()]
        lines += [str(o) for o in (hc.get("overrides") or {}).get("task") or []]
        try:
            return {o.key_or_group for o in OverridesParser.create().parse_overrides(lines) if o.is_sweep_override()}
        except Exception:  # an unparsable grid is Hydra's to report
            return set()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = load_results([sweep_dir])
        counts: Dict[str, int] = {}
        for r in records:
            counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no results"
        print(f"\nsweep {sweep_dir}: {summary}.\nreport: python -m qresearch.report {sweep_dir}")
        if records:
            log_sweep_report(sweep_dir, config)


def log_sweep_report(sweep_dir: Path, config: DictConfig) -> None:
    """Write the sweep's report next to its runs and log it to wandb in the sweep's group, so the
    comparison (accuracy against bit width) lives where the runs do. Never fails the sweep."""
    lcfg = to_dict(config.get("logger") or {})
    if str(lcfg.get("mode", "auto")).lower() == "disabled":
        return
    try:
        from qresearch.logger import log_report
        from qresearch.report import make_report

        rep = make_report([sweep_dir], quiet=True)
        group = lcfg.get("group") or config.get("sweep_name")
        where = log_report(rep, lcfg, group, str(sweep_dir))
        print(f"wandb: the sweep's report (table, plot, results.csv) is logged in group {group!r}")
        if where:  # offline: one command uploads the jobs' runs and the report
            print(f"wandb offline: upload the whole sweep later with `wandb sync {sweep_dir}/*/wandb/offline-run-* "
                  f"{sweep_dir}/wandb/offline-run-*`")
    except Exception as exc:  # the results on disk are the record; the report can be made again
        log.warning("the sweep's report could not be logged to wandb: %s: %s", type(exc).__name__, exc)
