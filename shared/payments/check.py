"""The check job: open payments near or past their deadline are looked up at the provider and decided.

Webhooks get lost (a provider gives up redelivering, an endpoint is down), so no decision waits on one. Beat
runs this every few seconds; what the provider answers goes through the same decision as a webhook. An
order past pay_by with an open payment is held by the gate (shared/lua/settle.lua) until this job has asked: a
success is kept, otherwise the payment is closed at the provider first and only then the order expires, so
no success can come after the expiry unless the provider stayed unreachable for the whole hold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from shared.clock import now_ms
from shared.payments.base import Kind, Payment, ProviderError
from shared.payments.decision import Decisions, RetryLater, payable

log = logging.getLogger(__name__)

CHECK_BATCH = 50  # open payments looked up per deal and pass: each is a provider call


@dataclass
class CheckReport:
    """What one pass decided: order id -> outcome; errors: order id -> why it waits for the next pass."""

    decided: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def check_payments(
    decisions: Decisions, deal_ids: list[int] | None = None, budget_s: float = 20.0, batch: int = CHECK_BATCH
) -> CheckReport:
    """One pass over the live deals' open payments due within the look-ahead."""
    report = CheckReport()
    gate, settings = decisions.gate, decisions.settings
    deadline = time.monotonic() + budget_s
    for deal_id in gate.live_deal_ids() if deal_ids is None else deal_ids:
        now = now_ms()
        for op in gate.open_payments_due(deal_id, now + settings.payment_check_ahead_seconds * 1000, batch):
            if time.monotonic() >= deadline:
                return report
            live = gate.find_order(op.order_id, deal_id)
            payment = Payment.from_record(op.record)
            if live is None or live.state != "accepted" or payment.provider != decisions.provider.name:
                continue
            order = payable(settings, live)
            try:
                ev = decisions.provider.look_up(payment, order)
                if ev.kind is not Kind.SUCCEEDED and now_ms() >= op.pay_by_ms:
                    # Its time is up and the provider holds no success: close it there first, so none can
                    # follow; a success that came in between is what close answers, and it is kept.
                    ev = decisions.provider.close(payment, order)
                if ev.kind in (Kind.SUCCEEDED, Kind.CLOSED):
                    report.decided[op.order_id] = decisions.apply(ev)
            except (ProviderError, RetryLater) as exc:
                log.warning("payment check of order %s: %s; next pass", op.order_id, exc)
                report.errors[op.order_id] = str(exc)[:200]
    return report
