"""Outbox entries: parsing what the Lua scripts XADD, and writing them to PostgreSQL in one statement."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

ORDER, CANCEL = "o", "c"
# Decisions of lua/settle.lua (deals with a payment window): the order was paid, or expired unpaid.
PAID, EXPIRED = "p", "x"
KINDS = (ORDER, CANCEL, PAID, EXPIRED)
# Kinds that give the order's units back (reconcile counts them like a cancel).
RELEASING = (CANCEL, EXPIRED)
_PAYMENT_ID = re.compile(r"[A-Za-z0-9_\-]{1,255}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PRICE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?")

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


class OutboxRow(NamedTuple):
    """One parsed outbox entry: an order (``kind='o'``) or a cancel (``kind='c'``).

    A NamedTuple and validated strings rather than UUID and Decimal objects: a batch parses a thousand of
    these, and PostgreSQL parses the text again anyway.
    """

    entry_id: str
    kind: str
    order_id: str  # canonical lowercase UUID
    user_id: int
    quantity: int
    unit_price: str  # digits with an optional fraction
    admitted_ms: int
    canceled_ms: int | None  # cancels: when; payment decisions (paid, expired): when decided
    fields: dict[str, str]
    pay_by_ms: int | None = None  # orders of a deal with a payment window
    payment_id: str = ""  # paid: the provider's payment


@dataclass(frozen=True)
class Unparsable:
    """An entry that cannot become a row at all (hand-written or corrupted)."""

    entry_id: str
    fields: dict[str, str]
    reason: str


def synthetic_order_id(deal_id: int, entry_id: str) -> str:
    """A stable id for an entry without a usable order id, so it can still be dead-lettered once."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"flashdeal:outbox:{deal_id}:{entry_id}"))


def parse_entry(entry_id: str, fields: dict[str, str]) -> OutboxRow | Unparsable:
    """Turn stream fields (``t, id, u, q, p, ts[, ct][, pb][, pid]``) into a typed row."""
    try:
        kind = fields["t"]
        if kind not in KINDS:
            raise ValueError(f"unknown entry type {kind!r}")
        order_id = fields["id"].lower()
        if not _UUID.fullmatch(order_id):
            raise ValueError(f"order id {fields['id']!r} is not a UUID")
        price = fields["p"]
        if not _PRICE.fullmatch(price):
            raise ValueError(f"price {price!r} is not a positive decimal")
        payment_id = fields.get("pid", "")
        if payment_id and not _PAYMENT_ID.fullmatch(payment_id):
            raise ValueError(f"payment id {payment_id!r} is not a provider id")
        return OutboxRow(
            entry_id,
            kind,
            order_id,
            int(fields["u"]),
            int(fields["q"]),
            price,
            int(fields["ts"]),
            int(fields["ct"]) if kind != ORDER else None,
            fields,
            int(fields["pb"]) if fields.get("pb") else None,
            payment_id,
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        return Unparsable(entry_id, dict(fields), f"unparsable outbox entry: {type(exc).__name__}: {exc}")


def row_from_payload(entry_id: str, payload: dict[str, str]) -> OutboxRow | Unparsable:
    """Rebuild a row from a dead letter's stored payload."""
    return parse_entry(entry_id, payload)


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
