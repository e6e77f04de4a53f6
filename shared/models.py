"""Typed SQLAlchemy 2 models: users, products, deals, orders and the dead-letter store."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

USER_ROLES = ("buyer", "admin")
DEAL_STATUSES = ("scheduled", "open", "sold_out", "ended")
# paid / expired: orders of a deal with a payment window (decided once, in the gate: shared/lua/settle.lua).
ORDER_STATUSES = ("accepted", "confirmed", "paid", "expired", "canceled", "failed")
MAX_PAYMENT_WINDOW_SECONDS = 86_400
MAX_QUEUE_RATE = 100_000  # buyers let in per second
MAX_QUEUE_OPENS_BEFORE_SECONDS = 7 * 86_400
MAX_QUEUE_POW_BITS = 32  # 2^32 hashes: minutes in a browser; more would lock every buyer out


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base of all tables."""


class User(Base):
    """A buyer or an admin."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_in("role", USER_ROLES), name="ck_users_role"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16), default="buyer", server_default="buyer")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Product(Base):
    """Something that can be put on a deal."""

    __tablename__ = "products"
    __table_args__ = (CheckConstraint("regular_price > 0", name="ck_products_regular_price"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    # What the product costs outside a deal (shown beside the deal price, with the discount); None: not given.
    regular_price: Mapped[Decimal | None] = mapped_column(Numeric(12, 2), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Deal(Base):
    """A product on sale at a price, with a stock and a time window."""

    __tablename__ = "deals"
    __table_args__ = (
        CheckConstraint("total_stock >= 1", name="ck_deals_stock"),
        CheckConstraint("per_user_limit >= 1", name="ck_deals_limit"),
        CheckConstraint("price > 0", name="ck_deals_price"),
        CheckConstraint("ends_at > starts_at", name="ck_deals_window"),
        CheckConstraint(_in("status", DEAL_STATUSES), name="ck_deals_status"),
        CheckConstraint(
            f"payment_window_seconds >= 0 AND payment_window_seconds <= {MAX_PAYMENT_WINDOW_SECONDS}",
            name="ck_deals_payment_window",
        ),
        CheckConstraint(
            f"queue_rate IS NULL OR (queue_rate >= 1 AND queue_rate <= {MAX_QUEUE_RATE}"
            f" AND queue_opens_before_seconds >= 0 AND queue_opens_before_seconds <= {MAX_QUEUE_OPENS_BEFORE_SECONDS}"
            f" AND queue_pow_bits >= 0 AND queue_pow_bits <= {MAX_QUEUE_POW_BITS}"
            " AND (queue_max_live_passes IS NULL OR queue_max_live_passes >= 1))",
            name="ck_deals_queue",
        ),
        Index("ix_deals_status_starts", "status", "starts_at"),
        Index(
            "ix_deals_ended_unretired",
            "ends_at",
            postgresql_where=text("status = 'ended' AND retired_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="RESTRICT"))
    title: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    total_stock: Mapped[int] = mapped_column(Integer)
    per_user_limit: Mapped[int] = mapped_column(Integer)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="scheduled", server_default="scheduled")
    # 0: no payment step (an accepted order is final); N: an order must be paid within N seconds.
    payment_window_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The waiting room (shared/queue.py): NULL rate means no queue. The live rate and pause are Redis';
    # admins change both here as well, so a deal reloaded after Redis lost it keeps them.
    queue_rate: Mapped[int | None] = mapped_column(Integer, nullable=True)
    queue_opens_before_seconds: Mapped[int] = mapped_column(Integer, default=900, server_default="900")
    queue_pow_bits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queue_max_live_passes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    queue_paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    # Set when an ended deal's gate keys leave Redis (shared/retire.py): from then on its orders are
    # PostgreSQL's alone, and the scheduler never loads it again (retired is not "lost in Redis").
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    product: Mapped[Product] = relationship(lazy="joined", innerjoin=True)


class Order(Base):
    """An accepted order, persisted from the outbox; its id was made at admission."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="ck_orders_quantity"),
        CheckConstraint("unit_price > 0", name="ck_orders_price"),
        CheckConstraint(_in("status", ORDER_STATUSES), name="ck_orders_status"),
        Index("ix_orders_user_admitted", "user_id", "admitted_at"),
        Index("ix_orders_deal_status", "deal_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id", ondelete="RESTRICT"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    status: Mapped[str] = mapped_column(String(16))
    admitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    persisted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    canceled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    pay_by: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    payment_id: Mapped[str | None] = mapped_column(String(255), nullable=True)


class Refund(Base):
    """A payment given back: it arrived for an order that had expired or was canceled (reported to ops)."""

    __tablename__ = "refunds"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    deal_id: Mapped[int] = mapped_column(BigInteger, index=True)
    provider: Mapped[str] = mapped_column(String(16))
    payment_id: Mapped[str] = mapped_column(String(255), unique=True)
    refund_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(32))  # expired | canceled
    event_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DeadLetter(Base):
    """An outbox entry the database refused, kept with its reason until retried or dropped."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    deal_id: Mapped[int] = mapped_column(BigInteger, index=True)
    entry_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, str]] = mapped_column(JSONB)
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
