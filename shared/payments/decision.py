"""The payment decision, for web nodes (webhooks) and workers (the check job) alike.

Paid or not is decided in the gate by shared/lua/settle.lua, once per order; this module turns a verified event (or
a state the provider was asked for) into that call, and carries out what it decided: a refund, a drain kick.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from shared.db import Database
from shared.gate import Gate, Settlement
from shared.models import Deal, Order
from shared.order_record import LiveOrder
from shared.payments.base import Kind, PayableOrder, PaymentEvent, PaymentProvider, ProviderError, minor_units
from shared.payments.refunds import record_refund
from shared.settings import Settings

log = logging.getLogger(__name__)


class RetryLater(Exception):  # noqa: N818 (an answer, not a failure: "send it again")
    """The event cannot be decided now; the provider must send it again (a webhook answers 503)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def payable(settings: Settings, live: LiveOrder, *, title: str = "", return_url: str = "") -> PayableOrder:
    """What the provider charges: the order's price times its quantity, in the smallest currency unit."""
    currency = settings.payment_currency
    pay_by_ms = int(live.pay_by.timestamp() * 1000) if live.pay_by else 0
    amount = minor_units(live.unit_price * live.quantity, currency)
    return PayableOrder(live.order_id, live.deal_id, live.user_id, amount, currency, pay_by_ms, title, return_url)


@dataclass(frozen=True)
class Decisions:
    """Applies payment events through the gate's once-only decision; ``kick`` asks for a drain of a deal."""

    db: Database
    gate: Gate
    settings: Settings
    provider: PaymentProvider
    kick: Callable[[int], None]
    on_unreplicated: Callable[[], None] = lambda: None

    def apply(self, ev: PaymentEvent) -> str:
        """Decide one event; returns its outcome. RetryLater when it must come again (nothing lost meanwhile)."""
        if ev.order_id is None or ev.deal_id is None or ev.kind in (Kind.OTHER, Kind.OPEN):
            return "ignored"  # not a decision about an order of ours: acknowledged so the provider stops
        if ev.kind is Kind.FAILED:
            r = self.gate.settle(ev.deal_id, "decline", ev.order_id, ev.event_id, ev.payment_id)
            return "ignored" if r.outcome is Settlement.NOT_FOUND else r.outcome.value
        if ev.kind is Kind.CLOSED:
            c = self.gate.close_payment(ev.deal_id, ev.order_id, ev.payment_id)
            if c.kick:
                self.kick(ev.deal_id)
            return "expired" if c.outcome == "expired" else "ignored"
        return self._succeeded(ev)

    def _succeeded(self, ev: PaymentEvent) -> str:
        assert ev.order_id is not None and ev.deal_id is not None
        live = self.gate.find_order(ev.order_id, ev.deal_id)
        if live is not None:
            due = payable(self.settings, live)
            if (ev.amount_minor, ev.currency) != (due.amount_minor, due.currency):
                # Not what this order costs: never marked paid, and the money goes back.
                self.refund(ev, "amount_mismatch")
                return "refund"
        r = self.gate.settle(ev.deal_id, "pay", ev.order_id, ev.event_id, ev.payment_id)
        if r.kick:
            self.kick(ev.deal_id)
        if not r.replicated:
            # Decided on the primary, but no replica confirmed it in time: a failover now could lose it. The
            # resend is a duplicate if the decision survived and decides it once more if it did not (and any
            # refund it owes is made then).
            self.on_unreplicated()
            raise RetryLater("unavailable", "The payment was recorded but not yet replicated; send it again.")
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
            reason = self.decided_in_database(ev)
            if reason is None:
                return "duplicate"  # the payment that paid this order, delivered again after its deal retired
        if reason is not None:
            self.refund(ev, reason)
        return r.outcome.value if r.outcome is not Settlement.DUPLICATE else "duplicate"

    def decided_in_database(self, ev: PaymentEvent) -> str | None:
        """Why to refund a success for an order the gate does not hold; None when it is the order's own payment.

        Why only for a retired deal: a retired deal's gate keys are gone for good and nothing of it awaits
        payment (shared/lua/retire.lua), so its PostgreSQL rows are final. A deal that is not retired and not in the
        gate was lost by Redis (a restart, a failover to an empty node) and will be rebuilt from PostgreSQL
        with its unpaid orders: deciding now would refund a valid payment that the rebuilt gate could accept,
        so the provider is asked to send the event again (503).
        """
        assert ev.order_id is not None and ev.deal_id is not None
        with self.db.read() as s:
            deal = s.get(Deal, ev.deal_id)
            row = s.get(Order, uuid.UUID(ev.order_id))
            retired = deal is not None and deal.retired_at is not None
            status, paid_by = (row.status, row.payment_id) if row is not None else (None, None)
        if status == "paid":
            return None if paid_by == ev.payment_id else "duplicate_payment"
        if status in ("expired", "canceled"):
            return status  # final wherever the deal is: the units went back
        if deal is None or (status is None and (retired or self.gate.live(ev.deal_id) is not None)):
            return "unknown_order"  # no such deal, or a deal that holds (or held) no such order
        if retired:
            return "no_window"
        raise RetryLater("deal_not_loaded", "The order's deal is being restored; send the event again.")

    def refund(self, ev: PaymentEvent, reason: str) -> None:
        """Give the payment back and report it; a provider error is RetryLater, so the event comes again."""
        assert ev.order_id is not None and ev.deal_id is not None
        try:
            refund_id = self.provider.refund(ev.payment_id, ev.order_id, ev.amount_minor, reason)
        except ProviderError as exc:
            log.error("refund of %s for order %s failed (%s); it is retried", ev.payment_id, ev.order_id, exc)
            raise RetryLater("refund_pending", "The refund could not be made yet; send the event again.") from None
        record_refund(
            self.db,
            order_id=ev.order_id,
            deal_id=ev.deal_id,
            provider=self.provider.name,
            payment_id=ev.payment_id,
            refund_id=refund_id,
            amount_minor=ev.amount_minor,
            currency=ev.currency or self.settings.payment_currency,
            reason=reason,
            event_id=ev.event_id,
        )
