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
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PRICE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?")

# One multi-row INSERT per batch: the arrays travel as 5 parameters, whatever the batch size.
# ON CONFLICT DO NOTHING makes a redelivered entry (killed after the commit, before the XACK) a no-op,
# and leaves a row that a cancel wrote first (its order was in a dead worker's batch) canceled.
_INSERT_ORDERS = text(
    """
    INSERT INTO orders (id, deal_id, user_id, quantity, unit_price, status, admitted_at, persisted_at)
    SELECT t.id, :deal_id, t.user_id, t.quantity, t.unit_price, 'confirmed',
           to_timestamp(t.ts / 1000.0::float8), now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:users AS bigint[]), CAST(:qtys AS integer[]),
                CAST(:prices AS numeric[]), CAST(:ts AS bigint[])) AS t(id, user_id, quantity, unit_price, ts)
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
    canceled_ms: int | None
    fields: dict[str, str]


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
    """Turn stream fields (``t, id, u, q, p, ts[, ct]``) into a typed row."""
    try:
        kind = fields["t"]
        if kind not in (ORDER, CANCEL):
            raise ValueError(f"unknown entry type {kind!r}")
        order_id = fields["id"].lower()
        if not _UUID.fullmatch(order_id):
            raise ValueError(f"order id {fields['id']!r} is not a UUID")
        price = fields["p"]
        if not _PRICE.fullmatch(price):
            raise ValueError(f"price {price!r} is not a positive decimal")
        return OutboxRow(
            entry_id,
            kind,
            order_id,
            int(fields["u"]),
            int(fields["q"]),
            price,
            int(fields["ts"]),
            int(fields["ct"]) if kind == CANCEL else None,
            fields,
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


def write_rows(session: Session, deal_id: int, rows: list[OutboxRow]) -> tuple[int, int]:
    """Write orders then cancels, each kind in one statement; returns (orders inserted, rows canceled)."""
    orders: dict[str, OutboxRow] = {}
    cancels: dict[str, OutboxRow] = {}
    for row in rows:
        # One row per id per statement: ON CONFLICT DO UPDATE may not touch the same row twice.
        (orders if row.kind == ORDER else cancels).setdefault(row.order_id, row)
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
    return inserted, canceled
