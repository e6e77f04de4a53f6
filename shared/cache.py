"""Read-through deal cache in Redis: short TTL, explicit invalidation, one rebuild per miss."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import redis

from shared.keys import Keys

LOCK_MS = 5000
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


def read_through(
    client: redis.Redis, keys: Keys, key: str, ttl: int, build: Callable[[], Any], cached: str | None = None
) -> Any:
    """Return the JSON cached at key, or build it once and cache it for ttl seconds.

    Many simultaneous misses cause one rebuild: the first caller takes a short lock (SET NX PX)
    and builds; the others wait for its value instead of all querying PostgreSQL at once. A
    caller that waits longer than the lock builds for itself, so a crashed builder never blocks.
    ``cached`` lets a caller pass a value it already fetched in a pipeline.
    """
    lock = keys.cache_lock(key)
    deadline = time.monotonic() + LOCK_MS / 1000
    while True:
        if cached is None:
            cached = client.get(key)
        if cached is not None:
            return orjson.loads(cached)
        if client.set(lock, "1", nx=True, px=LOCK_MS):
            try:
                # Double-checked: a builder may have stored the value between our read and our lock.
                cached = client.get(key)
                if cached is not None:
                    return orjson.loads(cached)
                value = build()
                client.set(key, orjson.dumps(value, default=str), ex=ttl)
                return value
            finally:
                client.delete(lock)
        if time.monotonic() >= deadline:
            return build()  # the builder is stuck or gone: answer anyway
        time.sleep(WAIT_STEP_S)
