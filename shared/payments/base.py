"""The payment interface: what a provider does for an order, and the verified events it sends back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

import stripe

# Stripe's event names; the dev provider sends the same events, so both go through one webhook path.
SUCCEEDED = "payment_intent.succeeded"
FAILED = "payment_intent.payment_failed"
WEBHOOK_TOLERANCE_S = 300  # a signed event older than this is refused (replay of an old capture)

# ISO 4217 currencies without a minor unit, as Stripe lists them: the amount is sent as is.
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)


class ProviderError(RuntimeError):
    """The provider could not be reached or refused the call (the caller answers 502/503 and retries)."""


class BadEvent(ValueError):
    """A webhook payload whose signature does not verify, or that is not JSON."""


@dataclass(frozen=True)
class Payment:
    """A payment the provider opened for one order (the same one for every call on that order)."""

    provider: str
    payment_id: str
    checkout_url: str | None
    client_secret: str | None = None

    def record(self) -> str:
        """The form kept in the deal's payments hash."""
        return "|".join((self.provider, self.payment_id, self.checkout_url or "", self.client_secret or ""))

    @classmethod
    def from_record(cls, rec: str) -> Payment:
        """Parse ``record()``."""
        provider, payment_id, url, secret = (rec.split("|") + ["", "", ""])[:4]
        return cls(provider, payment_id, url or None, secret or None)


@dataclass(frozen=True)
class PayableOrder:
    """What a provider needs to charge one order."""

    order_id: str
    deal_id: int
    user_id: int
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class PaymentEvent:
    """A verified provider event about one of our orders."""

    event_id: str
    kind: str  # SUCCEEDED | FAILED | anything else (ignored)
    payment_id: str
    order_id: str | None  # None: not one of ours (no or bad metadata)
    deal_id: int | None
    amount_minor: int
    currency: str


class PaymentProvider(Protocol):
    """A payment provider: opens a payment for an order and refunds one (both idempotent)."""

    name: str

    def create_payment(self, order: PayableOrder) -> Payment:
        """Open (or find again) the order's payment; the order id is the idempotency key."""
        ...

    def refund(self, payment_id: str, order_id: str, amount_minor: int, reason: str) -> str:
        """Refund a payment in full; returns the refund id. Safe to call again for the same payment."""
        ...


def minor_units(amount: Decimal, currency: str) -> int:
    """An amount in the currency's smallest unit (cents; yen as is), as providers take it."""
    exponent = 0 if currency.lower() in ZERO_DECIMAL else 2
    return int((amount * (10**exponent)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def verify_event(payload: bytes, signature: str, secret: str) -> PaymentEvent:
    """Verify a signed webhook payload (Stripe's scheme, for both providers) and read the order it is about."""
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret, tolerance=WEBHOOK_TOLERANCE_S)
    except (stripe.SignatureVerificationError, ValueError) as exc:
        raise BadEvent(str(exc)) from None
    try:
        data = event.to_dict()  # plain dicts: StripeObject refuses dict methods such as .get
        obj = data["data"]["object"]
        meta = obj.get("metadata") or {}
        order_id = _uuid(meta.get("order_id"))
        deal_id = _deal_id(meta.get("deal_id"))
        amount = obj.get("amount_received") if data["type"] == SUCCEEDED else obj.get("amount")
        return PaymentEvent(
            event_id=str(data["id"]),
            kind=str(data["type"]),
            payment_id=str(obj["id"]),
            order_id=order_id if deal_id is not None else None,
            deal_id=deal_id if order_id is not None else None,
            amount_minor=int(amount or 0),
            currency=str(obj.get("currency") or "").lower(),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadEvent(f"not a payment event: {type(exc).__name__}: {exc}") from None


def _uuid(value: object) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def _deal_id(value: object) -> int | None:
    try:
        n = int(str(value))
    except ValueError:
        return None
    return n if 1 <= n < 2**63 else None
