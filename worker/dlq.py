"""Dead letters: outbox entries PostgreSQL keeps refusing, held with their reason until retried or dropped."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.clock import now_ms
from shared.db import Database
from shared.gate import Cancellation, Gate
from shared.models import DeadLetter
from shared.outbox_entry import CANCEL, ORDER, PAID, RELEASING, OutboxRow, Unparsable, parse_payload, synthetic_order_id
from worker.outbox import is_transient, reason_of, write_rows

# One dead letter per order. A decision that fails too (cancel, payment, expiry) is merged into its order's
# letter, and the other way round when the decision got there first: the merged payload keeps the decision's
# kind and fields (t=c/p/x, ct, pi), so the letter says how the order ended. Why the decision wins: the gate
# decides one end per order and writes it after the order itself; the order's entry adds nothing to it
# (``||`` keeps the right-hand side's value of a key both sides hold).
_UPSERT_DEAD_LETTER = text(
    """
    INSERT INTO dead_letters (order_id, deal_id, entry_id, payload, reason, attempts)
    VALUES (CAST(:order_id AS uuid), :deal_id, :entry_id, CAST(:payload AS jsonb), :reason, :attempts)
    ON CONFLICT (order_id) DO UPDATE SET
        payload = CASE WHEN EXCLUDED.payload->>'t' = 'o' THEN EXCLUDED.payload || dead_letters.payload
                       ELSE dead_letters.payload || EXCLUDED.payload END,
        entry_id = EXCLUDED.entry_id,
        reason = EXCLUDED.reason,
        attempts = dead_letters.attempts + EXCLUDED.attempts
    """
)

_HAS_ORDER_OR_LETTER = text(
    "SELECT EXISTS (SELECT 1 FROM orders WHERE id = CAST(:id AS uuid))"
    " OR EXISTS (SELECT 1 FROM dead_letters WHERE order_id = CAST(:id AS uuid))"
)


@dataclass(frozen=True)
class DeadLetterView:
    """A dead letter as ops and admins see it."""

    order_id: str
    deal_id: int
    entry_id: str
    kind: str
    payload: dict[str, str]
    reason: str
    attempts: int
    created_at: datetime | None

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (CLI, task results)."""
        return {
            "order_id": self.order_id,
            "deal_id": self.deal_id,
            "entry_id": self.entry_id,
            "kind": self.kind,
            "payload": self.payload,
            "reason": self.reason,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


@dataclass(frozen=True)
class RetryReport:
    """What a retry of the dead letters did."""

    retried: int
    persisted: list[str]
    still_failing: dict[str, str]

    def __len__(self) -> int:
        """How many letters became rows."""
        return len(self.persisted)


@dataclass(frozen=True)
class DropResult:
    """What dropping one dead letter did."""

    order_id: str
    found: bool
    stock_returned: bool
    gate_outcome: str | None
    kept: str = ""  # why the letter was kept instead (a paid order, a cancel no replica confirmed)

    def __bool__(self) -> bool:
        """True when there was a letter to drop."""
        return self.found

    @property
    def dropped(self) -> bool:
        """True when the letter was deleted."""
        return self.found and not self.kept


def dead_letter(
    session: Session,
    deal_id: int,
    entry_id: str,
    order_id: str,
    payload: dict[str, str],
    reason: str,
    attempts: int,
) -> None:
    """Store (or merge into) the dead letter of one order, inside the caller's transaction."""
    params = {
        "order_id": order_id,
        "deal_id": deal_id,
        "entry_id": entry_id,
        "payload": json.dumps(payload, sort_keys=True),
        "reason": reason,
        "attempts": attempts,
    }
    try:
        with session.begin_nested():
            session.execute(_UPSERT_DEAD_LETTER, params)
    except DBAPIError as exc:
        if is_transient(exc):
            raise
        # Why: a payload PostgreSQL cannot store (e.g. a NUL character) must not block the whole outbox; keep
        # a printable copy instead, so the entry is still acked and an operator still sees what it was.
        params["payload"] = json.dumps({"t": str(payload.get("t", "?")), "raw": repr(payload)[:4000]})
        params["reason"] = f"{reason} (payload stored as repr: {reason_of(exc)})"[:1000]
        session.execute(_UPSERT_DEAD_LETTER, params)


def dead_letter_entry(
    session: Session,
    deal_id: int,
    item: OutboxRow | Unparsable,
    reason: str,
    attempts: int,
    canceled_in_gate: Callable[[str], bool],
) -> bool:
    """Dead-letter one refused entry; False when there is nothing to keep (see the cancel case below)."""
    if isinstance(item, Unparsable):
        oid = _order_id_or_synthetic(deal_id, item)
        dead_letter(session, deal_id, item.entry_id, oid, item.fields, reason, attempts)
        return True
    if item.kind == CANCEL:
        has_row = session.execute(_HAS_ORDER_OR_LETTER, {"id": item.order_id}).scalar()
        if not has_row:
            # The order is neither written nor dead-lettered: an admin dropped it (the gate already gave the
            # stock back), or its entry is still in flight, and then it is dead-lettered as canceled below
            # because the gate's record says so. Either way there is nothing left to hold.
            return False
    payload = dict(item.fields)
    if item.kind == ORDER and canceled_in_gate(item.order_id):
        # The buyer canceled after admission: the letter must not claim the stock the gate gave back. The
        # cancel's own entry (with its time) may come later and merge in; until then "now" is the best bound.
        payload["t"] = CANCEL
        payload.setdefault("ct", str(now_ms()))
    dead_letter(session, deal_id, item.entry_id, item.order_id, payload, reason, attempts)
    return True


def _order_id_or_synthetic(deal_id: int, item: Unparsable) -> str:
    try:
        return str(uuid.UUID(str(item.fields.get("id", ""))))
    except ValueError:
        return synthetic_order_id(deal_id, item.entry_id)


def list_dead_letters(db: Database, deal_id: int | None = None, limit: int = 100) -> list[DeadLetterView]:
    """The oldest dead letters first, optionally of one deal."""
    stmt = select(DeadLetter).order_by(DeadLetter.id).limit(limit)
    if deal_id is not None:
        stmt = stmt.where(DeadLetter.deal_id == deal_id)
    with db.read() as s:
        return [
            DeadLetterView(
                order_id=str(d.order_id),
                deal_id=d.deal_id,
                entry_id=d.entry_id,
                kind=str(d.payload.get("t", "?")),
                payload=dict(d.payload),
                reason=d.reason,
                attempts=d.attempts,
                created_at=d.created_at,
            )
            for d in s.scalars(stmt)
        ]


def retry_dead_letters(db: Database, deal_id: int | None = None, limit: int = 1000) -> RetryReport:
    """Re-insert dead letters one by one; a letter whose row is written now is deleted in the same transaction."""
    persisted: list[str] = []
    failing: dict[str, str] = {}
    stmt = select(DeadLetter).order_by(DeadLetter.id).limit(limit).with_for_update(skip_locked=True)
    if deal_id is not None:
        stmt = stmt.where(DeadLetter.deal_id == deal_id)
    with db.transaction() as s:
        letters = list(s.scalars(stmt))
        for letter in letters:
            row = parse_payload(letter.entry_id, letter.payload)
            if isinstance(row, Unparsable):
                failing[str(letter.order_id)] = row.reason
                continue
            try:
                # A savepoint per letter: one refusal does not undo the letters already written.
                with s.begin_nested():
                    write_rows(s, letter.deal_id, _as_rows(row))
            except DBAPIError as exc:
                if is_transient(exc):
                    raise
                letter.attempts += 1
                letter.reason = reason_of(exc)
                failing[str(letter.order_id)] = letter.reason
                continue
            s.delete(letter)
            persisted.append(str(letter.order_id))
    return RetryReport(retried=len(letters), persisted=persisted, still_failing=failing)


def _as_rows(row: OutboxRow) -> list[OutboxRow]:
    """A canceled letter is written as its order then its cancel, like the outbox would have."""
    if row.kind != CANCEL:
        return [row]
    order = OutboxRow(
        row.entry_id, "o", row.order_id, row.user_id, row.quantity, row.unit_price, row.admitted_ms, None, {}
    )
    return [order, row]


def drop_dead_letter(db: Database, gate: Gate, order_id: str) -> DropResult:
    """Give the order's stock back through the gate and delete its dead letter.

    The gate's cancel is idempotent (a second cancel returns ``already_canceled``), so the stock comes
    back exactly once even if this is run twice or the order was canceled before.
    """
    oid = uuid.UUID(order_id)
    with db.transaction() as s:
        letter = s.scalar(select(DeadLetter).where(DeadLetter.order_id == oid).with_for_update())
        if letter is None:
            return DropResult(order_id, found=False, stock_returned=False, gate_outcome=None)
        outcome: str | None = None
        kind = letter.payload.get("t")
        if kind == PAID:
            # The buyer paid: the letter may be the order's only trace in PostgreSQL. Never dropped; retried.
            return DropResult(order_id, True, False, None, kept="paid: fix the cause and run dlq retry")
        if kind not in RELEASING:
            # Why before the delete: if the gate call fails the letter stays, and the drop can be run again.
            res = gate.cancel(letter.deal_id, str(oid), 0, admin=True, force=True)
            outcome = res.outcome.value
            if res.outcome is Cancellation.PAID:
                return DropResult(order_id, True, False, outcome, kept="paid: fix the cause and run dlq retry")
            if not res.replicated:
                # Given back on the primary alone: a failover could undo it while the letter is gone.
                return DropResult(order_id, True, False, outcome, kept="the cancel is not replicated yet: run again")
        s.execute(delete(DeadLetter).where(DeadLetter.id == letter.id))
    return DropResult(order_id, found=True, stock_returned=outcome == Cancellation.CANCELED, gate_outcome=outcome)
