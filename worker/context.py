"""Per-process resources of a worker: settings, database, Redis and the gate, built lazily."""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis

from shared.db import Database
from shared.gate import Gate
from shared.keys import Keys
from shared.redis_client import text_client
from shared.settings import Settings


@dataclass(frozen=True)
class WorkerContext:
    """Everything a task needs, one per worker process."""

    settings: Settings
    db: Database
    redis: redis.Redis
    keys: Keys
    gate: Gate
    drain_budget_s: float


_ctx: WorkerContext | None = None


def get_context() -> WorkerContext:
    """The process's context, built on first use (after the pool forked, never in the parent)."""
    global _ctx
    if _ctx is None:
        settings = Settings.from_env()
        # Bytes that are not UTF-8 (a hand-written outbox entry) are replaced instead of raising: one bad
        # entry must not make every read of the stream fail.
        client = text_client(settings, encoding_errors="replace")
        keys = Keys(settings.key_prefix)
        _ctx = WorkerContext(
            settings=settings,
            db=Database(settings),
            redis=client,
            keys=keys,
            gate=Gate.from_settings(client, settings),
            drain_budget_s=float(os.environ.get("DRAIN_BUDGET_SECONDS", "2.0")),
        )
    return _ctx


def after_fork() -> None:
    """Drop pooled connections inherited from the parent: a socket must never be shared by two processes."""
    global _ctx
    if _ctx is not None:
        _ctx.db.dispose()
        # The Redis client is dropped, not reset: this process builds its own, and redis-py shuts a socket
        # down only in the process that opened it (a copy closed here leaves the parent's intact). One way
        # for every topology: a RedisCluster has no single connection pool to reset.
        _ctx = None
