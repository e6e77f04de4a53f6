"""The tiers themselves: a unit test is marked so and connects to nothing; only the service tiers empty state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SERVICE_FIXTURES = {"database", "redis_cleanup", "clean_state", "clean_module_state", "db", "rds", "settings"}
TESTS = Path(__file__).resolve().parent.parent


def test_a_unit_test_is_marked_unit_and_asks_for_no_service(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("integration") is None
    assert not SERVICE_FIXTURES & set(request.fixturenames), request.fixturenames


def test_every_tier_has_its_conftest_and_only_service_tiers_start_clean() -> None:
    for tier in ("unit", "integration", "system"):
        assert (TESTS / tier / "conftest.py").exists(), tier
    unit = (TESTS / "unit" / "conftest.py").read_text()
    assert "autouse" not in unit
    for tier in ("integration", "system"):
        assert "clean_state" in (TESTS / tier / "conftest.py").read_text(), tier


def test_fixtures_are_plugins_never_imported_into_a_test_module() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}: {line}"
        for path in TESTS.rglob("*.py")
        for line in path.read_text().splitlines()
        if re.match(r"\s*from tests\.conftest import", line) or re.match(r"\s*(from|import) .*# noqa: F401", line)
    ]
    assert offenders == []


def test_a_test_that_starts_processes_outside_the_system_tier_stops_collection() -> None:
    import importlib
    from types import SimpleNamespace

    # The collection hook, not a fixture: looked up by name (the rule above is about fixtures).
    modify_items = importlib.import_module("tests.conftest").pytest_collection_modifyitems

    def item(tier: str, *fixtures: str) -> SimpleNamespace:
        path = TESTS / tier / "test_x.py"
        return SimpleNamespace(path=path, fixturenames=list(fixtures), nodeid=f"{tier}/x", add_marker=lambda _m: None)

    modify_items([item("integration", "db", "client"), item("system", "web_server", "db")])
    for tier in ("unit", "integration"):
        with pytest.raises(pytest.UsageError, match="starts processes .celery_procs.: tests/system/"):
            modify_items([item(tier, "db", "celery_procs")])


def test_test_modules_never_import_from_each_other() -> None:
    """What two test modules share lives in a helper module (tests/helpers.py, tests/browser_helpers.py)."""
    offenders = [
        f"{path.relative_to(TESTS)}: {line.strip()}"
        for path in TESTS.rglob("test_*.py")
        for line in path.read_text().splitlines()
        if re.match(r"\s*(from tests\.(unit|integration|system)[.\s]|import tests\.(unit|integration|system))", line)
    ]
    assert offenders == []
