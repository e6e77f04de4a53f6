"""Per-process resources of a worker: its settings, read once, and its stores, built lazily."""

from __future__ import annotations

from functools import cache

from shared.settings import Settings
from shared.wiring import Stores, build


@cache
def worker_settings() -> Settings:
    """This worker's (or beat's, or Flower's) settings: read from the environment once, when first needed.

    The first use is in the main process as Celery configures itself (before the pool forks), so every
    pool process inherits the same object.
    """
    return Settings.from_env()


_ctx: Stores | None = None


def get_context() -> Stores:
    """Everything a task needs, one per worker process, built on first use (after the pool forked)."""
    global _ctx
    if _ctx is None:
        # Bytes that are not UTF-8 (a hand-written outbox entry) are replaced instead of raising: one bad
        # entry must not make every read of the stream fail.
        _ctx = build(worker_settings(), encoding_errors="replace")
    return _ctx


def after_fork() -> None:
    """Drop pooled connections inherited from the parent: a socket must never be shared by two processes."""
    global _ctx
    if _ctx is not None:
        _ctx.db.dispose()
        _ctx.redis.connection_pool.reset()
        _ctx = None
