"""The payment interface every provider module implements, and the plain values that cross it."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol

# ISO 4217 currencies without a minor unit, as Stripe lists them: the amount is sent as is.
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
WEBHOOK_TOLERANCE_S = 300  # a signed event older than this is refused (replay of an old capture)


class ProviderError(RuntimeError):
    """The provider could not be reached in time or refused the call (the caller answers 502/503 and retries)."""


class BadEvent(ValueError):
    """A webhook payload whose signature does not verify, or that is not an event."""


class Kind(enum.StrEnum):
    """What a provider says about a payment, in the shop's words (each provider maps its own events)."""

    SUCCEEDED = "succeeded"  # the money is taken
    FAILED = "failed"  # this attempt failed; the buyer may try again while time remains
    CLOSED = "closed"  # no success can follow (expired or canceled at the provider)
    OPEN = "open"  # nothing decided yet
    OTHER = "other"  # an event the shop does not act on (acknowledged, ignored)


@dataclass(frozen=True)
class Payment:
    """A payment the provider opened for one order (the same one for every call on that order)."""

    provider: str
    payment_id: str
    checkout_url: str | None

    def record(self) -> str:
        """The form kept in the deal's payments hash (shared/lua/settle.lua reads the payment id from it)."""
        return "|".join((self.provider, self.payment_id, self.checkout_url or ""))

    @classmethod
    def from_record(cls, rec: str) -> Payment:
        """Parse ``record()``."""
        provider, payment_id, url = (rec.split("|") + ["", ""])[:3]
        return cls(provider, payment_id, url or None)


@dataclass(frozen=True)
class PayableOrder:
    """What a provider needs to charge one order, and where the buyer comes back to."""

    order_id: str
    deal_id: int
    user_id: int
    amount_minor: int
    currency: str
    pay_by_ms: int = 0
    title: str = ""
    return_url: str = ""  # absolute URL of the order's page (a hosted checkout sends the buyer back there)


@dataclass(frozen=True)
class PaymentEvent:
    """A verified provider event (or a looked-up state) about one of our orders."""

    event_id: str
    kind: Kind
    payment_id: str
    order_id: str | None  # None: not one of ours (no or bad metadata)
    deal_id: int | None
    amount_minor: int
    currency: str


class PaymentProvider(Protocol):
    """One provider: a module of shared/payments/providers/ whose ``PROVIDER`` builds this from the settings.

    Every method is safe to call again (idempotent at the provider) and every network call has a short
    timeout and a bounded number of retries; failures raise ProviderError, never hang.
    """

    name: str

    def create_payment(self, order: PayableOrder) -> Payment:
        """Open (or find again) the order's payment; the order id is the idempotency key."""
        ...

    def parse_webhook(self, payload: bytes, headers: Mapping[str, str]) -> PaymentEvent:
        """Verify a webhook with the provider's own scheme and read it; BadEvent when it does not verify."""
        ...

    def refund(self, payment_id: str, order_id: str, amount_minor: int, reason: str) -> str:
        """Refund a payment in full; returns the refund id. Safe to call again for the same payment."""
        ...

    def look_up(self, payment: Payment, order: PayableOrder) -> PaymentEvent:
        """The payment's state now, as an event (kind SUCCEEDED, FAILED, CLOSED or OPEN)."""
        ...

    def close(self, payment: Payment, order: PayableOrder) -> PaymentEvent:
        """Close the payment so that no success can follow; returns its state after (CLOSED, or SUCCEEDED)."""
        ...


def minor_units(amount: Decimal, currency: str) -> int:
    """An amount in the currency's smallest unit (cents; yen as is), as providers take it."""
    exponent = 0 if currency.lower() in ZERO_DECIMAL else 2
    return int((amount * (10**exponent)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def event_of(event_id: str, kind: Kind, obj: Mapping[str, Any], amount_key: str) -> PaymentEvent:
    """A provider's payment object (Stripe-shaped: id, amount under ``amount_key``, currency, metadata) as an event."""
    order_id, deal_id = order_ref(obj.get("metadata") or {})
    return PaymentEvent(
        event_id=event_id,
        kind=kind,
        payment_id=str(obj["id"]),
        order_id=order_id,
        deal_id=deal_id,
        amount_minor=int(obj.get(amount_key) or 0),
        currency=str(obj.get("currency") or "").lower(),
    )


def order_ref(meta: Mapping[str, object]) -> tuple[str | None, int | None]:
    """(order id, deal id) from a payment's metadata, both or neither (a provider event not about our orders)."""
    order_id, deal_id = _uuid(meta.get("order_id")), _deal_id(meta.get("deal_id"))
    return (order_id, deal_id) if order_id is not None and deal_id is not None else (None, None)


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
