"""(2) A Redis lock (redis-py ``Lock``) around the database read, decrement and insert."""

from __future__ import annotations

from sqlalchemy import text

from bench.strategies.base import INSERT_ORDER, PRICE, Deps, Strategy, order_id

_READ = text("SELECT remaining FROM bench_stock WHERE deal_id = :d")
_DECREMENT = text("UPDATE bench_stock SET remaining = remaining - :q WHERE deal_id = :d")
# redis-py polls a held lock every `sleep` seconds (0.1 by default); 2 ms keeps the baseline from
# idling between holders without turning the poll into a busy loop on Redis.
LOCK_SLEEP_S = 0.002
LOCK_TIMEOUT_S = 10.0


class RedisLock(Strategy):
    """One distributed lock per deal serialises the whole database transaction."""

    key = "redis_lock"
    label = "(2) Redis lock + DB decrement"

    def __init__(self, deps: Deps, deal_id: int) -> None:
        super().__init__(deps, deal_id)
        self.lock_name = f"{deps.gate.keys.deal(deal_id).stock}:benchlock"

    def order(self, user_id: int, quantity: int = 1) -> bool:
        """Take the lock, then read, check, decrement, insert, commit, release."""
        lock = self.deps.gate.redis.lock(
            self.lock_name, timeout=LOCK_TIMEOUT_S, sleep=LOCK_SLEEP_S, blocking_timeout=LOCK_TIMEOUT_S
        )
        with lock, self.deps.db.engine.begin() as conn:
            # Why the commit happens inside the lock: released earlier, the next holder could read stale stock.
            remaining = conn.execute(_READ, {"d": self.deal_id}).scalar_one()
            if remaining < quantity:
                return False
            conn.execute(_DECREMENT, {"d": self.deal_id, "q": quantity})
            conn.execute(
                INSERT_ORDER,
                {"id": order_id(), "deal_id": self.deal_id, "user_id": user_id, "quantity": quantity, "price": PRICE},
            )
        return True
