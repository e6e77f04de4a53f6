"""A full Redis: the write it refuses (OOM), and the test of ``INFO memory`` that readiness uses.

Redis runs with ``maxmemory-policy noeviction`` (the gate's keys must never be evicted), so when
it reaches ``maxmemory`` it refuses every command that may grow memory with an ``OOM`` error
reply, and a script at its first write (Redis decides once per script, before it runs, so no
script stops half-way). Nothing was written: the caller answers 503 and the client tries again.
"""

from __future__ import annotations

from typing import Any

import redis

FULL_REPLY = "OOM"


def is_full_reply(exc: BaseException) -> bool:
    """True for Redis refusing a write because it reached maxmemory (redis-py's OutOfMemoryError, or an OOM reply)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(FULL_REPLY)


def is_full(info: dict[str, Any]) -> bool:
    """Redis's own test (evict.c, getMaxmemoryState) on ``INFO memory``: memory counted for eviction above maxmemory."""
    maxmemory = int(info.get("maxmemory", 0))
    counted = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
    return maxmemory > 0 and counted > maxmemory
