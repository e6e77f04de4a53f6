"""The built-in ``dev`` provider: a checkout page of our own, test cards, signed events. No money moves.

It behaves as a hosted provider would, on one machine: it keeps each payment's state (in Redis, under keys
of its own, never a deal's), sends a signed event to ``POST /api/payments/webhook`` over HTTP, answers a
look-up and closes a payment on request. Its signature scheme is its own (``Flashdeal-Dev-Signature:
t=…,v1=HMAC-SHA256(secret, "t.payload")``), not Stripe's. Refused outside development (its test card is
public).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.payments.base import (
    WEBHOOK_TOLERANCE_S,
    BadEvent,
    Kind,
    PayableOrder,
    Payment,
    PaymentEvent,
    event_of,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

# Stripe's own test numbers, kept for familiarity: this one pays, this one is declined.
CARD_PAYS = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CHECKOUT_PATH = "/payments/dev/checkout/"
SIGNATURE_HEADER = "Flashdeal-Dev-Signature"
STATE_TTL_S = 7 * 86400  # a payment's state outlives any payment window and any resend


def dev_webhook_secret(settings: Settings) -> str:
    """STRIPE_WEBHOOK_SECRET's sibling for this provider: derived from SECRET_KEY (every node derives the same)."""
    digest = hmac.new(settings.secret_key.encode(), b"flashdeal dev webhook", hashlib.sha256).hexdigest()
    return f"devsec_{digest}"


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Flashdeal-Dev-Signature`` header for payload."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify(payload: bytes, header: str, secret: str, now: float | None = None) -> None:
    """Raise BadEvent unless header signs payload with secret, within the tolerance."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts.get("t", ""))
    except ValueError:
        raise BadEvent("no timestamp in the signature header") from None
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parts.get("v1", "")):
        raise BadEvent("the signature does not match the payload")
    if abs((time.time() if now is None else now) - ts) > WEBHOOK_TOLERANCE_S:
        raise BadEvent("the signature's timestamp is outside the tolerance")


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


def event_for(order: PayableOrder, payment_id: str, kind: Kind, event_id: str = "") -> bytes:
    """The provider's event about a payment, as JSON bytes (its own shape)."""
    event = {
        "id": event_id or f"devevt_{secrets.token_hex(12)}",
        "type": f"payment.{kind.value}",
        "created": int(time.time()),
        "payment": {
            "id": payment_id,
            "amount": order.amount_minor,
            "currency": order.currency,
            "metadata": {"order_id": order.order_id, "deal_id": str(order.deal_id), "user_id": str(order.user_id)},
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


class DevProvider:
    """Payments paid on our own checkout page; its state lives in Redis keys of its own."""

    name = "dev"

    def __init__(self, settings: Settings, redis: object) -> None:
        self.secret = dev_webhook_secret(settings)
        self.redis = redis
        self.prefix = f"{settings.key_prefix}devpay:"
        self.webhook_url = settings.dev_webhook_url
        self.timeout = settings.payment_timeout_seconds
        # Delivery as a provider does it, bounded: a short timeout per try, a few tries on a refused
        # connection or a 5xx (the webhook's "send it again"), then the check job's look-up takes over.
        retry = Retry(
            total=settings.payment_max_retries + 1,
            backoff_factor=0.2,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=frozenset({"POST"}),
            raise_on_status=False,
        )
        self.http = requests.Session()
        self.http.mount("http://", HTTPAdapter(max_retries=retry))
        self.http.mount("https://", HTTPAdapter(max_retries=retry))

    def _key(self, payment_id: str) -> str:
        return self.prefix + payment_id

    def create_payment(self, order: PayableOrder) -> Payment:
        """The order's payment and its checkout page (same id on every call); no network call."""
        pid = payment_id_of(order.order_id, order.deal_id)
        return Payment(self.name, pid, CHECKOUT_PATH + pid)

    def parse_webhook(self, payload: bytes, headers: Mapping[str, str]) -> PaymentEvent:
        """Verify this provider's signature and read its event."""
        verify(payload, headers.get(SIGNATURE_HEADER, ""), self.secret)
        try:
            data = json.loads(payload)
            obj = data["payment"]
            kind = Kind(str(data["type"]).removeprefix("payment."))
            return event_of(str(data["id"]), kind, obj, "amount")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadEvent(f"not a payment event: {type(exc).__name__}: {exc}") from None

    def refund(self, payment_id: str, order_id: str, amount_minor: int, reason: str) -> str:
        """A refund id derived from the payment (calling again gives the same one)."""
        self.redis.set(self._key(payment_id), "refunded", xx=True, keepttl=True)  # type: ignore[attr-defined]
        return "devre_" + payment_id.removeprefix("devpi_")

    def look_up(self, payment: Payment, order: PayableOrder) -> PaymentEvent:
        """The payment's state as the checkout left it."""
        state = self.redis.get(self._key(payment.payment_id))  # type: ignore[attr-defined]
        return self._state(payment.payment_id, order, state, "lookup")

    def close(self, payment: Payment, order: PayableOrder) -> PaymentEvent:
        """Close the payment unless it succeeded first (one atomic SET NX: exactly one of the two wins)."""
        key = self._key(payment.payment_id)
        self.redis.set(key, "closed", nx=True, ex=STATE_TTL_S)  # type: ignore[attr-defined]
        return self._state(payment.payment_id, order, self.redis.get(key), "close")  # type: ignore[attr-defined]

    def take(self, payment_id: str, order: PayableOrder, card_pays: bool) -> Kind:
        """The buyer's card at the checkout: SUCCEEDED once (SET NX), FAILED for a declined card, CLOSED after close."""
        if not card_pays:
            return Kind.FAILED
        key = self._key(payment_id)
        self.redis.set(key, "succeeded", nx=True, ex=STATE_TTL_S)  # type: ignore[attr-defined]
        state = self.redis.get(key)  # type: ignore[attr-defined]
        return Kind.SUCCEEDED if state in ("succeeded", "refunded") else Kind.CLOSED

    def deliver(self, base_url: str, payload: bytes) -> int:
        """Send a signed event to the shop's webhook (bounded tries, short timeouts); its status, 0 if unreached."""
        url = (self.webhook_url or base_url).rstrip("/") + "/api/payments/webhook"
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(payload, self.secret)}
        try:
            return self.http.post(url, data=payload, headers=headers, timeout=(1.0, self.timeout)).status_code
        except requests.RequestException as exc:
            log.warning("dev provider: webhook delivery failed: %s", exc)
            return 0

    def _state(self, payment_id: str, order: PayableOrder, state: str | None, how: str) -> PaymentEvent:
        kind = {"succeeded": Kind.SUCCEEDED, "refunded": Kind.SUCCEEDED, "closed": Kind.CLOSED}.get(
            state or "", Kind.OPEN
        )
        obj = {
            "id": payment_id,
            "amount": order.amount_minor,
            "currency": order.currency,
            "metadata": {"order_id": order.order_id, "deal_id": str(order.deal_id)},
        }
        return event_of(f"{how}:{payment_id}:{kind.value}", kind, obj, "amount")


PROVIDER = DevProvider
