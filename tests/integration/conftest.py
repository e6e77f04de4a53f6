"""Integration tier: the real Redis and PostgreSQL, in this process (Flask test client, gate, drain functions).

Every test starts on a fresh schema (once per run) and on empty tables and no keys of this run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def fresh_module(clean_module_state: None) -> None:
    """A ``shared_state`` module starts clean (autouse: before its own module-scoped fixtures)."""


@pytest.fixture(autouse=True)
def fresh(clean_state: None) -> None:
    """Each test starts on empty tables and no Redis keys of this run."""


@pytest.fixture(scope="package", autouse=True)
def cheap_password_hashes() -> Iterator[None]:
    """New passwords hashed at the test users' cost in this tier's process, as Django's docs advise for suites.

    Why: the production parameters (64 MiB, ~0.1 s a hash and as much a check here) made signups and logins
    over a third of this tier's time. The other tiers keep the production cost; tests/unit/test_passwords.py
    checks it.
    """
    from bench.users import CHEAP_HASHER
    from shared import accounts

    real = accounts._hasher
    accounts._hasher = CHEAP_HASHER
    accounts._dummy_hash.cache_clear()
    yield
    accounts._hasher = real
    accounts._dummy_hash.cache_clear()
