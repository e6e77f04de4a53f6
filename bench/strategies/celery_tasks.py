"""The per-order task of strategy (3); workers load it with ``-I bench.strategies.celery_tasks`` (bench only)."""

from __future__ import annotations

from typing import Any

from bench.strategies.lua_celery import PERSIST_TASK, persist_order
from worker.celery_app import app
from worker.context import get_context


@app.task(name=PERSIST_TASK, ignore_result=True)
def persist_one(deal_id: int, order: dict[str, Any]) -> None:
    """Insert one order and commit."""
    persist_order(get_context().db, int(deal_id), order)
