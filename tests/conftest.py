"""Test-session set-up shared by every folder.

``make test`` runs two pytest-xdist workers (``--dist loadgroup``). Each test file is one group, so a
file's module-scoped fixtures are built once, on one worker; the deployment tests (tests/hardware, whose
session fixtures train the models they share) are one group together.
"""
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath)).resolve()
        rel = path.relative_to(TESTS)
        group = "hardware" if rel.parts[0] == "hardware" else str(rel)
        item.add_marker(pytest.mark.xdist_group(group))
