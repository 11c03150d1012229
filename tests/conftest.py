"""Test-session set-up shared by every folder.

``make test`` runs two pytest-xdist workers (``--dist loadgroup``). Each test file is one group, so a
file's module-scoped fixtures are built once, on one worker; the deployment tests (tests/hardware, whose
session fixtures train the models they share) are one group together, scheduled first: the longest unit
starts while the other worker takes the files one by one (xdist hands groups out in collection order).

Tests listed in tests/slow.txt (measured over ~5 s each) are marked ``slow``: ``make test`` leaves them out,
``make test-slow`` runs them, CI runs both.
"""
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SLOW_LIST = TESTS / "slow.txt"


def slow_ids(path: Path = SLOW_LIST) -> set:
    """Node ids listed in ``path`` (``tests/file.py::test[case]``, or ``tests/file.py::test`` for every case);
    ``#`` starts a comment."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def mark_slow(config, items) -> None:
    """Mark the listed tests ``slow``; a listed id whose file was collected whole but which is gone is an error
    (a renamed test would otherwise fall back into the fast suite unnoticed)."""
    listed = slow_ids()
    found = set()
    for item in items:  # node ids relative to the repository root (pyproject.toml), before xdist's suffix
        entry = item.nodeid if item.nodeid in listed else item.nodeid.split("[")[0]  # a bare name: every case
        if entry in listed:
            item.add_marker(pytest.mark.slow)
            found.add(entry)
    if any("::" in str(arg) for arg in config.args):
        return  # single tests asked for: their files' other tests were not collected
    files = {item.nodeid.split("::")[0] for item in items}
    stale = sorted(i for i in listed - found if i.split("::")[0] in files)
    if stale:
        raise pytest.UsageError(f"tests/slow.txt lists tests that do not exist: {stale}; update or remove them")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker turns the markers into node-id suffixes (loadgroup)
def pytest_collection_modifyitems(config, items):
    mark_slow(config, items)
    for item in items:
        path = Path(str(item.fspath)).resolve()
        rel = path.relative_to(TESTS)
        group = "hardware" if rel.parts[0] == "hardware" else str(rel)
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0] != "hardware")
