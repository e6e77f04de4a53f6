"""Refunds are reported: each one is a row in ``refunds`` (one per payment) and a warning in the log."""

from __future__ import annotations

import logging

from sqlalchemy import text

from shared.db import Database

log = logging.getLogger(__name__)

_INSERT = text(
    """
    INSERT INTO refunds (order_id, deal_id, provider, payment_id, refund_id, amount_minor, currency, reason, event_id)
    VALUES (CAST(:order_id AS uuid), :deal_id, :provider, :payment_id, :refund_id, :amount, :currency, :reason,
            :event_id)
    ON CONFLICT (payment_id) DO NOTHING
    """
)


def record_refund(
    db: Database,
    *,
    order_id: str,
    deal_id: int,
    provider: str,
    payment_id: str,
    refund_id: str,
    amount_minor: int,
    currency: str,
    reason: str,
    event_id: str,
) -> bool:
    """Write the refund's row once per payment; True when this call wrote it (a replay writes nothing)."""
    with db.transaction() as s:
        written = s.execute(
            _INSERT,
            {
                "order_id": order_id,
                "deal_id": deal_id,
                "provider": provider,
                "payment_id": payment_id,
                "refund_id": refund_id,
                "amount": amount_minor,
                "currency": currency,
                "reason": reason,
                "event_id": event_id,
            },
        ).rowcount
    if written:
        log.warning(
            "refunded %s payment %s of order %s (deal %s, %s %s): %s",
            provider,
            payment_id,
            order_id,
            deal_id,
            amount_minor,
            currency,
            reason,
        )
    return bool(written)
