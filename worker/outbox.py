"""Outbox rows to PostgreSQL: each kind of a batch in one statement (parsing is shared/outbox_entry.py)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from shared.outbox_entry import CANCEL, EXPIRED, ORDER, PAID, OutboxRow

# One multi-row INSERT per batch: the arrays travel as 5 parameters, whatever the batch size.
# ON CONFLICT DO NOTHING makes a redelivered entry (killed after the commit, before the XACK) a no-op,
# and leaves a row that a cancel wrote first (its order was in a dead worker's batch) canceled.
_INSERT_ORDERS = text(
    """
    INSERT INTO orders (id, deal_id, user_id, quantity, unit_price, status, admitted_at, persisted_at, pay_by)
    SELECT t.id, :deal_id, t.user_id, t.quantity, t.unit_price, 'confirmed',
           to_timestamp(t.ts / 1000.0::float8), now(), to_timestamp(t.pb / 1000.0::float8)
    FROM unnest(CAST(:ids AS uuid[]), CAST(:users AS bigint[]), CAST(:qtys AS integer[]),
                CAST(:prices AS numeric[]), CAST(:ts AS bigint[]), CAST(:pbs AS bigint[]))
         AS t(id, user_id, quantity, unit_price, ts, pb)
    ON CONFLICT (id) DO NOTHING
    """
)

# A cancel is an upsert: it inserts the row already canceled when its order is not written yet, and
# otherwise flips it; the WHERE makes a second delivery of the same cancel change nothing.
_UPSERT_CANCELS = text(
    """
    INSERT INTO orders (id, deal_id, user_id, quantity, unit_price, status, admitted_at, persisted_at, canceled_at)
    SELECT t.id, :deal_id, t.user_id, t.quantity, t.unit_price, 'canceled',
           to_timestamp(t.ts / 1000.0::float8), now(), to_timestamp(t.ct / 1000.0::float8)
    FROM unnest(CAST(:ids AS uuid[]), CAST(:users AS bigint[]), CAST(:qtys AS integer[]),
                CAST(:prices AS numeric[]), CAST(:ts AS bigint[]), CAST(:cts AS bigint[]))
         AS t(id, user_id, quantity, unit_price, ts, ct)
    ON CONFLICT (id) DO UPDATE SET status = 'canceled', canceled_at = EXCLUDED.canceled_at
    WHERE orders.status <> 'canceled'
    """
)


# A payment decision is an upsert like a cancel: it writes the row already paid / expired when its order is not
# written yet, and otherwise moves it on from confirmed. The gate decides one end per order (paid, expired or
# canceled, never two), so the WHERE only makes a second delivery of the same decision change nothing.
_UPSERT_SETTLED = text(
    """
    INSERT INTO orders (id, deal_id, user_id, quantity, unit_price, status, admitted_at, persisted_at, pay_by,
                        paid_at, expired_at, payment_id)
    SELECT t.id, :deal_id, t.user_id, t.quantity, t.unit_price, t.status,
           to_timestamp(t.ts / 1000.0::float8), now(), to_timestamp(t.pb / 1000.0::float8),
           CASE WHEN t.status = 'paid' THEN to_timestamp(t.ct / 1000.0::float8) END,
           CASE WHEN t.status = 'expired' THEN to_timestamp(t.ct / 1000.0::float8) END,
           NULLIF(t.pid, '')
    FROM unnest(CAST(:ids AS uuid[]), CAST(:users AS bigint[]), CAST(:qtys AS integer[]),
                CAST(:prices AS numeric[]), CAST(:ts AS bigint[]), CAST(:pbs AS bigint[]), CAST(:cts AS bigint[]),
                CAST(:statuses AS text[]), CAST(:pids AS text[]))
         AS t(id, user_id, quantity, unit_price, ts, pb, ct, status, pid)
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, pay_by = EXCLUDED.pay_by, paid_at = EXCLUDED.paid_at,
        expired_at = EXCLUDED.expired_at, payment_id = EXCLUDED.payment_id
    WHERE orders.status IN ('accepted', 'confirmed')
    """
)
_SETTLED_STATUS = {PAID: "paid", EXPIRED: "expired"}


def is_transient(exc: DBAPIError) -> bool:
    """True when the database is unreachable or the transaction lost a race: retry the whole batch later."""
    return isinstance(exc, OperationalError | InterfaceError) or bool(exc.connection_invalidated)


def reason_of(exc: BaseException) -> str:
    """A short, readable reason for the dead-letter table."""
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"{type(orig).__name__}: {first}"[:500]


def _array(values: Iterable[object]) -> str:
    """A PostgreSQL array literal; cheaper than adapting a list value by value (validated UUIDs, ints, decimals)."""
    return "{" + ",".join(map(str, values)) + "}"


def _nullable(values: Iterable[int | None]) -> str:
    """A bigint array literal where None is SQL NULL."""
    return _array("NULL" if v is None else v for v in values)


def write_rows(session: Session, deal_id: int, rows: list[OutboxRow]) -> tuple[int, int]:
    """Write orders, cancels, then payment decisions, each kind in one statement; returns (inserted, canceled)."""
    orders: dict[str, OutboxRow] = {}
    cancels: dict[str, OutboxRow] = {}
    settled: dict[str, OutboxRow] = {}
    by_kind = {ORDER: orders, CANCEL: cancels, PAID: settled, EXPIRED: settled}
    for row in rows:
        # One row per id per statement: ON CONFLICT DO UPDATE may not touch the same row twice.
        by_kind[row.kind].setdefault(row.order_id, row)
    inserted = canceled = 0
    # Orders before cancels: an order and its cancel in the same batch end up canceled.
    if orders:
        o = sorted(orders.values(), key=lambda r: r.order_id)
        inserted = session.execute(
            _INSERT_ORDERS,
            {
                "deal_id": deal_id,
                "ids": _array(r.order_id for r in o),
                "users": _array(r.user_id for r in o),
                "qtys": _array(r.quantity for r in o),
                "prices": _array(r.unit_price for r in o),
                "ts": _array(r.admitted_ms for r in o),
                "pbs": _nullable(r.pay_by_ms for r in o),
            },
        ).rowcount
    if cancels:
        c = sorted(cancels.values(), key=lambda r: r.order_id)
        canceled = session.execute(
            _UPSERT_CANCELS,
            {
                "deal_id": deal_id,
                "ids": _array(r.order_id for r in c),
                "users": _array(r.user_id for r in c),
                "qtys": _array(r.quantity for r in c),
                "prices": _array(r.unit_price for r in c),
                "ts": _array(r.admitted_ms for r in c),
                "cts": _array(r.canceled_ms for r in c),
            },
        ).rowcount
    if settled:
        # After orders and cancels: an order and its decision in the same batch end up decided.
        d = sorted(settled.values(), key=lambda r: r.order_id)
        session.execute(
            _UPSERT_SETTLED,
            {
                "deal_id": deal_id,
                "ids": _array(r.order_id for r in d),
                "users": _array(r.user_id for r in d),
                "qtys": _array(r.quantity for r in d),
                "prices": _array(r.unit_price for r in d),
                "ts": _array(r.admitted_ms for r in d),
                "pbs": _nullable(r.pay_by_ms for r in d),
                "cts": _array(r.canceled_ms for r in d),
                "statuses": _array(_SETTLED_STATUS[r.kind] for r in d),
                "pids": _array(f'"{r.payment_id}"' for r in d),  # quoted: the pattern admits no quote or backslash
            },
        )
    return inserted, canceled
