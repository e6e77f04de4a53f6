"""The suite's root: fixture plugins for every tier, and each test marked with its tier (unit, integration, system).

The tier is the folder a test lives in. A test that starts processes (asks for one of ``PROCESS_FIXTURES``)
lives in ``tests/system``: anywhere else it is a usage error, so ``tests/unit`` and ``tests/integration`` run
nothing but in-process tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.processes",
    "tests.fixtures.topologies",
    "tests.fixtures.browser",
]

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "system")
PROCESS_FIXTURES = frozenset({"web_server", "celery_procs", "private_redis", "sentinel_setup", "cluster_setup"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier."""
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of tests/{{{','.join(TIERS)}}}/")
        starts = PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
        if tier != "system" and starts:
            raise pytest.UsageError(f"{item.nodeid}: starts processes ({', '.join(sorted(starts))}): tests/system/")
        item.add_marker(tier)
