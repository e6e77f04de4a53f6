"""Integration tier: the real Redis and PostgreSQL, in this process (Flask test client, gate, drain functions).

Every test starts on a fresh schema (once per run) and on empty tables and no keys of this run.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def fresh_module(clean_module_state: None) -> None:
    """A ``shared_state`` module starts clean (autouse: before its own module-scoped fixtures)."""


@pytest.fixture(autouse=True)
def fresh(clean_state: None) -> None:
    """Each test starts on empty tables and no Redis keys of this run."""
