"""(3) The Lua gate, then one Celery task per order; the worker inserts one row and commits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from sqlalchemy import text

from bench.strategies.base import Deps, Strategy, order_id
from celeryconfig import celery_config
from shared.db import Database
from shared.gate import Admission
from shared.settings import Settings

PERSIST_TASK = "bench.persist_one"
_INSERT_ONE = text(
    """
    INSERT INTO orders (id, deal_id, user_id, quantity, unit_price, status, admitted_at)
    VALUES (CAST(:id AS uuid), :deal_id, :user_id, :quantity, CAST(:price AS numeric), 'confirmed', now())
    ON CONFLICT (id) DO NOTHING
    """
)

Publish = Callable[[int, dict[str, Any]], None]
_producer: Celery | None = None


def persist_order(db: Database, deal_id: int, order: dict[str, Any]) -> None:
    """What the per-order task does: one row, one commit (idempotent on the order id)."""
    with db.transaction() as s:
        s.execute(_INSERT_ONE, {"deal_id": deal_id, **order})


def send_task(deal_id: int, order: dict[str, Any]) -> None:
    """Publish one Celery task for one order (the broker and queue of the workers' Celery configuration)."""
    global _producer
    if _producer is None:
        _producer = Celery("flashdeal-bench")
        _producer.config_from_object(celery_config(Settings.from_env()))
    _producer.send_task(PERSIST_TASK, args=[deal_id, order])


class LuaCelery(Strategy):
    """Admission in Redis, persistence by one Celery message and one commit per order."""

    key = "lua_celery"
    label = "(3) Lua gate + Celery task per order"
    stock_in_gate = True

    def __init__(self, deps: Deps, deal_id: int, publish: Publish = send_task) -> None:
        super().__init__(deps, deal_id)
        self.publish = publish
        self.price = deps.gate.redis.hget(deps.gate.keys.deal(deal_id).state, "price")

    def order(self, user_id: int, quantity: int = 1) -> bool:
        """Admit through the gate, then publish the order."""
        res = self.deps.gate.admit(self.deal_id, user_id, quantity, order_id())
        if res.outcome is not Admission.ACCEPTED:
            return False
        # The crash window the design rejects: killed between these two lines, the stock is gone and the order
        # was never published (here the admit script's outbox entry still holds it; the baseline ignores it).
        order = {"id": res.order_id, "user_id": user_id, "quantity": quantity, "price": self.price}
        self.publish(self.deal_id, order)
        return True
