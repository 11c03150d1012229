"""Which code computed a result: the git commit of the checkout and the versions of the main packages.

A resumed sweep keeps results of earlier code, so each result says which code computed it."""
from __future__ import annotations

import platform
import subprocess
from typing import Dict

from qresearch.paths import REPO_DIR

PACKAGES = ("qresearch", "tensorflow", "tf-keras", "tensorflow-model-optimization", "hydra-core", "wandb")
_GIT: Dict[str, str] = {}  # asked once per process: every job of a sweep worker runs the same code


def code_version() -> Dict[str, str]:
    """The checkout's git commit (and ``dirty`` when tracked files differ from it). Empty outside git."""
    if not _GIT:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        try:
            _GIT["git_commit"] = git("rev-parse", "HEAD")
            _GIT["git_dirty"] = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
        except (OSError, subprocess.SubprocessError):
            _GIT["git_commit"] = ""
    return {k: v for k, v in _GIT.items() if v}


def versions() -> Dict[str, str]:
    """Python, the git commit and the installed versions of ``PACKAGES``."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), **code_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
