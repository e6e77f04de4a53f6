"""Order API: place an order (admission: web/admission.py), look one up, my orders (web/order_reads.py), cancel."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask_limiter.util import get_remote_address

from shared.clock import ms_to_dt
from shared.gate import Cancellation
from web.access import is_admin, login_required, require_user
from web.admission import (
    IDEMPOTENCY_HEADER,
    QUEUE_PASS_HEADER,
    REPLICATION_HEADER,
    UNCONFIRMED,
    admit_order,
    forget_sold_out,
)
from web.errors import ApiError
from web.ids import parse_order_id
from web.metrics import record_unreplicated
from web.openapi import doc
from web.order_reads import OrderView, buyer_orders, read_order
from web.order_token import token_buyer
from web.schemas import OrderAccepted, OrderDetail, OrderIn, OrderList, OrderOut
from web.services import services
from web.validation import parse_body

bp = Blueprint("orders", __name__, url_prefix="/api")


@bp.post("/deals/<int:deal_id>/orders")
@doc(
    "Place an order (Idempotency-Key header optional)",
    body=OrderIn,
    responses={
        200: OrderAccepted,
        202: OrderAccepted,
        401: None,
        403: None,
        404: None,
        409: None,
        422: None,
        429: None,
    },
    auth="order",
    headers=(IDEMPOTENCY_HEADER, QUEUE_PASS_HEADER),
)
def place_order(deal_id: int) -> Any:
    """Admit an order through the gate; 202 with the order id, 409 when refused, 429 over a rate limit."""
    # The buyer: the order token first (no Redis), else the session, as the fast path decides it.
    buyer = token_buyer()
    user_id = require_user() if buyer is None else buyer
    body = parse_body(OrderIn)
    idem = request.headers.get("Idempotency-Key")  # None: no header (a blank one is refused, not ignored)
    queue_pass = request.headers.get("Queue-Pass", "")
    admitted = admit_order(services(), deal_id, user_id, body.quantity, idem, get_remote_address(), queue_pass)
    return jsonify(admitted.body()), admitted.http_status, admitted.headers()


def _visible(view: OrderView) -> bool:
    return view["user_id"] == require_user() or is_admin()


@bp.get("/orders/<order_id>")
@login_required
@doc("One order (owner or admin)", responses={200: OrderDetail, 401: None, 404: None}, auth="session")
def get_order(order_id: str) -> Any:
    """An order, whether still in the outbox (accepted) or persisted (confirmed)."""
    svc = services()
    found = read_order(svc, parse_order_id(order_id))
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
    """The user's persisted orders plus their entries still in flight."""
    return jsonify(items=buyer_orders(services(), require_user()))


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
    found = read_order(svc, oid)
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
        svc.kicks.send(live.deal_id)
    forget_sold_out(live.deal_id)
    view["status"] = "canceled"
    if not result.replicated:
        record_unreplicated("cancel")  # done on the primary, as for an order (see admit_order)
        return jsonify(view), 200, {REPLICATION_HEADER: UNCONFIRMED}
    return jsonify(view)
