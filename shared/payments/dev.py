"""The built-in ``dev`` provider: a checkout page of our own, test cards, and events signed like Stripe's.

So that the whole flow runs on one machine through the code production runs, its events are shaped like
Stripe's PaymentIntent events and signed with Stripe's scheme (``t=…,v1=HMAC-SHA256``), and they reach
``POST /api/payments/webhook`` over HTTP like a real provider's, where ``stripe.Webhook.construct_event``
verifies them. Refused outside development (its test card is public).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

from shared.payments.base import FAILED, SUCCEEDED, PayableOrder, Payment
from shared.settings import Settings

# Stripe's own test numbers: this one pays, this one is declined.
CARD_PAYS = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CHECKOUT_PATH = "/payments/dev/checkout/"


def dev_webhook_secret(settings: Settings) -> str:
    """STRIPE_WEBHOOK_SECRET when set, else one derived from SECRET_KEY (every node derives the same)."""
    if settings.stripe_webhook_secret:
        return settings.stripe_webhook_secret
    digest = hmac.new(settings.secret_key.encode(), b"flashdeal dev webhook", hashlib.sha256).hexdigest()
    return f"whsec_dev_{digest}"


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for payload, computed as Stripe does."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def payment_id_of(order_id: str, deal_id: int) -> str:
    """The order's dev payment id: derived from the order, so a repeated call opens the same payment."""
    return f"devpi_{deal_id}_{order_id.replace('-', '')}"


def order_of(payment_id: str) -> tuple[int, str] | None:
    """(deal id, order id) of a dev payment id, or None."""
    parts = payment_id.split("_")
    if len(parts) != 3 or parts[0] != "devpi" or not parts[1].isdigit() or len(parts[2]) != 32:
        return None
    h = parts[2]
    if any(c not in "0123456789abcdef" for c in h):
        return None
    return int(parts[1]), f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event_for(payment: PayableOrder, payment_id: str, succeeded: bool) -> bytes:
    """A Stripe-shaped PaymentIntent event about the payment, as JSON bytes."""
    obj = {
        "id": payment_id,
        "object": "payment_intent",
        "amount": payment.amount_minor,
        "amount_received": payment.amount_minor if succeeded else 0,
        "currency": payment.currency,
        "status": "succeeded" if succeeded else "requires_payment_method",
        "metadata": {"order_id": payment.order_id, "deal_id": str(payment.deal_id), "user_id": str(payment.user_id)},
    }
    event = {
        "id": f"evt_dev_{secrets.token_hex(12)}",
        "object": "event",
        "type": SUCCEEDED if succeeded else FAILED,
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return json.dumps(event, separators=(",", ":")).encode()


class DevProvider:
    """Opens payments paid on our own checkout page; refunds are recorded, no money moves."""

    name = "dev"

    def __init__(self, settings: Settings) -> None:
        self.secret = dev_webhook_secret(settings)

    def create_payment(self, order: PayableOrder) -> Payment:
        """The order's payment and its checkout page (same id on every call)."""
        pid = payment_id_of(order.order_id, order.deal_id)
        return Payment(self.name, pid, CHECKOUT_PATH + pid)

    def refund(self, payment_id: str, order_id: str, amount_minor: int, reason: str) -> str:
        """A refund id derived from the payment (calling again gives the same one)."""
        return "devre_" + payment_id.removeprefix("devpi_")
