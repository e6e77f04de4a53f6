"""Payments: open the order's payment, take the provider's signed events, and the dev provider's checkout.

The decision (paid, or the money goes back) is made in the gate by shared/lua/settle.lua; this module turns a
verified event into that call and carries out what it decided (a refund, a drain kick).
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import requests
from flask import Blueprint, current_app, jsonify, request

from shared.clock import now_ms
from shared.gate import Settlement
from shared.models import Order
from shared.order_ids import deal_of
from shared.order_record import LiveOrder
from shared.payments import (
    BadEvent,
    Payment,
    PaymentEvent,
    PaymentProvider,
    ProviderError,
    build_provider,
    minor_units,
    verify_event,
)
from shared.payments.base import FAILED, SUCCEEDED, PayableOrder
from shared.payments.dev import CARD_DECLINED, CARD_PAYS, DevProvider, dev_webhook_secret, event_for, order_of, sign
from shared.payments.refunds import record_refund
from shared.settings import ConfigError
from web.access import login_required, require_user
from web.errors import ApiError
from web.ids import parse_order_id
from web.metrics import record_payment_event, record_unreplicated
from web.openapi import doc
from web.schemas import CheckoutIn, CheckoutOut, PaymentOut, WebhookOut
from web.services import Services, services
from web.validation import parse_body

log = logging.getLogger(__name__)

bp = Blueprint("payments", __name__)

MAX_EVENT_BYTES = 64 * 1024
DELIVERY_TIMEOUT_S = 10
_lock = threading.Lock()


def provider() -> PaymentProvider:
    """This app's provider, built on first use (a missing Stripe key fails payments, not the whole node)."""
    ext = current_app.extensions
    with _lock:
        if "flashdeal.payments" not in ext:
            try:
                ext["flashdeal.payments"] = build_provider(services().settings)
            except ConfigError as exc:
                log.error("payments unavailable: %s", exc)
                raise ApiError(503, "payments_unavailable", "Payments are not configured on this server.") from None
        return ext["flashdeal.payments"]


def webhook_secret(svc: Services) -> str:
    """The secret the provider signs its events with."""
    if svc.settings.payment_provider == "stripe":
        return svc.settings.stripe_webhook_secret
    return dev_webhook_secret(svc.settings)


def payable(svc: Services, live: LiveOrder) -> PayableOrder:
    """What the provider charges: the order's price times its quantity, in the smallest currency unit."""
    currency = svc.settings.payment_currency
    return PayableOrder(
        live.order_id, live.deal_id, live.user_id, minor_units(live.unit_price * live.quantity, currency), currency
    )


_NOT_PAYABLE = {
    "canceled": (409, "order_canceled", "This order was canceled."),
    "expired": (409, "order_expired", "The time to pay this order has run out; its units went back on sale."),
}


@bp.post("/api/orders/<order_id>/pay")
@login_required
@doc(
    "Open (or get again) the order's payment",
    responses={200: PaymentOut, 401: None, 404: None, 409: None, 502: None, 503: None},
    auth="session",
)
def pay(order_id: str) -> Any:
    """The same payment for every call on one order; 409 once the order can no longer be paid."""
    svc = services()
    oid = parse_order_id(order_id)
    deal_id = deal_of(oid)  # payable orders all have ids that name their deal (payments came after them)
    live = svc.gate.find_order(oid, deal_id) if deal_id is not None else None
    if live is None or live.user_id != require_user():
        raise ApiError(404, "not_found", "No such order.")
    if live.pay_by is None:
        raise ApiError(409, "no_payment_window", "This deal has no payment step: the order needs no payment.")
    if live.state in _NOT_PAYABLE:
        raise ApiError(*_NOT_PAYABLE[live.state])
    rec, _declined = svc.gate.payment_of(live.deal_id, oid)
    if rec is None:
        if live.state != "accepted" or now_ms() >= int(live.pay_by.timestamp() * 1000):
            raise ApiError(*_NOT_PAYABLE["expired"])
        try:
            payment = provider().create_payment(payable(svc, live))
        except ProviderError as exc:
            log.warning("payment for order %s not opened: %s", oid, exc)
            raise ApiError(502, "payment_provider_error", "The payment provider did not answer; try again.") from None
        # Two calls racing here got the same payment from the provider (the order id is its idempotency
        # key); whichever is recorded first stays, so every later call answers with it.
        rec = svc.gate.record_payment(live.deal_id, oid, payment.record())
    p = Payment.from_record(rec)
    return jsonify(
        PaymentOut(
            provider=p.provider,  # type: ignore[arg-type]
            payment_id=p.payment_id,
            checkout_url=p.checkout_url,
            client_secret=p.client_secret,
            pay_by=live.pay_by,
        ).model_dump(mode="json")
    )


@bp.post("/api/payments/webhook")
@doc(
    "The payment provider's signed events",
    responses={200: WebhookOut, 400: None, 413: None, 503: None},
    raw_body=True,  # the provider's JSON: that content type is its proof of origin (web/origin.py)
)
def webhook() -> Any:
    """Verify, de-duplicate (in the gate, by event id) and apply one event; a bad signature changes nothing."""
    if (request.content_length or 0) > MAX_EVENT_BYTES:
        raise ApiError(413, "payload_too_large", f"Events are at most {MAX_EVENT_BYTES} bytes.")
    svc = services()
    prov = provider()  # first: without a configured secret, no event is verified at all (503)
    payload = request.get_data(cache=False)
    try:
        event = verify_event(payload, request.headers.get("Stripe-Signature", ""), webhook_secret(svc))
    except BadEvent as exc:
        raise ApiError(400, "bad_signature", f"The event was refused: {exc}") from None
    outcome = apply_event(svc, prov, event)
    record_payment_event(outcome)
    return jsonify(received=True, outcome=outcome)


def apply_event(svc: Services, prov: PaymentProvider, ev: PaymentEvent) -> str:
    """Decide one verified event in the gate, then refund whatever the gate says must not be kept."""
    if ev.kind not in (SUCCEEDED, FAILED) or ev.order_id is None or ev.deal_id is None:
        return "ignored"  # not a payment event of ours: acknowledged so the provider stops sending it
    if ev.kind == FAILED:
        return svc.gate.settle(ev.deal_id, "decline", ev.order_id, ev.event_id, ev.payment_id).outcome.value
    live = svc.gate.find_order(ev.order_id, ev.deal_id)
    if live is not None:
        due = payable(svc, live)
        if (ev.amount_minor, ev.currency) != (due.amount_minor, due.currency):
            # Not what this order costs: never marked paid, and the money goes back.
            _refund(svc, prov, ev, "amount_mismatch")
            return "refund"
    r = svc.gate.settle(ev.deal_id, "pay", ev.order_id, ev.event_id, ev.payment_id)
    if r.kick:
        svc.kicks.send(ev.deal_id)
    if not r.replicated:
        # Decided on the primary, but no replica confirmed it in time: a failover now could lose it. A 503
        # makes the provider send the event again; the resend is a duplicate if the decision survived and
        # decides it once more if it did not (and any refund it owes is made then).
        record_unreplicated("payment")
        raise ApiError(503, "unavailable", "The payment was recorded but not yet replicated; send it again.")
    outcome, detail = r.outcome, r.detail
    if outcome is Settlement.DUPLICATE:
        # A repeated delivery decides nothing again, but the refund the first one owed may not have gone
        # through (the provider saw an error and resent): refunds are idempotent, so it is done again.
        first, _, detail = detail.partition(":")
        outcome = Settlement(first)
    reason = None
    if outcome is Settlement.REFUND:
        reason = detail  # expired, canceled or no_window
    elif outcome is Settlement.ALREADY_PAID and detail != ev.payment_id:
        reason = "duplicate_payment"  # a second, different payment for a paid order
    elif outcome is Settlement.NOT_FOUND:
        reason = _decided_in_database(svc, ev)
        if reason is None:
            return "duplicate"  # the payment that paid this order, delivered again after its deal retired
    if reason is not None:
        _refund(svc, prov, ev, reason)
    return r.outcome.value if r.outcome is not Settlement.DUPLICATE else "duplicate"


def _decided_in_database(svc: Services, ev: PaymentEvent) -> str | None:
    """Why to refund an event for an order the gate does not hold; None when it is the order's own payment.

    Why PostgreSQL: a deal's gate keys (records, payments, seen events) leave Redis when it retires, and a
    provider resends an event for days when our answer was lost, so "unknown to the gate" is not "unknown".
    A retired deal has nothing awaiting payment (shared/lua/retire.lua), so its row holds the final decision.
    """
    assert ev.order_id is not None
    with svc.db.read() as s:
        row = s.get(Order, uuid.UUID(ev.order_id))
    if row is None:
        return "unknown_order"
    if row.status == "paid":
        return None if row.payment_id == ev.payment_id else "duplicate_payment"
    return row.status if row.status in ("expired", "canceled") else "no_window"


def _refund(svc: Services, prov: PaymentProvider, ev: PaymentEvent, reason: str) -> None:
    """Give the payment back and report it; a provider error is a 503, so the provider sends the event again."""
    assert ev.order_id is not None and ev.deal_id is not None
    try:
        refund_id = prov.refund(ev.payment_id, ev.order_id, ev.amount_minor, reason)
    except ProviderError as exc:
        log.error("refund of %s for order %s failed (%s); the provider will resend", ev.payment_id, ev.order_id, exc)
        raise ApiError(503, "refund_pending", "The refund could not be made yet; send the event again.") from None
    record_refund(
        svc.db,
        order_id=ev.order_id,
        deal_id=ev.deal_id,
        provider=prov.name,
        payment_id=ev.payment_id,
        refund_id=refund_id,
        amount_minor=ev.amount_minor,
        currency=ev.currency or svc.settings.payment_currency,
        reason=reason,
        event_id=ev.event_id,
    )


# ----------------------------------------------------------------------------------------------------------
# The dev provider's checkout (PAYMENT_PROVIDER=dev): a page of its own, test cards, a signed webhook.


def _dev_order(payment_id: str) -> tuple[DevProvider, LiveOrder]:
    prov = provider()
    found = order_of(payment_id)
    if not isinstance(prov, DevProvider) or found is None:
        raise ApiError(404, "not_found", "No such payment.")
    deal_id, order_id = found
    live = services().gate.find_order(order_id, deal_id)
    if live is None or live.pay_by is None:
        raise ApiError(404, "not_found", "No such payment.")
    return prov, live


def dev_checkout_context(payment_id: str) -> dict[str, Any]:
    """What the dev provider's checkout page shows: the amount, the deadline and the test cards."""
    _prov, live = _dev_order(payment_id)
    due = payable(services(), live)
    return {
        "payment_id": payment_id,
        "order": live,
        "amount": f"{live.unit_price * live.quantity:.2f}",
        "currency": due.currency.upper(),
        "pay_by_ms": int(live.pay_by.timestamp() * 1000) if live.pay_by else 0,
        "card_pays": CARD_PAYS,
        "card_declined": CARD_DECLINED,
    }


# Not in /openapi.json: this is the built-in test provider's own page and form (a real provider's checkout is
# on its side), an HTML page and its JSON POST on one path; tests/integration/test_payment_providers.py covers both.
@bp.post("/payments/dev/checkout/<payment_id>")
def dev_checkout(payment_id: str) -> Any:
    """4242… pays, 4000 0000 0000 0002 is declined; either way the signed event goes to the webhook over HTTP."""
    body = parse_body(CheckoutIn)
    card = body.card.replace(" ", "")
    if card not in (CARD_PAYS, CARD_DECLINED):
        raise ApiError(422, "card_unknown", f"Use the test card {CARD_PAYS} (pays) or {CARD_DECLINED} (declined).")
    prov, live = _dev_order(payment_id)
    svc = services()
    succeeded = card == CARD_PAYS
    payload = event_for(payable(svc, live), payment_id, succeeded)
    # As a real provider would: over HTTP to the webhook of this very node, never to a host named by the request.
    url = svc.settings.dev_webhook_url or f"http://127.0.0.1:{request.environ.get('SERVER_PORT', '80')}"
    try:
        r = requests.post(
            url.rstrip("/") + "/api/payments/webhook",
            data=payload,
            headers={"Content-Type": "application/json", "Stripe-Signature": sign(payload, prov.secret)},
            timeout=DELIVERY_TIMEOUT_S,
        )
    except requests.RequestException as exc:
        log.warning("dev provider: webhook delivery failed: %s", exc)
        raise ApiError(502, "webhook_failed", "The payment's event could not be delivered; try again.") from None
    if r.status_code != 200:
        raise ApiError(502, "webhook_failed", f"The webhook answered {r.status_code}; try again.")
    after = svc.gate.find_order(live.order_id, live.deal_id)
    state = after.state if after is not None else live.state
    return jsonify(CheckoutOut(result="paid" if succeeded else "declined", order_status=state).model_dump())
