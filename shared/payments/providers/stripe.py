"""The ``stripe`` provider: Stripe Checkout (a hosted payment page) through the official ``stripe`` package.

The buyer is sent to the Checkout Session's ``url`` and comes back to the order's page. A session cannot
expire sooner than 30 minutes after it is created, so when the order's window ends first the shop expires
the session itself (``close``, called by the check job) and a payment that still completes is refunded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import stripe

from shared.payments.base import (
    WEBHOOK_TOLERANCE_S,
    BadEvent,
    Kind,
    PayableOrder,
    Payment,
    PaymentEvent,
    ProviderError,
    event_of,
)
from shared.settings import ConfigError, Settings

MIN_EXPIRY_S = 30 * 60 + 60  # Stripe's minimum for expires_at (30 min), with a margin for clock skew
MAX_EXPIRY_S = 24 * 3600 - 60  # and its maximum (24 h)

# The events the shop acts on; every other type is acknowledged and ignored. checkout.session.completed
# with payment_status "unpaid" is an asynchronous method still pending: its async_payment_* event decides.
_EVENT_KINDS = {
    "checkout.session.async_payment_succeeded": Kind.SUCCEEDED,
    "checkout.session.async_payment_failed": Kind.FAILED,
    "checkout.session.expired": Kind.CLOSED,
}


class StripeProvider:
    """Checkout Sessions: the order id is the idempotency key, the amount is in the currency's smallest unit."""

    name = "stripe"

    def __init__(self, settings: Settings, redis: object = None) -> None:
        if not settings.stripe_secret_key or not settings.stripe_webhook_secret:
            raise ConfigError("PAYMENT_PROVIDER=stripe needs STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET")
        self.webhook_secret = settings.stripe_webhook_secret
        # Why explicit: the package's default is an 80 s read timeout and its own retry count; a web thread
        # waiting that long is a thread the order path does not get (issue: outbound calls hold threads).
        # Retries are safe: every POST carries an idempotency key.
        timeout = settings.payment_timeout_seconds
        kwargs: dict[str, object] = {
            "max_network_retries": settings.payment_max_retries,
            "http_client": stripe.RequestsClient(timeout=(min(timeout, 2.0), timeout)),
        }
        if settings.stripe_api_base:
            # Tests point the client at a local HTTP server that speaks the part of Stripe's API used here.
            kwargs["base_addresses"] = {"api": settings.stripe_api_base}
        # A client object, not the module's global api_key: nothing global to leak between settings.
        self.client = stripe.StripeClient(settings.stripe_secret_key, **kwargs)  # type: ignore[arg-type]

    def create_payment(self, order: PayableOrder) -> Payment:
        """Create the order's Checkout Session, or get the same one back (Stripe replays an idempotent request)."""
        meta = {"order_id": order.order_id, "deal_id": str(order.deal_id), "user_id": str(order.user_id)}
        params: dict[str, object] = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": order.currency,
                        "unit_amount": order.amount_minor,
                        "product_data": {"name": order.title or f"Order {order.order_id}"},
                    },
                }
            ],
            "client_reference_id": order.order_id,
            "metadata": meta,
            "payment_intent_data": {"metadata": meta},
            "success_url": order.return_url,
            "cancel_url": order.return_url,
        }
        # expires_at from pay_by alone (not from "now"), so a repeated call sends the same parameters, as an
        # idempotent replay must. Sooner than Stripe allows: left at its default, the shop closes it itself.
        pay_by_s = order.pay_by_ms // 1000
        if MIN_EXPIRY_S <= pay_by_s - time.time() <= MAX_EXPIRY_S:
            params["expires_at"] = pay_by_s
        try:
            session = self.client.v1.checkout.sessions.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"checkout-{order.order_id}"},
            )
        except stripe.StripeError as exc:
            raise ProviderError(f"stripe: {type(exc).__name__}: {exc}") from exc
        return Payment(self.name, str(session.id), str(session.url))

    def parse_webhook(self, payload: bytes, headers: Mapping[str, str]) -> PaymentEvent:
        """Verify Stripe's signature (``Stripe-Signature``) and read the Checkout Session the event is about."""
        try:
            event = stripe.Webhook.construct_event(
                payload, headers.get("Stripe-Signature", ""), self.webhook_secret, tolerance=WEBHOOK_TOLERANCE_S
            )
        except (stripe.SignatureVerificationError, ValueError) as exc:
            raise BadEvent(str(exc)) from None
        try:
            data = event.to_dict()  # plain dicts: StripeObject refuses dict methods such as .get
            obj = data["data"]["object"]
            kind = Kind.OTHER
            if data["type"] == "checkout.session.completed":
                kind = Kind.SUCCEEDED if obj.get("payment_status") == "paid" else Kind.OPEN
            elif obj.get("object") == "checkout.session":
                kind = _EVENT_KINDS.get(str(data["type"]), Kind.OTHER)
            return event_of(str(data["id"]), kind, obj, "amount_total")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadEvent(f"not a payment event: {type(exc).__name__}: {exc}") from None

    def refund(self, payment_id: str, order_id: str, amount_minor: int, reason: str) -> str:
        """Refund the session's PaymentIntent in full; the idempotency key makes a repeat the same refund."""
        try:
            intent = payment_id
            if payment_id.startswith("cs_"):
                intent = str(self.client.v1.checkout.sessions.retrieve(payment_id).payment_intent or "")
            refund = self.client.v1.refunds.create(
                params={"payment_intent": intent, "metadata": {"order_id": order_id, "flashdeal_reason": reason}},
                options={"idempotency_key": f"refund-{payment_id}"},
            )
        except stripe.StripeError as exc:
            raise ProviderError(f"stripe: {type(exc).__name__}: {exc}") from exc
        return str(refund.id)

    def look_up(self, payment: Payment, order: PayableOrder) -> PaymentEvent:
        """The session's state: paid, expired, or still open (an async method still pending is open)."""
        try:
            session = self.client.v1.checkout.sessions.retrieve(payment.payment_id)
        except stripe.StripeError as exc:
            raise ProviderError(f"stripe: {type(exc).__name__}: {exc}") from exc
        return _state(session.to_dict(), "lookup")

    def close(self, payment: Payment, order: PayableOrder) -> PaymentEvent:
        """Expire the session; one that completed meanwhile cannot be expired and is answered as it is."""
        try:
            session = self.client.v1.checkout.sessions.expire(payment.payment_id)
        except stripe.InvalidRequestError:
            return self.look_up(payment, order)  # not open any more: complete (or already expired)
        except stripe.StripeError as exc:
            raise ProviderError(f"stripe: {type(exc).__name__}: {exc}") from exc
        return _state(session.to_dict(), "close")


def _state(obj: dict, how: str) -> PaymentEvent:
    """A looked-up session as an event; its id names the session and the state, so a repeat is a duplicate."""
    if obj.get("status") == "complete" and obj.get("payment_status") in ("paid", "no_payment_required"):
        kind = Kind.SUCCEEDED
    elif obj.get("status") == "expired":
        kind = Kind.CLOSED
    else:
        kind = Kind.OPEN
    return event_of(f"{how}:{obj['id']}:{kind.value}", kind, obj, "amount_total")


PROVIDER = StripeProvider
