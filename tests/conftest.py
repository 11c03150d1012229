"""Test-session set-up shared by every folder.

``make test`` runs two pytest-xdist workers (``--dist loadgroup``). Each test file is one group, so a
file's module-scoped fixtures are built once, on one worker; the deployment tests (tests/hardware, whose
session fixtures train the models they share) are one group together, scheduled first: the longest unit
starts while the other worker takes the files one by one (xdist hands groups out in collection order).
"""
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before xdist's worker turns the markers into node-id suffixes (loadgroup)
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath)).resolve()
        rel = path.relative_to(TESTS)
        group = "hardware" if rel.parts[0] == "hardware" else str(rel)
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0] != "hardware")
