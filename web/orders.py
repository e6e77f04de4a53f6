"""Order API: admission through the Lua gate (no PostgreSQL), order lookup, my orders, cancel."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from shared.clock import ms_to_dt
from shared.gate import Admission, Cancellation
from shared.models import DeadLetter, Order
from shared.order_ids import deal_of, new_order_id
from shared.order_record import LiveOrder
from web.errors import ApiError
from web.kick import kick_drain
from web.limits import limiter, order_ip_limit, order_user_limit, user_key
from web.metrics import record_admission, record_unreplicated
from web.openapi import doc
from web.roles import is_admin
from web.schemas import OrderAccepted, OrderDetail, OrderIn, OrderList, OrderOut
from web.services import Services, services
from web.sessions import login_required, require_user
from web.validation import parse_body

bp = Blueprint("orders", __name__, url_prefix="/api")
log = logging.getLogger(__name__)

# A 202 or 200 whose write the replicas did not confirm within ORDER_ACK_TIMEOUT_MS carries this header.
REPLICATION_HEADER = "Flashdeal-Replication"
UNREPLICATED = "unconfirmed"
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
SOLD_OUT_TTL_S = 0.2
MY_ORDERS_LIMIT = 200

# Process-local sold-out marks: a sold-out deal answers without a Redis round trip for a
# moment. Only requests without an Idempotency-Key use it (a replay must find its order).
_sold_out_until: dict[int, float] = {}

_CONFLICTS = {
    Admission.SOLD_OUT: "This deal is sold out.",
    Admission.LIMIT_EXCEEDED: "You have reached the per-user limit for this deal.",
    Admission.DEAL_NOT_OPEN: "This deal is not open for orders.",
}


@dataclass(frozen=True)
class Admitted:
    """An order the gate accepted now, or the order an Idempotency-Key already placed (a replay)."""

    order_id: str
    deal_id: int
    quantity: int
    status: str = "accepted"  # a replay's is the order's current one: accepted, confirmed, canceled or failed
    replay: bool = False
    replicated: bool = True  # False: on the primary only (WAIT timed out); the answer says so in a header

    @property
    def http_status(self) -> int:
        """202: this request placed the order; 200: a replay, answered with the order as it is now."""
        return 200 if self.replay else 202

    def body(self) -> dict[str, Any]:
        """The answer's body (the same shape either way)."""
        return {"order_id": self.order_id, "status": self.status, "deal_id": self.deal_id, "quantity": self.quantity}

    def headers(self) -> dict[str, str]:
        """Extra headers of the 202 (both the Flask view and the fast path send them)."""
        return {} if self.replicated else {REPLICATION_HEADER: UNREPLICATED}


def admit_order(svc: Services, deal_id: int, user_id: int, quantity: int, idem: str) -> Admitted:
    """One order attempt through the gate; raises ApiError (409/422/404) when refused.

    Shared by the Flask view and the WSGI fast path (web/fastpath.py): needs no request context.
    """
    if idem and not IDEMPOTENCY_KEY.match(idem):
        raise ApiError(422, "invalid", "Idempotency-Key: 1 to 128 visible ASCII characters")
    if not idem and _sold_out_until.get(deal_id, 0.0) > time.monotonic():
        record_admission(Admission.SOLD_OUT.value)
        raise ApiError(409, "sold_out", _CONFLICTS[Admission.SOLD_OUT])
    result = svc.gate.admit(deal_id, user_id, quantity, new_order_id(deal_id), idem)
    outcome = result.outcome
    record_admission(outcome.value)
    if outcome in (Admission.ACCEPTED, Admission.REPLAY):
        if result.kick:
            kick_drain(deal_id)
        if not result.replicated:
            # The order is on the primary and admitted: refusing it now would be a lie, and a retry with
            # the same Idempotency-Key finds it. The buyer gets the 202, marked, and we count it.
            record_unreplicated("order")
        if outcome is Admission.REPLAY:
            # The truth about the order now (it may have been confirmed or canceled since), not
            # the first answer again. Off the hot path: only a retried request gets here.
            status = _current_status(svc, result.order_id, deal_id)
            return Admitted(result.order_id, deal_id, quantity, status, replay=True, replicated=result.replicated)
        return Admitted(result.order_id, deal_id, quantity, replicated=result.replicated)
    if outcome is Admission.SOLD_OUT and result.remaining <= 0:
        _sold_out_until[deal_id] = time.monotonic() + SOLD_OUT_TTL_S
    if outcome is Admission.IDEMPOTENCY_MISMATCH:
        raise ApiError(422, "idempotency_key_reused", "This Idempotency-Key was used with a different body.")
    if outcome is Admission.QUANTITY_ABOVE_LIMIT:
        raise ApiError(422, "invalid", "quantity: above this deal's per-user limit")
    if result.deal_unknown and not _deal_exists(svc, deal_id):
        raise ApiError(404, "not_found", f"Deal {deal_id} does not exist.")
    raise ApiError(409, outcome.value, _CONFLICTS[outcome])


@bp.post("/deals/<int:deal_id>/orders")
@login_required
@limiter.limit(order_user_limit, key_func=user_key)
@limiter.limit(order_ip_limit)
@doc(
    "Place an order (Idempotency-Key header optional)",
    body=OrderIn,
    responses={200: OrderAccepted, 202: OrderAccepted, 401: None, 404: None, 409: None, 422: None, 429: None},
    auth="session",
)
def place_order(deal_id: int) -> Any:
    """Admit an order through the gate; 202 with the order id, 409 when refused."""
    user_id = require_user()
    body = parse_body(OrderIn)
    admitted = admit_order(services(), deal_id, user_id, body.quantity, request.headers.get("Idempotency-Key", ""))
    return jsonify(admitted.body()), admitted.http_status, admitted.headers()


def _current_status(svc: Services, order_id: str, deal_id: int) -> str:
    """The order's status now; with PostgreSQL unreachable, what the gate knows (accepted, canceled, paid...)."""
    try:
        found = find_order(svc, order_id)
    except SQLAlchemyError as exc:
        # The order is safe in the gate; a replay must not fail because the history is unreachable.
        log.warning("order %s: PostgreSQL unreachable, answering the gate's status: %s", order_id, exc)
        live = svc.gate.find_order(order_id, deal_id)
        return live.state if live is not None and live.state in _GATE_DECIDED else "accepted"
    return found[0]["status"] if found is not None else "accepted"


def _deal_exists(svc: Services, deal_id: int) -> bool:
    """Off the hot path: asked only when the gate holds no state for the deal (not a closed or early one)."""
    from web.deals import deal_detail

    try:
        deal_detail(svc, deal_id)
    except ApiError:
        return False
    return True


def parse_order_id(raw: str) -> str:
    """The canonical order id of a URL's segment; anything else is a 404 (no such order)."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(404, "not_found", "No such order.") from None


# The gate's decided states: recorded in Redis first, they reach PostgreSQL through the outbox.
_GATE_DECIDED = ("canceled", "paid", "expired")


def _order_out(order: Order | LiveOrder, status: str) -> dict[str, Any]:
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


def find_order(svc: Services, order_id: str) -> tuple[dict[str, Any], LiveOrder | None] | None:
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
        status = live.state if (live is not None and live.state in _GATE_DECIDED) else row.status
        return _order_out(row, status), live
    if live is not None:
        status = live.state if live.state in _GATE_DECIDED else ("failed" if dead is not None else "accepted")
        return _order_out(live, status), live
    if dead is not None:
        # The gate no longer holds the deal: the dead letter's payload is all that is left of the order.
        p = dead.payload
        try:
            held = LiveOrder(
                order_id, dead.deal_id, int(p["u"]), int(p["q"]), Decimal(p["p"]), ms_to_dt(int(p["ts"])), False
            )
        except (KeyError, ValueError, ArithmeticError):
            return None
        return _order_out(held, "canceled" if p.get("t") == "c" else "failed"), None
    return None


def _visible(view: dict[str, Any]) -> bool:
    return view["user_id"] == require_user() or is_admin()


@bp.get("/orders/<order_id>")
@login_required
@doc("One order (owner or admin)", responses={200: OrderDetail, 401: None, 404: None}, auth="session")
def get_order(order_id: str) -> Any:
    """An order, whether still in the outbox (accepted) or persisted (confirmed)."""
    svc = services()
    found = find_order(svc, parse_order_id(order_id))
    if found is None or not _visible(found[0]):
        raise ApiError(404, "not_found", "No such order.")
    view, live = found
    if live is not None and live.pay_by is not None and live.state == "accepted":
        # Still undecided: a declined card is worth telling the buyer, who may try another while time remains.
        _payment, declined_ms = svc.gate.payment_of(live.deal_id, live.order_id)
        if declined_ms:
            view["payment_declined_at"] = ms_to_dt(int(declined_ms)).isoformat()
    return jsonify(view)


@bp.get("/orders")
@login_required
@doc("My orders, newest first", responses={200: OrderList, 401: None}, auth="session")
def my_orders() -> Any:
    """The user's persisted orders plus their entries still in flight (the live deals' in-flight indexes)."""
    svc = services()
    user_id = require_user()
    # The buyer's own entries still in flight, from each live deal's in-flight index (never its outbox);
    # live deals are the sales of the moment, as ended ones retire (shared/retire.py). Read before
    # PostgreSQL: an entry drained in between is then in PostgreSQL's rows (committed before its ack).
    inflight = svc.gate.inflight_of(user_id, svc.gate.live_deal_ids())
    with svc.db.read() as s:
        rows = s.scalars(
            select(Order).where(Order.user_id == user_id).order_by(Order.admitted_at.desc()).limit(MY_ORDERS_LIMIT)
        ).all()
    items = {str(r.id): _order_out(r, r.status) for r in rows}
    for entry in inflight:
        order = entry.order
        status = "canceled" if entry.cancel else (order.state if order.state in _GATE_DECIDED else "accepted")
        if order.order_id in items and status == "accepted":
            continue  # persisted already (committed, not yet acknowledged): PostgreSQL's row is as new
        items[order.order_id] = _order_out(order, status)
    ordered = sorted(items.values(), key=lambda o: o["admitted_at"], reverse=True)
    return jsonify(items=ordered[:MY_ORDERS_LIMIT])


def _refuse_decided(status: str) -> None:
    """A paid order is final (cancel refused, nothing refunded); an expired one already gave its units back."""
    if status == "paid":
        raise ApiError(409, "order_paid", "This order is paid; a paid order cannot be canceled.")
    if status == "expired":
        raise ApiError(409, "order_expired", "This order expired unpaid; its units already went back on sale.")


@bp.post("/orders/<order_id>/cancel")
@login_required
@doc(
    "Cancel an order while its deal is open", responses={200: OrderOut, 401: None, 404: None, 409: None}, auth="session"
)
def cancel_order(order_id: str) -> Any:
    """Give the stock back exactly once; cancelling again changes nothing."""
    svc = services()
    oid = parse_order_id(order_id)
    found = find_order(svc, oid)
    if found is None or not _visible(found[0]):
        raise ApiError(404, "not_found", "No such order.")
    view, live = found
    if view["status"] == "canceled":
        return jsonify(view)
    if view["status"] == "failed":
        raise ApiError(409, "order_failed", "This order failed to persist; an admin handles it.")
    _refuse_decided(view["status"])
    if live is None:
        raise ApiError(409, "deal_not_open", "This deal is no longer open; the order cannot be canceled.")
    result = svc.gate.cancel(live.deal_id, oid, require_user(), admin=is_admin())
    if result.outcome is Cancellation.NOT_FOUND:
        raise ApiError(404, "not_found", "No such order.")
    if result.outcome is Cancellation.DEAL_NOT_OPEN:
        raise ApiError(409, "deal_not_open", "This deal is no longer open; the order cannot be canceled.")
    _refuse_decided(result.outcome.value)  # paid or expired in the gate since we looked
    if result.kick:
        kick_drain(live.deal_id)
    _sold_out_until.pop(live.deal_id, None)
    view["status"] = "canceled"
    if not result.replicated:
        record_unreplicated("cancel")  # done on the primary, as for an order (see admit_order)
        return jsonify(view), 200, {REPLICATION_HEADER: UNREPLICATED}
    return jsonify(view)
