"""Deal lifecycle: create and publish, load into the gate, open and close early, and the scheduled tick."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from shared.bounds import check_text, utc_in_range
from shared.cache import invalidate_deal
from shared.clock import dt_to_ms, now_ms
from shared.db import Database
from shared.gate import DealRules, Gate, Loaded, buyer_status
from shared.models import DeadLetter, Deal, Order, Product
from shared.order_record import LiveOrder
from shared.outbox_entry import RELEASING
from shared.queue import QueueRules, queue_stats
from shared.readable import UnreadableDeal, readable_deals
from shared.settings import default_of

log = logging.getLogger(__name__)

# Persisted states that hold their units: everything but canceled, expired and failed.
HOLDING_STATUSES = ("accepted", "confirmed", "paid")


class DealNotFound(Exception):
    """No deal with that id."""


class DealStateError(Exception):
    """The deal cannot make that move (e.g. open a deal that has ended)."""


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewDeal:
    """What an admin gives to create a deal."""

    title: str
    price: Decimal
    stock: int
    per_user_limit: int
    starts_at: datetime
    ends_at: datetime
    product_name: str | None = None
    product_id: int | None = None
    description: str = ""
    payment_window_seconds: int = 0  # 0: no payment step
    regular_price: Decimal | None = None  # the product's price outside the deal (set on the product)
    queue: QueueRules | None = None  # a waiting room in front of the gate; None: none

    def __post_init__(self) -> None:
        # The last guard before PostgreSQL: the API and the CLI refuse these with a clear message
        # first (same rules, shared/bounds.py); a value getting here anyway must not be stored.
        utc_in_range(self.starts_at)
        utc_in_range(self.ends_at)
        check_text(self.title)
        check_text(self.product_name or "")
        check_text(self.description, multiline=True)


def create_deal(session: Session, spec: NewDeal) -> Deal:
    """Insert a deal (and its product when none is named). The caller commits."""
    if spec.product_id is not None:
        product = session.get(Product, spec.product_id)
        if product is None:
            raise DealNotFound(f"product {spec.product_id} does not exist")
        if spec.regular_price is not None:
            product.regular_price = spec.regular_price
    else:
        product = Product(
            name=spec.product_name or spec.title, description=spec.description, regular_price=spec.regular_price
        )
        session.add(product)
        session.flush()
    deal = Deal(
        product_id=product.id,
        title=spec.title,
        price=spec.price,
        total_stock=spec.stock,
        per_user_limit=spec.per_user_limit,
        starts_at=spec.starts_at,
        ends_at=spec.ends_at,
        status="scheduled",
        payment_window_seconds=spec.payment_window_seconds,
    )
    if spec.queue is not None:
        deal.queue_rate = spec.queue.rate
        deal.queue_opens_before_seconds = spec.queue.opens_before_seconds
        deal.queue_pow_bits = spec.queue.pow_bits
        deal.queue_max_live_passes = spec.queue.max_live_passes
        deal.queue_paused = spec.queue.paused
    session.add(deal)
    session.flush()
    deal.product = product
    return deal


def publish_deal(db: Database, gate: Gate, spec: NewDeal, load_ahead_seconds: int, *, open_now: bool = False) -> Deal:
    """Create a deal, load it into the gate if it starts within ``load_ahead_seconds``, and drop the deal caches.

    The one way a deal comes into being (admin API, ``deal create``, the demo seed). ``open_now``: the deal
    is open from its creation (its start is not in the future), without waiting for the scheduler's tick.
    """
    now = datetime.now(UTC)
    if open_now and spec.starts_at > now:
        raise DealStateError("a deal that opens now cannot start in the future")
    with db.transaction() as s:
        deal = create_deal(s, spec)
        if open_now:
            deal.status = "open"
    # Loaded after the commit, never inside the transaction: the gate must never admit orders for a deal
    # that was rolled back (their rows could never be written). A deal starting later is the tick's to load,
    # so its first second does not wait for the tick either way.
    if deal.starts_at <= now + timedelta(seconds=load_ahead_seconds + queue_lead_seconds(deal)):
        with db.read() as s:
            load_deal(s, gate, deal)
    invalidate_deal(gate.redis, gate.keys, deal.id)
    return deal


def queue_of(deal: Deal) -> QueueRules | None:
    """The deal's waiting room, or None."""
    if deal.queue_rate is None:
        return None
    return QueueRules(
        rate=deal.queue_rate,
        opens_before_seconds=deal.queue_opens_before_seconds,
        pow_bits=deal.queue_pow_bits,
        max_live_passes=deal.queue_max_live_passes,
        paused=deal.queue_paused,
    )


def queue_lead_seconds(deal: Deal) -> int:
    """How much earlier than other deals a queued deal is loaded: its pre-queue opens before the start."""
    return deal.queue_opens_before_seconds if deal.queue_rate is not None else 0


def gate_status(deal: Deal) -> str:
    """The status the gate holds for a deal: 'ended' refuses everything, otherwise the window decides."""
    return "ended" if deal.status == "ended" else ("open" if deal.status in ("open", "sold_out") else "scheduled")


def rules_of(deal: Deal) -> DealRules:
    """The gate's view of a deal row."""
    return DealRules(
        deal_id=deal.id,
        status=gate_status(deal),
        open_ms=dt_to_ms(deal.starts_at),
        close_ms=dt_to_ms(deal.ends_at),
        cap=deal.per_user_limit,
        price=deal.price,
        total=deal.total_stock,
        title=deal.title,
        payment_window_ms=deal.payment_window_seconds * 1000,
        queue=queue_of(deal),
    )


def sold_quantity(session: Session, deal_id: int) -> int:
    """Quantity of the deal's orders persisted and not canceled, expired or failed."""
    return sold_quantities(session, [deal_id]).get(deal_id, 0)


def sold_quantities(session: Session, deal_ids: list[int]) -> dict[int, int]:
    """sold_quantity of several deals in one grouped query (deals without orders are left out)."""
    if not deal_ids:
        return {}
    rows = session.execute(
        select(Order.deal_id, func.sum(Order.quantity))
        .where(Order.deal_id.in_(deal_ids), Order.status.in_(HOLDING_STATUSES))
        .group_by(Order.deal_id)
    )
    return {int(deal_id): int(qty) for deal_id, qty in rows}


# What each buyer holds according to PostgreSQL: orders that hold their units, and dead letters of orders
# without a row whose kind holds units too (an order, or its payment), as worker/reconcile.py counts them.
# Why one statement: it reads one snapshot, so a ``dlq retry`` that turns a letter into a row while it runs
# counts that order once (two reads could see neither the letter, already deleted, nor the row).
# A letter whose buyer or quantity is not a number was never admitted by the gate: it holds nothing.
_HELD_BY_BUYER = text(
    """
    SELECT user_id, SUM(quantity) FROM (
        SELECT user_id, quantity FROM orders WHERE deal_id = :deal_id AND status = ANY(:holding)
        UNION ALL
        SELECT CAST(d.payload->>'u' AS bigint), CAST(d.payload->>'q' AS integer) FROM dead_letters d
        WHERE d.deal_id = :deal_id AND NOT (COALESCE(d.payload->>'t', '') = ANY(:releasing))
          AND d.payload->>'u' ~ '^[0-9]{1,18}$' AND d.payload->>'q' ~ '^[0-9]{1,9}$'
          AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = d.order_id)
    ) held
    GROUP BY user_id
    """
)


def held_by_buyer(session: Session, deal_id: int) -> dict[int, int]:
    """Quantity each buyer holds according to PostgreSQL: orders that hold their units, and dead letters."""
    rows = session.execute(
        _HELD_BY_BUYER, {"deal_id": deal_id, "holding": list(HOLDING_STATUSES), "releasing": list(RELEASING)}
    )
    return {int(user_id): int(qty) for user_id, qty in rows if qty}


def load_deal(session: Session, gate: Gate, deal: Deal) -> Loaded:
    """Load a deal's rules into Redis; live stock is never overwritten.

    When Redis holds nothing of the deal (never loaded, or the whole deal lost with Redis), the
    stock is total minus what PostgreSQL holds, and the buyers' totals are PostgreSQL's, so the
    same units are not sold twice and the purchase cap holds. When the stock alone is gone
    while order records or outbox entries remain, nothing is rebuilt (``Loaded.HELD``): that
    stock must count the orders still in Redis, which only ``reconcile --repair`` does.
    """
    held = held_by_buyer(session, deal.id)
    return gate.load(rules_of(deal), deal.total_stock - sum(held.values()), held, unpaid_orders(session, deal.id))


def unpaid_orders(session: Session, deal_id: int) -> list[LiveOrder]:
    """Orders PostgreSQL holds as persisted but not yet paid (deals with a payment window), as the gate records them."""
    rows = session.scalars(
        select(Order).where(Order.deal_id == deal_id, Order.status == "confirmed", Order.pay_by.is_not(None))
    )
    return [
        LiveOrder(str(o.id), deal_id, o.user_id, o.quantity, o.unit_price, o.admitted_at, False, pay_by=o.pay_by)
        for o in rows
    ]


def deal_row(session: Session, deal_id: int, *, lock: bool = False) -> Deal:
    """The deal's row (locked FOR UPDATE with ``lock``), or DealNotFound."""
    stmt = select(Deal).where(Deal.id == deal_id)
    if lock:
        stmt = stmt.with_for_update(of=Deal)
    try:
        deal = session.scalar(stmt)
    except DataError as exc:
        log.error("deal %s cannot be read: %s", deal_id, exc.orig)
        raise UnreadableDeal(deal_id) from exc
    if deal is None:
        raise DealNotFound(f"deal {deal_id} does not exist")
    return deal


def open_now(db: Database, gate: Gate, deal_id: int) -> Deal:
    """Open a deal early: the gate admits at once on every web node."""
    with db.transaction() as s:
        deal = deal_row(s, deal_id, lock=True)
        if deal.status == "ended":
            raise DealStateError(f"deal {deal_id} has ended and cannot be reopened")
        now = datetime.now(UTC)
        if deal.ends_at <= now:
            raise DealStateError(f"deal {deal_id} ends in the past; it cannot open")
        if deal.starts_at > now:
            deal.starts_at = now
        deal.status = "open"
    # After the commit: a failed commit must not leave the gate admitting orders. Loading
    # rewrites the rules in full (never the live stock), so the new window takes effect at once.
    # From the row read again under its lock, never from the object above: a close_now that
    # committed in between would otherwise be undone (the gate reopened with the old window).
    # close_now takes the same lock, so it lands either before this read (we see it ended and
    # leave the gate closed) or after the load (and closes it again).
    with db.transaction() as s:
        deal = deal_row(s, deal_id, lock=True)
        if deal.status != "ended":
            load_deal(s, gate, deal)
    invalidate_deal(gate.redis, gate.keys, deal.id)
    return deal


def close_now(db: Database, gate: Gate, deal_id: int) -> Deal:
    """Close a deal early: the gate refuses at once on every web node."""
    with db.transaction() as s:
        deal = deal_row(s, deal_id, lock=True)
        now = datetime.now(UTC)
        if deal.ends_at > now:
            deal.ends_at = max(now, deal.starts_at + timedelta(milliseconds=1))
        deal.status = "ended"
        # The gate is switched before the commit, on purpose: if the commit fails the deal stays
        # closed in Redis (refusing is the safe side) and the admin sees the error and retries.
        # A retired deal's gate is gone (or going): writing its window would bring a stray key back.
        if deal.retired_at is None and gate.live(deal.id) is not None:
            gate.set_window(deal.id, status="ended", close_ms=min(now_ms(), dt_to_ms(deal.ends_at)))
    invalidate_deal(gate.redis, gate.keys, deal.id)
    return deal


@dataclass
class TickReport:
    """What one scheduler tick changed."""

    loaded: list[int]
    opened: list[int]
    sold_out: list[int]
    ended: list[int]
    skipped: list[int] = field(default_factory=list)  # unreadable rows, logged by shared/readable.py
    # Stock missing while its orders or outbox entries are still in Redis: not rebuilt, left to reconcile --repair.
    drifted: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True if any deal moved state."""
        return bool(self.loaded or self.opened or self.sold_out or self.ended)


def tick(db: Database, gate: Gate, load_ahead_seconds: int = default_of("deal_load_ahead_seconds")) -> TickReport:
    """Move deals along their lifecycle; run every second by Celery beat.

    Loads deals into Redis ``load_ahead_seconds`` before they start (so the first second of a
    sale touches no database), then records open / sold_out / ended in PostgreSQL. The gate
    itself opens and closes on the time window, so a late tick never delays a sale.
    """
    report = TickReport([], [], [], [])
    now = datetime.now(UTC)
    horizon = now + timedelta(seconds=load_ahead_seconds)
    with db.transaction() as s:
        # One unreadable row is skipped and reported, so it cannot stop every other deal's tick.
        deals, report.skipped = readable_deals(
            s,
            select(Deal)
            # A retired deal is ended too; said twice so no change of the rule below can reload one.
            .where(
                Deal.status != "ended",
                Deal.retired_at.is_(None),
                # A queued deal is loaded when its pre-queue opens: buyers join before the start.
                or_(
                    Deal.starts_at <= horizon,
                    and_(
                        Deal.queue_rate.is_not(None),
                        Deal.starts_at
                        <= horizon + func.make_interval(0, 0, 0, 0, 0, 0, Deal.queue_opens_before_seconds),
                    ),
                ),
            )
            .with_for_update(skip_locked=True, of=Deal),
        )
        live_ids = set(gate.live_deal_ids())
        stocks = gate.remaining([d.id for d in deals])
        for deal in deals:
            if deal.id not in live_ids or stocks.get(deal.id) is None:
                loaded = load_deal(s, gate, deal)
                if loaded is Loaded.HELD:
                    report.drifted.append(deal.id)
                    log.warning(
                        "deal %s: its stock is missing from Redis while its orders or outbox entries are still "
                        "there; not rebuilt (the gate refuses its orders). Run: celery -A worker flashdeal "
                        "reconcile %s --repair",
                        deal.id,
                        deal.id,
                    )
                elif loaded is Loaded.SET:
                    report.loaded.append(deal.id)
                    if deal.status != "scheduled":
                        log.warning("deal %s: rebuilt in Redis from PostgreSQL (Redis had lost it)", deal.id)
                stocks[deal.id] = gate.remaining([deal.id])[deal.id]
            if deal.ends_at <= now:
                deal.status = "ended"
                gate.set_window(deal.id, status="ended")
                report.ended.append(deal.id)
            elif deal.starts_at <= now and stocks.get(deal.id) is not None:
                remaining = stocks.get(deal.id) or 0
                new = "sold_out" if remaining <= 0 else "open"
                if deal.status != new:
                    deal.status = new
                    (report.sold_out if new == "sold_out" else report.opened).append(deal.id)
                    gate.set_window(deal.id, status="open")
    # No cache invalidation here: the API computes open / sold out / ended live from the gate's
    # window and stock, so the scheduler's moves need no rebuild (and the first second of a sale
    # sends no burst of cache rebuilds to PostgreSQL).
    return report


@dataclass(frozen=True)
class DealStats:
    """A deal's sale progress: the admin stats endpoint and ``deal stats`` show these fields."""

    id: int
    title: str
    status: str
    total_stock: int
    remaining_stock: int
    accepted: int  # orders the gate admitted (canceled ones included)
    confirmed: int  # persisted, not canceled and (with a payment window) neither paid nor expired yet
    canceled: int  # persisted as canceled
    pending: int  # outbox entries (orders and cancels) not yet persisted
    failed: int  # dead-lettered
    paid: int  # persisted as paid (deals with a payment window)
    expired: int  # persisted as expired: unpaid at pay_by, units given back
    queue: dict[str, Any] | None = None  # a queued deal's waiting room (shared/queue.py: QueueStats)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``queue`` only for a queued deal)."""
        out = dict(self.__dict__)
        if out["queue"] is None:
            del out["queue"]
        return out


def deal_stats(db: Database, gate: Gate, deal_id: int) -> DealStats:
    """Count a deal's orders by state (PostgreSQL) and read its live stock and outbox (Redis)."""
    with db.read() as s:
        deal = deal_row(s, deal_id)
        counts = dict(
            s.execute(select(Order.status, func.count()).where(Order.deal_id == deal_id).group_by(Order.status)).all()
        )
        failed = int(s.scalar(select(func.count()).select_from(DeadLetter).where(DeadLetter.deal_id == deal_id)) or 0)
        sold = sold_quantity(s, deal_id)
    k = gate.keys.deal(deal_id)
    # One MULTI (all keys in the deal's slot): rules, stock, outbox and order records are one snapshot,
    # so the status, the remaining stock and the counts never mix two moments of a running sale. The
    # clock is ours, as for the deal list: TIME has no key, and a cluster's MULTI must keep to one slot.
    pipe = gate.redis.pipeline(transaction=True)
    pipe.hmget(k.state, "status", "open_ms", "close_ms")
    pipe.get(k.stock)
    pipe.xlen(k.outbox)
    pipe.hlen(k.orders)
    (gate_status, open_ms, close_ms), stock, pending, admitted = pipe.execute()
    if gate_status is not None:
        status = buyer_status(gate_status, int(open_ms), int(close_ms), int(stock or 0), now_ms())
    else:
        status = deal.status
    remaining = int(stock) if stock is not None else deal.total_stock - sold
    confirmed, canceled = int(counts.get("confirmed", 0)), int(counts.get("canceled", 0))
    paid, expired = int(counts.get("paid", 0)), int(counts.get("expired", 0))
    return DealStats(
        id=deal.id,
        title=deal.title,
        status=status,
        total_stock=deal.total_stock,
        remaining_stock=remaining,
        # The gate's order records count every admission, even one whose entry is still in flight.
        accepted=int(admitted) if stock is not None else confirmed + canceled + failed + paid + expired,
        confirmed=confirmed,
        canceled=canceled,
        pending=int(pending),
        failed=failed,
        paid=paid,
        expired=expired,
        queue=_queue_stats(gate, deal) if deal.queue_rate is not None else None,
    )


def _queue_stats(gate: Gate, deal: Deal) -> dict[str, Any]:
    """The waiting room's counters from Redis; before it is loaded, its rules and zero counts."""
    live = queue_stats(gate.redis, gate.keys, deal.id, now_ms())
    if live is not None:
        return live.as_dict()
    rules = queue_of(deal)
    assert rules is not None
    zero = dict.fromkeys(("waiting", "admitted", "passes_live", "passes_used", "passes_expired"), 0)
    return {**zero, "rate": rules.rate, "paused": rules.paused, "max_live_passes": rules.cap}


def set_queue(db: Database, gate: Gate, deal_id: int, *, rate: int | None = None, paused: bool | None = None) -> Deal:
    """Change a queued deal's rate or pause it: PostgreSQL first, then the live rules in Redis (both or an error)."""
    with db.transaction() as s:
        deal = deal_row(s, deal_id, lock=True)
        if deal.queue_rate is None:
            raise DealStateError(f"deal {deal_id} has no queue")
        if rate is not None:
            deal.queue_rate = rate
        if paused is not None:
            deal.queue_paused = paused
    # After the commit, as open_now loads: a failed commit changes nothing live. A deal not loaded yet gets
    # the new rules from PostgreSQL when it is (load_deal.lua writes them with the gate's queued flag).
    k = gate.keys.deal(deal_id)
    fields: dict[str, int] = {}
    if rate is not None:
        fields["rate"] = rate
    if paused is not None:
        fields["paused"] = 1 if paused else 0
    if paused is False:
        # The inlet's clock restarts now: the paused time is no credit (shared/lua/queue.lua writes nothing
        # while paused).
        fields.update(last_ms=now_ms(), credit=0)
    if fields and gate.redis.exists(k.queue):
        gate.redis.hset(k.queue, mapping=fields)
    return deal
