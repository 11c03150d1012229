"""The results store: one ``result.json`` per run (written atomically), and an append-only
``results.jsonl`` per sweep folder; readers that gather them for reports.

A result record::

    {"status": "running" | "completed" | "failed" | "skipped",
     "config": {...resolved...}, "config_hash": "...", "overrides": [...],
     "labels": {"dataset", "model", "algorithm", "variant", "target", "weight_bits",
                "activation_bits", "seed", "sweep"},
     "metrics": {"float_accuracy", "ptq_accuracy", "qat_accuracy", "deployed_accuracy", ...},
     "times": {...seconds per stage...}, "error": {"type", "message", "traceback", "stage"} | null}
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional

RESULT_FILE = "result.json"
STORE_FILE = "results.jsonl"
COMPLETED, FAILED, RUNNING = "completed", "failed", "running"


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become null (strict JSON readers reject them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        with contextlib.suppress(Exception):
            return _clean(obj.item())
    return obj


def write_json_atomic(path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(obj), f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_jsonl(path, record: Dict[str, Any]) -> None:
    """Append one record as a line, under an exclusive lock (parallel jobs share the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_clean(record), sort_keys=True, default=str) + "\n"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_json(path) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def completed_result(folder, config_hash: str) -> Optional[Dict[str, Any]]:
    """The completed result in ``folder`` when it has the same config hash, else None."""
    rec = read_json(Path(folder) / RESULT_FILE)
    if rec and rec.get("status") == COMPLETED and rec.get("config_hash") == config_hash:
        return rec
    return None


def find_result_files(paths: Iterable) -> List[Path]:
    """Every result.json under the given files or folders (sorted, no duplicates)."""
    found = set()
    for p in paths:
        p = Path(p)
        if p.is_file() and p.name == RESULT_FILE:
            found.add(p.resolve())
        elif p.is_dir():
            found.update(f.resolve() for f in p.rglob(RESULT_FILE))
    return sorted(found)


def load_results(paths: Iterable) -> List[Dict[str, Any]]:
    """Records of every result.json under ``paths``, each with its file path in ``_path``."""
    out = []
    for f in find_result_files(paths):
        rec = read_json(f)
        if isinstance(rec, dict):
            rec["_path"] = str(f)
            out.append(rec)
    return out


def iter_jsonl(path) -> Iterator[Dict[str, Any]]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                with contextlib.suppress(ValueError):
                    yield json.loads(line)
