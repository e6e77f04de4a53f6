"""Unit tier: no services at all (no PostgreSQL, no Redis, no processes); the whole tier runs in seconds.

No fixture here empties tables or keys: a unit test that asks for ``db``, ``rds`` or ``client`` belongs
in tests/integration.
"""
