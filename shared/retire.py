"""Retiring ended deals: once everything is persisted their gate keys leave Redis, and PostgreSQL serves them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from shared.cache import invalidate_deal
from shared.db import Database
from shared.gate import Gate, RetireVerdict
from shared.models import Deal
from shared.settings import default_of

RETIRE_BATCH = 100  # deals per pass: a shop upgraded with months of ended deals catches up over a few passes


@dataclass
class RetireReport:
    """What one retire pass did."""

    retired: list[int] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # deal -> why not yet (open, outbox, pending)


def retire_deal(db: Database, gate: Gate, deal_id: int) -> RetireVerdict:
    """Retire one ended deal if nothing of it is still in flight; safe to run twice or concurrently.

    Order matters. PostgreSQL marks the deal first, Redis deletes its keys second: a crash in between
    leaves a deal marked retired whose keys are still in Redis, which the next pass finishes (see
    ``retire_ended``). The other order could leave an ended deal gone from Redis but not marked,
    which the scheduler's rebuild-after-data-loss rule cannot tell from a deal Redis lost.
    """
    # A cheap look first, so a deal with entries in flight is not marked at every pass.
    verdict = gate.retire(deal_id, delete=False)
    if not verdict.done:
        return verdict
    with db.transaction() as s:
        marked = s.scalar(
            update(Deal)
            .where(Deal.id == deal_id, Deal.status == "ended")
            .values(retired_at=func.coalesce(Deal.retired_at, func.now()))
            .returning(Deal.id)
        )
    if marked is None:
        return RetireVerdict("open", 0)  # not ended in PostgreSQL (the gate alone says nothing final)
    return _delete_keys(gate, deal_id)


def _delete_keys(gate: Gate, deal_id: int) -> RetireVerdict:
    """The atomic step: retire.lua checks again inside Redis and deletes; then the deal leaves the live set."""
    # Why check again inside the script: between the look above and here a worker may have read an entry
    # (pending), or an admin's dead-letter drop may have written a cancel; the script sees either and
    # refuses, and the deal stays marked with its keys until a later pass finds it settled.
    verdict = gate.retire(deal_id, delete=True)
    if verdict.done:
        # Another slot than the deal's keys (on a cluster), so not inside the script: a crash before this
        # line leaves the id in the live set, and the next pass removes it.
        gate.redis.srem(gate.keys.live_deals, deal_id)
        # The cached detail's remaining stock was computed during the sale; PostgreSQL's is final now.
        invalidate_deal(gate.redis, gate.keys, deal_id)
    return verdict


def retire_ended(
    db: Database, gate: Gate, after_seconds: int = default_of("deal_retire_after_seconds"), batch: int = RETIRE_BATCH
) -> RetireReport:
    """One pass (beat's tick runs it every second): retire deals ended ``after_seconds`` ago and settled.

    ``after_seconds`` keeps an ended deal's gate a while, so a client retrying an order just after the
    end still gets the first answer for its Idempotency-Key instead of a refusal.
    """
    report = RetireReport()
    cutoff = datetime.now(UTC) - timedelta(seconds=after_seconds)
    live = gate.live_deal_ids()
    with db.read() as s:
        # Served by the partial index ix_deals_ended_unretired: only deals not retired yet are in it.
        due = list(
            s.scalars(
                select(Deal.id)
                .where(Deal.status == "ended", Deal.retired_at.is_(None), Deal.ends_at <= cutoff)
                .order_by(Deal.ends_at)
                .limit(batch)
            )
        )
        # Marked by a pass that stopped before the keys (or the live-set entry) were gone.
        stray = select(Deal.id).where(Deal.id.in_(live), Deal.retired_at.is_not(None))
        unfinished = list(s.scalars(stray)) if live else []
    for deal_id in due:
        _note(report, deal_id, retire_deal(db, gate, deal_id))
    for deal_id in unfinished:
        _note(report, deal_id, _delete_keys(gate, deal_id))
    return report


def _note(report: RetireReport, deal_id: int, verdict: RetireVerdict) -> None:
    if verdict.done:
        report.retired.append(deal_id)
    else:
        report.waiting[deal_id] = f"{verdict.outcome} {verdict.count}".strip()
