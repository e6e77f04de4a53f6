"""What every strategy shares: its dependencies, a bench deal, the stock row and the oversell check."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text

from shared.db import Database
from shared.deals import NewDeal, create_deal, load_deal
from shared.gate import Gate

# The product keeps live stock in Redis only; the database baselines need a stock row of their own.
# A bench-only table (no CHECK on remaining: a negative value is exactly what the oversell check must see).
_BENCH_STOCK = text(
    "CREATE TABLE IF NOT EXISTS bench_stock"
    " (deal_id bigint PRIMARY KEY REFERENCES deals(id), remaining integer NOT NULL)"
)
INSERT_ORDER = text(
    """
    INSERT INTO orders (id, deal_id, user_id, quantity, unit_price, status, admitted_at)
    VALUES (CAST(:id AS uuid), :deal_id, :user_id, :quantity, CAST(:price AS numeric), 'confirmed', now())
    """
)
PRICE = Decimal("9.99")


@dataclass(frozen=True)
class Deps:
    """What a strategy talks to."""

    db: Database
    gate: Gate


@dataclass(frozen=True)
class Check:
    """Oversell check of one deal after its orders are persisted."""

    stock: int
    accepted: int
    persisted: int
    remaining: int

    @property
    def ok(self) -> bool:
        """Nothing oversold, stock never negative, nothing lost: persisted + remaining == stock."""
        return self.persisted <= self.stock and self.remaining >= 0 and self.persisted + self.remaining == self.stock


def new_deal(deps: Deps, stock: int, per_user_limit: int = 1_000_000) -> int:
    """Create an open bench deal with its stock row and its gate; returns its id."""
    now = datetime.now(UTC)
    with deps.db.transaction() as s:
        s.execute(_BENCH_STOCK)
        deal = create_deal(s, NewDeal("bench strategy", PRICE, stock, per_user_limit, now, now + timedelta(hours=2)))
        deal.status = "open"
        s.execute(text("INSERT INTO bench_stock (deal_id, remaining) VALUES (:d, :n)"), {"d": deal.id, "n": stock})
        load_deal(s, deps.gate, deal)
        return deal.id


def persisted_quantity(db: Database, deal_id: int) -> int:
    """Quantity of the deal's orders in PostgreSQL."""
    with db.read() as s:
        return int(s.scalar(text("SELECT coalesce(sum(quantity), 0) FROM orders WHERE deal_id = :d"), {"d": deal_id}))


class Strategy(ABC):
    """One way of admitting an order against a stock; ``order`` is what the bench's web handler calls."""

    key: str = ""
    label: str = ""
    # Stock lives in the gate (Redis) for the Lua strategies, in bench_stock (PostgreSQL) for the others.
    stock_in_gate: bool = False

    def __init__(self, deps: Deps, deal_id: int) -> None:
        self.deps = deps
        self.deal_id = deal_id

    @abstractmethod
    def order(self, user_id: int, quantity: int = 1) -> bool:
        """Try to buy; True when accepted, False when sold out."""

    def accepted(self) -> int:
        """Quantity accepted so far (persisted or not)."""
        if self.stock_in_gate:
            return self.deps.gate.redis.hlen(self.deps.gate.keys.deal(self.deal_id).orders)
        return persisted_quantity(self.deps.db, self.deal_id)

    def remaining(self) -> int:
        """Stock left where this strategy keeps it."""
        if self.stock_in_gate:
            return int(self.deps.gate.redis.get(self.deps.gate.keys.deal(self.deal_id).stock) or 0)
        with self.deps.db.read() as s:
            return int(s.scalar(text("SELECT remaining FROM bench_stock WHERE deal_id = :d"), {"d": self.deal_id}))

    def check(self, stock: int) -> Check:
        """The oversell check (call once persistence has caught up)."""
        return Check(stock, self.accepted(), persisted_quantity(self.deps.db, self.deal_id), self.remaining())


def order_id() -> str:
    """A fresh order id."""
    return str(uuid.uuid4())
