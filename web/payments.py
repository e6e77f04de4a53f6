"""Payments over HTTP: open the order's payment, take the provider's signed events, the dev provider's checkout.

The decision (paid, or the money goes back) lives in shared/payments/decision.py, shared with the workers'
check job; this module verifies through the provider, calls it, and answers.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from shared.clock import now_ms
from shared.order_ids import deal_of
from shared.order_record import LiveOrder
from shared.payments import BadEvent, Kind, Payment, PaymentProvider, ProviderError, build_provider
from shared.payments.bulkhead import Bulkhead, ProviderBusy
from shared.payments.decision import Decisions, RetryLater, payable
from shared.payments.providers.dev import CARD_DECLINED, CARD_PAYS, DevProvider, event_for, order_of
from shared.settings import ConfigError
from web.access import login_required, require_user
from web.errors import ApiError
from web.ids import parse_order_id
from web.metrics import record_payment_event, record_unreplicated
from web.openapi import doc
from web.schemas import CheckoutIn, CheckoutOut, PaymentOut, WebhookOut
from web.services import services
from web.validation import parse_body

log = logging.getLogger(__name__)

bp = Blueprint("payments", __name__)

MAX_EVENT_BYTES = 64 * 1024
RETRY_AFTER = {"Retry-After": "1"}
_lock = threading.Lock()


def decisions() -> Decisions:
    """This app's provider (behind its bulkhead) and decisions, built on first use (a missing Stripe key fails
    payments, not the whole node)."""
    ext = current_app.extensions
    with _lock:
        if "flashdeal.payments" not in ext:
            svc = services()
            try:
                prov = build_provider(svc.settings, svc.redis)
            except ConfigError as exc:
                log.error("payments unavailable: %s", exc)
                raise ApiError(503, "payments_unavailable", "Payments are not configured on this server.") from None
            ext["flashdeal.payments"] = Decisions(
                svc.db,
                svc.gate,
                svc.settings,
                Bulkhead(prov, svc.settings.payment_max_concurrent),  # type: ignore[arg-type]
                svc.kicks.send,
                lambda: record_unreplicated("payment"),
            )
        return ext["flashdeal.payments"]


def provider() -> PaymentProvider:
    """This app's provider, behind its bulkhead."""
    return decisions().provider


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
        deal = svc.gate.live(live.deal_id)
        order = payable(
            svc.settings,
            live,
            title=deal.rules.title if deal is not None else "",
            return_url=f"{request.host_url}deals/{live.deal_id}",
        )
        try:
            payment = provider().create_payment(order)
        except ProviderBusy:
            raise ApiError(503, "payments_busy", "Payments are busy; try again.", headers=RETRY_AFTER) from None
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
    """Verify (the provider's own scheme), de-duplicate (in the gate, by event id) and apply one event."""
    if (request.content_length or 0) > MAX_EVENT_BYTES:
        raise ApiError(413, "payload_too_large", f"Events are at most {MAX_EVENT_BYTES} bytes.")
    dec = decisions()  # first: without a configured secret, no event is verified at all (503)
    payload = request.get_data(cache=False)
    try:
        event = dec.provider.parse_webhook(payload, request.headers)  # type: ignore[arg-type]
    except BadEvent as exc:
        raise ApiError(400, "bad_signature", f"The event was refused: {exc}") from None
    try:
        outcome = dec.apply(event)
    except RetryLater as exc:
        raise ApiError(503, exc.code, exc.message, headers=RETRY_AFTER) from None
    record_payment_event(outcome)
    return jsonify(received=True, outcome=outcome)


# ----------------------------------------------------------------------------------------------------------
# The dev provider's checkout (PAYMENT_PROVIDER=dev): a page of its own, test cards, a signed webhook.


def _dev_order(payment_id: str) -> tuple[DevProvider, LiveOrder]:
    prov = provider()
    found = order_of(payment_id)
    if prov.name != DevProvider.name or found is None:
        raise ApiError(404, "not_found", "No such payment.")
    deal_id, order_id = found
    live = services().gate.find_order(order_id, deal_id)
    if live is None or live.pay_by is None:
        raise ApiError(404, "not_found", "No such payment.")
    return prov, live


def dev_checkout_context(payment_id: str) -> dict[str, Any]:
    """What the dev provider's checkout page shows: the amount, the deadline and the test cards."""
    _prov, live = _dev_order(payment_id)
    due = payable(services().settings, live)
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
    order = payable(svc.settings, live)
    kind = prov.take(payment_id, order, card == CARD_PAYS)
    if kind is Kind.CLOSED:
        raise ApiError(409, "payment_closed", "This payment was closed: the time to pay ran out.")
    payload = event_for(order, payment_id, kind)
    # As a real provider would: over HTTP to the webhook of this very node, never to a host named by the request.
    try:
        status = prov.deliver(f"http://127.0.0.1:{request.environ.get('SERVER_PORT', '80')}", payload)
    except ProviderBusy:
        raise ApiError(503, "payments_busy", "Payments are busy; try again.", headers=RETRY_AFTER) from None
    if status != 200:
        # The payment stands at the provider; the check job learns it by looking it up (shared/payments/check.py).
        raise ApiError(502, "webhook_failed", f"The payment's event was not delivered ({status or 'unreached'}).")
    after = svc.gate.find_order(live.order_id, live.deal_id)
    state = after.state if after is not None else live.state
    succeeded = kind is Kind.SUCCEEDED
    return jsonify(CheckoutOut(result="paid" if succeeded else "declined", order_status=state).model_dump())
