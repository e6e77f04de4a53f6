"""Reconcile: compare each live deal's Redis stock with what PostgreSQL and the outbox say it must be."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import redis
from sqlalchemy import select, text

from shared.clock import ms_to_dt, server_ms
from shared.db import Database
from shared.keys import Keys
from shared.models import Deal
from shared.outbox_entry import CANCEL, ORDER, RELEASING, OutboxRow, parse_entry, parse_payload

# Rows already out of the outbox at the snapshot, grouped by buyer. Rows admitted after the snapshot are left
# out (the snapshot's stock does not include them yet), and a row canceled after it still held its stock.
# ``released``: rows whose decision (a cancel or an expiry before the snapshot) is held in a dead letter.
_HELD_BY_USER = text(
    """
    SELECT user_id, COALESCE(SUM(quantity), 0) FROM orders
    WHERE deal_id = :deal_id AND NOT (id = ANY(CAST(:ids AS uuid[]))) AND NOT (id = ANY(CAST(:released AS uuid[])))
      AND admitted_at < :snap
      AND (status IN ('accepted', 'confirmed', 'paid') OR (status = 'canceled' AND canceled_at >= :snap)
           OR (status = 'expired' AND expired_at >= :snap))
    GROUP BY user_id
    """
)
_CANCELED_BEFORE = text(
    "SELECT id FROM orders WHERE id = ANY(CAST(:ids AS uuid[]))"
    " AND ((status = 'canceled' AND canceled_at < :snap) OR (status = 'expired' AND expired_at < :snap))"
)
# Each letter, and whether its order has a row (then the row is what holds the units, not the letter).
_LETTERS = text(
    "SELECT d.order_id, d.payload, o.id IS NOT NULL FROM dead_letters d LEFT JOIN orders o ON o.id = d.order_id"
    " WHERE d.deal_id = :deal_id"
)


class ReconcileBusy(RuntimeError):
    """The stock kept moving while a repair was being computed; try again in a quieter moment."""


@dataclass(frozen=True)
class DealReconcile:
    """One deal: Redis against the expected remaining stock."""

    deal_id: int
    total: int
    redis_remaining: int | None
    expected_remaining: int
    persisted_qty: int
    outbox_qty: int
    outbox_cancels: int
    dead_letter_qty: int
    buyers_mismatched: int
    drift: int | None
    repaired: bool = False
    # When lua/load_deal.lua last set this deal's stock, and how much PostgreSQL held then: a (re)build
    # after Redis lost the deal. Orders acknowledged before it and missing from PostgreSQL were lost.
    loaded_at_ms: int | None = None
    held_at_load: int | None = None

    @property
    def ok(self) -> bool:
        """True when the stock and the buyers' totals match."""
        return self.drift == 0 and self.buyers_mismatched == 0

    @property
    def rebuilt_note(self) -> str:
        """A note on a deal rebuilt from PostgreSQL after Redis lost it (empty otherwise)."""
        if not self.held_at_load or self.loaded_at_ms is None:
            return ""
        at = ms_to_dt(self.loaded_at_ms).isoformat(timespec="seconds")
        return (
            f"; rebuilt from PostgreSQL at {at} with {self.held_at_load} sold: orders acknowledged before then "
            "and missing from PostgreSQL were lost with Redis"
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form; ``drift`` is None when the stock key is missing."""
        return asdict(self) | {"ok": self.ok}


@dataclass(frozen=True)
class ReconcileReport:
    """Every reconciled deal."""

    deals: list[DealReconcile] = field(default_factory=list)

    def __iter__(self) -> Iterator[DealReconcile]:
        return iter(self.deals)

    def __len__(self) -> int:
        return len(self.deals)

    @property
    def drifted(self) -> list[DealReconcile]:
        """Deals whose Redis state did not match (before any repair)."""
        return [d for d in self.deals if not d.ok]

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (task results, CLI --json)."""
        return {"deals": [d.as_dict() for d in self.deals], "drifted": [d.deal_id for d in self.drifted]}


@dataclass
class _Expected:
    remaining: int
    held_by_user: dict[str, int]
    persisted_qty: int
    outbox_qty: int
    outbox_cancels: int
    dead_letter_qty: int


def reconcile(
    db: Database, rds: redis.Redis, keys: Keys, deal_ids: list[int] | None = None, repair: bool = False
) -> ReconcileReport:
    """Reconcile the given deals, or every deal loaded in Redis; unknown and retired deals are skipped."""
    ids = deal_ids if deal_ids is not None else sorted(int(x) for x in rds.smembers(keys.live_deals))
    return ReconcileReport([r for d in ids if (r := reconcile_deal(db, rds, keys, int(d), repair)) is not None])


def reconcile_deal(
    db: Database, rds: redis.Redis, keys: Keys, deal_id: int, repair: bool = False, tries: int = 5
) -> DealReconcile | None:
    """Reconcile one deal; None if PostgreSQL does not know it, or it retired (nothing of it is in Redis)."""
    with db.read() as s:
        found = s.execute(select(Deal.total_stock, Deal.retired_at).where(Deal.id == deal_id)).first()
    if found is None or found.retired_at is not None:
        return None  # a repair must never write a retired deal's stock back into Redis
    total = found.total_stock
    k = keys.deal(deal_id)
    for _ in range(tries):
        with rds.pipeline(transaction=True) as pipe:
            try:
                if repair:
                    # Why WATCH the stock: every admission and cancel moves it, so if EXEC succeeds no order
                    # came or went between our reads and the repair, and the value we write is still right.
                    pipe.watch(k.stock)
                    stock, entries, now = pipe.get(k.stock), pipe.xrange(k.outbox), server_ms(pipe, k.stock)
                    buyers, loaded = pipe.hgetall(k.buyers), pipe.hgetall(k.loaded)
                else:
                    # One MULTI: the stock, the outbox and the clock are one consistent snapshot.
                    pipe.get(k.stock)
                    pipe.xrange(k.outbox)
                    server_ms(pipe, k.stock)
                    pipe.hgetall(k.buyers)
                    pipe.hgetall(k.loaded)
                    stock, entries, now, buyers, loaded = pipe.execute()
                    # Why by hand: redis-py 7.4's cluster MULTI hands back EXEC's replies unparsed (it applies
                    # only its cluster callbacks, not redis.Redis's): HGETALL as a flat list, XRANGE as
                    # nested lists. Parsed here as one Redis's pipeline parses them; a no-op there.
                    entries = [(entry_id, _pairs(fields)) for entry_id, fields in entries]
                    buyers, loaded = _pairs(buyers), _pairs(loaded)
                if stock is None and _retired(db, deal_id):
                    return None  # retired since the check above (marked in PostgreSQL before its keys went)
                snap_ms = int(now)
                exp = _expected(db, deal_id, total, entries, snap_ms)
                current = int(stock) if stock is not None else None
                mismatched = _buyers_mismatched(buyers or {}, exp.held_by_user)
                drift = None if current is None else current - exp.remaining
                repaired = False
                if repair and (drift != 0 or mismatched):
                    pipe.multi()
                    pipe.set(k.stock, exp.remaining)
                    pipe.delete(k.buyers)
                    held = {u: q for u, q in exp.held_by_user.items() if q}
                    if held:
                        pipe.hset(k.buyers, mapping=held)
                    pipe.execute()
                    repaired = True
                return DealReconcile(
                    deal_id=deal_id,
                    total=total,
                    redis_remaining=current,
                    expected_remaining=exp.remaining,
                    persisted_qty=exp.persisted_qty,
                    outbox_qty=exp.outbox_qty,
                    outbox_cancels=exp.outbox_cancels,
                    dead_letter_qty=exp.dead_letter_qty,
                    buyers_mismatched=mismatched,
                    drift=drift,
                    repaired=repaired,
                    loaded_at_ms=int(loaded["at_ms"]) if loaded and "at_ms" in loaded else None,
                    held_at_load=int(loaded["held"]) if loaded and "held" in loaded else None,
                )
            except redis.WatchError:
                continue
    raise ReconcileBusy(f"deal {deal_id}: the stock kept changing during {tries} repair attempts")


def _pairs(reply: dict[str, str] | list[str] | None) -> dict[str, str]:
    """A hash's fields as a dict, from redis-py's parsed dict or the flat ``[field, value, ...]`` reply."""
    if reply is None or isinstance(reply, dict):
        return reply or {}
    it = iter(reply)
    return dict(zip(it, it, strict=True))


def _retired(db: Database, deal_id: int) -> bool:
    with db.read() as s:
        return s.scalar(select(Deal.retired_at).where(Deal.id == deal_id)) is not None


def _expected(db: Database, deal_id: int, total: int, entries: list, snap_ms: int) -> _Expected:
    """total − what is held: orders in the outbox, persisted and not canceled, and dead letters."""
    held: dict[str, int] = defaultdict(int)
    in_outbox: dict[str, OutboxRow] = {}
    canceled: set[str] = set()
    for entry_id, fields in entries:
        row = parse_entry(entry_id, fields or {})
        if not isinstance(row, OutboxRow):
            continue  # never admitted by the gate (hand-written), so it holds no stock
        if row.kind == ORDER:
            in_outbox[row.order_id] = row
        elif row.kind in RELEASING:  # canceled or expired: the units are back (a paid order still holds them)
            canceled.add(row.order_id)
    ids = list(in_outbox.keys() | canceled)
    snap = ms_to_dt(snap_ms)
    # One snapshot for every read: a ``dlq retry`` committing between two of them (a letter becoming a row)
    # would otherwise make the order count twice or not at all, and a repair would write that stock.
    with db.snapshot() as s:
        letters = [(str(oid), payload, has_row) for oid, payload, has_row in s.execute(_LETTERS, {"deal_id": deal_id})]
        # A row whose cancel or expiry (before the snapshot) is dead-lettered: the gate gave its units back.
        released = [oid for oid, payload, has_row in letters if has_row and _released_before(payload, snap_ms)]
        canceled |= {str(i) for i in s.scalars(_CANCELED_BEFORE, {"ids": ids, "snap": snap})}
        persisted_qty = 0
        params = {"deal_id": deal_id, "ids": ids, "released": released, "snap": snap}
        for user_id, qty in s.execute(_HELD_BY_USER, params):
            held[str(user_id)] += int(qty)
            persisted_qty += int(qty)
    outbox_qty = 0
    for oid, row in in_outbox.items():
        if oid not in canceled:
            held[str(row.user_id)] += row.quantity
            outbox_qty += row.quantity
    letter_qty = 0
    for order_id, payload, has_row in letters:
        row = parse_payload("", payload)
        if has_row or order_id in in_outbox or order_id in canceled or not isinstance(row, OutboxRow):
            continue  # a row holds the order's units (counted above) or nothing does
        if row.kind in RELEASING or row.admitted_ms >= snap_ms:
            continue  # canceled or expired: the units are back; paid: held like an order
        held[str(row.user_id)] += row.quantity
        letter_qty += row.quantity
    return _Expected(
        remaining=total - persisted_qty - outbox_qty - letter_qty,
        held_by_user=dict(held),
        persisted_qty=persisted_qty,
        outbox_qty=outbox_qty,
        outbox_cancels=sum(1 for f in (e[1] or {} for e in entries) if f.get("t") == CANCEL),
        dead_letter_qty=letter_qty,
    )


def _released_before(payload: dict[str, str], snap_ms: int) -> bool:
    """True for a letter holding a cancel or an expiry decided before the snapshot."""
    row = parse_payload("", payload)
    return isinstance(row, OutboxRow) and row.kind in RELEASING and (row.canceled_ms or 0) < snap_ms


def _buyers_mismatched(buyers: dict[str, str], held: dict[str, int]) -> int:
    """How many users' totals in Redis differ from the expected ones."""
    users = set(buyers) | {u for u, q in held.items() if q}
    return sum(1 for u in users if int(buyers.get(u, 0) or 0) != held.get(u, 0))
