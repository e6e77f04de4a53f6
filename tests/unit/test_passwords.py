"""The password hasher's production cost (the integration tier swaps in a cheap one for its own process)."""

from __future__ import annotations

from argon2 import PasswordHasher, Type

from shared import accounts


def test_passwords_are_hashed_with_argon2id_at_the_rfc_9106_cost() -> None:
    hasher = accounts._hasher
    assert isinstance(hasher, PasswordHasher)
    assert hasher.type is Type.ID
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (3, 64 * 1024, 4)
    stored = accounts.hash_password("correct horse")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert accounts._hasher.verify(stored, "correct horse")
