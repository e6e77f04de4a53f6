"""(1) Pessimistic lock: SELECT ... FOR UPDATE on the deal's stock row, then a synchronous insert, one transaction."""

from __future__ import annotations

from sqlalchemy import text

from bench.strategies.base import INSERT_ORDER, PRICE, Strategy, order_id

_LOCK = text("SELECT remaining FROM bench_stock WHERE deal_id = :d FOR UPDATE")
_DECREMENT = text("UPDATE bench_stock SET remaining = remaining - :q WHERE deal_id = :d")


class Pessimistic(Strategy):
    """Every buyer of a deal queues on one row lock held for a decrement, an insert and a commit."""

    key = "pessimistic"
    label = "(1) SELECT FOR UPDATE + insert"

    def order(self, user_id: int, quantity: int = 1) -> bool:
        """Lock, check, decrement, insert, commit."""
        with self.deps.db.engine.begin() as conn:
            # Why FOR UPDATE: without it two transactions read the same remaining and both sell the last unit.
            remaining = conn.execute(_LOCK, {"d": self.deal_id}).scalar_one()
            if remaining < quantity:
                return False
            conn.execute(_DECREMENT, {"d": self.deal_id, "q": quantity})
            conn.execute(
                INSERT_ORDER,
                {"id": order_id(), "deal_id": self.deal_id, "user_id": user_id, "quantity": quantity, "price": PRICE},
            )
        return True
