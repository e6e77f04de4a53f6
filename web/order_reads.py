"""The cold path of orders: one order, or a buyer's orders, merged from PostgreSQL, the gate and the outbox."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from shared.clock import ms_to_dt
from shared.models import DeadLetter, Order
from shared.order_ids import deal_of
from shared.order_record import LiveOrder
from shared.outbox_entry import CANCEL, EXPIRED, PAID, Unparsable, parse_payload
from web.schemas import OrderOut
from web.services import Services

MY_ORDERS_LIMIT = 200

# The gate's decided states: recorded in Redis first, they reach PostgreSQL through the outbox.
GATE_DECIDED = ("canceled", "paid", "expired")
# A dead letter's kind as the order's status once the gate no longer holds it (an order entry: failed).
_LETTER_STATUS = {CANCEL: "canceled", PAID: "paid", EXPIRED: "expired"}

OrderView = dict[str, Any]  # an OrderOut, JSON-ready


def _order_out(order: Order | LiveOrder, status: str) -> OrderView:
    oid = order.order_id if isinstance(order, LiveOrder) else str(order.id)
    return OrderOut(
        order_id=oid,
        deal_id=order.deal_id,
        user_id=order.user_id,
        quantity=order.quantity,
        unit_price=f"{order.unit_price:.2f}",
        status=status,  # type: ignore[arg-type]
        admitted_at=order.admitted_at,
        pay_by=order.pay_by,
    ).model_dump(mode="json")


def read_order(svc: Services, order_id: str) -> tuple[OrderView, LiveOrder | None] | None:
    """Merge the gate's record (accepted / canceled / paid / expired) with PostgreSQL's (confirmed / … / failed).

    The order id names its deal (shared/order_ids.py), so the gate is asked about one deal only. Redis is
    read before PostgreSQL: an order that was in flight is then found in one or the other even if its deal
    retires in between (a deal retires only after every order of it is in PostgreSQL).
    """
    deal_id = deal_of(order_id)
    live = svc.gate.find_order(order_id, deal_id) if deal_id is not None else None
    with svc.db.read() as s:
        row = s.get(Order, uuid.UUID(order_id))
        dead = (
            None if row is not None else s.scalar(select(DeadLetter).where(DeadLetter.order_id == uuid.UUID(order_id)))
        )
    if deal_id is None and row is not None:
        # An id made before ids named their deal: PostgreSQL's row does (the gate may still hold its cancel).
        live = svc.gate.find_order(order_id, row.deal_id)
    if row is not None:
        # A cancel, a payment or an expiry is recorded in Redis first and reaches PostgreSQL through the outbox.
        status = live.state if (live is not None and live.state in GATE_DECIDED) else row.status
        return _order_out(row, status), live
    if dead is not None:
        view = _dead_letter_view(dead, live)
        return (view, live) if view is not None else None
    if live is not None:
        return _order_out(live, live.state if live.state in GATE_DECIDED else "accepted"), live
    return None


def _dead_letter_view(dead: DeadLetter, live: LiveOrder | None) -> OrderView | None:
    """A dead-lettered order (no row): the gate's decision while it holds the order, else the letter's; else failed.

    The one rule for the order's page and "my orders". None for a letter that was never an order (unparsable).
    """
    if live is not None:
        return _order_out(live, live.state if live.state in GATE_DECIDED else "failed")
    # The gate no longer holds the deal: the dead letter's payload (the outbox entry) is all that is left.
    entry = parse_payload(dead.entry_id, dead.payload)
    if isinstance(entry, Unparsable):
        return None
    price, admitted_at = Decimal(entry.unit_price), ms_to_dt(entry.admitted_ms)
    held = LiveOrder(str(dead.order_id), dead.deal_id, entry.user_id, entry.quantity, price, admitted_at, False)
    return _order_out(held, _LETTER_STATUS.get(entry.kind, "failed"))


def buyer_orders(svc: Services, user_id: int) -> list[OrderView]:
    """The buyer's persisted orders plus their entries still in flight (the live deals' in-flight indexes)."""
    # The buyer's own entries still in flight, from each live deal's in-flight index (never its outbox);
    # live deals are the sales of the moment, as ended ones retire (shared/retire.py). Read before
    # PostgreSQL: an entry drained in between is then in PostgreSQL's rows (committed before its ack).
    inflight = svc.gate.inflight_of(user_id, svc.gate.live_deal_ids())
    with svc.db.read() as s:
        rows = s.scalars(
            select(Order).where(Order.user_id == user_id).order_by(Order.admitted_at.desc()).limit(MY_ORDERS_LIMIT)
        ).all()
        # Orders dead-lettered without a row: neither in PostgreSQL's orders nor in flight any more, yet they
        # hold their units until an admin retries or drops them, and their own page shows them.
        letters = s.scalars(
            select(DeadLetter)
            .where(
                DeadLetter.payload["u"].astext == str(user_id),
                DeadLetter.order_id.not_in(select(Order.id).where(Order.user_id == user_id)),
            )
            .order_by(DeadLetter.id.desc())
            .limit(MY_ORDERS_LIMIT)
        ).all()
    items = {str(r.id): _order_out(r, r.status) for r in rows}
    for dead in letters:
        view = _dead_letter_view(dead, svc.gate.find_order(str(dead.order_id), dead.deal_id))
        if view is not None:
            items[view["order_id"]] = view
    for entry in inflight:
        order = entry.order
        status = "canceled" if entry.cancel else (order.state if order.state in GATE_DECIDED else "accepted")
        if order.order_id in items and status == "accepted":
            continue  # persisted already (committed, not yet acknowledged): PostgreSQL's row is as new
        items[order.order_id] = _order_out(order, status)
    ordered = sorted(items.values(), key=lambda o: o["admitted_at"], reverse=True)
    return ordered[:MY_ORDERS_LIMIT]
