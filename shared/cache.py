"""Read-through deal cache in Redis: short TTL, explicit invalidation, one rebuild per miss."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import redis
from redis.exceptions import LockError
from redis.lock import Lock

from shared.keys import Keys

LOCK_MS = 5000  # a rebuild lock outlives its builder by at most this (the builder renews it while alive)
WAIT_MAX_S = 10.0  # a waiter gives up after this; with PostgreSQL this slow another query would not help
WAIT_STEP_S = 0.005


class LocalCopies:
    """Parsed values of versioned cache keys, kept in this process for a few seconds at most.

    For keys that change whenever their value changes (the deal list's key carries a version that
    every deal change bumps): a copy spares the round trip and the JSON parse, which for a list of
    hundreds of deals costs more than the rest of the request. ``seconds`` bounds how long a value
    refreshed in Redis under the same key (its TTL rebuild) can stay older here. Callers must not
    mutate what they get. Plain dict operations: atomic under the GIL, no lock needed.
    """

    def __init__(self, seconds: float, size: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.size = size
        self.clock = clock
        self._copies: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any | None:
        """The copy of key, or None when there is none or it is too old."""
        found = self._copies.get(key)
        if found is None or found[0] < self.clock():
            return None
        return found[1]

    def put(self, key: str, value: Any) -> None:
        """Keep value as the copy of key (old versions simply age out)."""
        if len(self._copies) >= self.size:
            self._copies.clear()
        self._copies[key] = (self.clock() + self.seconds, value)


def invalidate_deal(client: redis.Redis, keys: Keys, deal_id: int) -> None:
    """Drop a deal's cached detail and every cached list page (by bumping the list version)."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(keys.deal_cache(deal_id))
    pipe.incr(keys.deal_list_version)
    pipe.execute()


class CacheBusy(RuntimeError):
    """The value is being rebuilt by someone else and did not arrive within ``WAIT_MAX_S``."""


@contextlib.contextmanager
def _renewed(lock: Lock) -> Iterator[None]:
    """Keep ``lock`` alive while the block runs (a slow PostgreSQL must not let the waiters in)."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(LOCK_MS / 3000):
            try:
                if not lock.reacquire():
                    return
            except (LockError, redis.RedisError):
                return  # no longer ours (or Redis is gone): whoever holds it now builds; we only stop renewing

    thread = threading.Thread(target=renew, name="cache-lock-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def read_through(
    client: redis.Redis, keys: Keys, key: str, ttl: int, build: Callable[[], Any], cached: str | None = None
) -> Any:
    """Return the JSON cached at key, or build it once and cache it for ttl seconds.

    Many simultaneous misses cause one rebuild: the first caller takes a lock and builds; the others
    wait for its value instead of all querying PostgreSQL at once. The lock is redis-py's ``Lock``: a
    random token set with SET NX PX and released by a compare-and-delete script, so a builder never
    deletes a lock that expired and was taken by another. The builder renews it while it builds, so
    waiters never build alongside a slow but live builder (exactly when PostgreSQL is slow); a builder
    that crashed stops renewing, its lock expires after ``LOCK_MS`` and one waiter takes over. A waiter
    that has waited ``WAIT_MAX_S`` raises ``CacheBusy`` rather than adding its query to a slow database.
    ``cached`` lets a caller pass a value it already fetched in a pipeline.
    """
    lock = client.lock(keys.cache_lock(key), timeout=LOCK_MS / 1000, blocking=False, thread_local=False)
    deadline = time.monotonic() + WAIT_MAX_S
    while True:
        if cached is None:
            cached = client.get(key)
        if cached is not None:
            return orjson.loads(cached)
        if lock.acquire():
            try:
                # Double-checked: a builder may have stored the value between our read and our lock.
                cached = client.get(key)
                if cached is not None:
                    return orjson.loads(cached)
                with _renewed(lock):
                    value = build()
                if value is not None:
                    # Absence is not cached: one key per unknown id would let anyone fill Redis with
                    # lookups of ids that do not exist (one primary-key query each is cheap instead).
                    client.set(key, orjson.dumps(value, default=str), ex=ttl)
                return value
            finally:
                with contextlib.suppress(LockError):
                    lock.release()  # compare-and-delete: only if the token is still ours
        if time.monotonic() >= deadline:
            raise CacheBusy(f"{key}: rebuilt by another process for over {WAIT_MAX_S:.0f} s")
        time.sleep(WAIT_STEP_S)
