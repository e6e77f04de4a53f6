"""The history checker: after heal and drain, what PostgreSQL and Redis hold, judged against what clients saw.

As Jepsen's set checker does for a set, per deal: every acknowledged order is in PostgreSQL exactly once,
nothing is there that nobody attempted, no unit is held twice; and the books add up (remaining + held =
stock, no user above the limit, no unit returned twice, no order both paid and expired). Outcomes the
clients could not know (info) and answers that said "unconfirmed" are counted, never dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import text

from faults.history import History, Op
from shared.db import Database
from shared.deals import HOLDING_STATUSES
from shared.gate import Gate

# A run with any of these fails (the README's promises); the others are reported as violations too.
FATAL = ("lost", "duplicated", "oversold")
KINDS = (
    "lost",  # an acknowledged order (202/200 without the unconfirmed header) not in PostgreSQL
    "never_attempted",  # an order in PostgreSQL for a buyer who never tried to buy this deal
    "duplicated",  # one attempt (one Idempotency-Key) held twice, or more orders than attempts could explain
    "oversold",  # PostgreSQL holds more units than the deal's stock
    "stock_mismatch",  # remaining (Redis) + held (PostgreSQL) != stock
    "over_limit",  # one buyer holds more than the per-user limit
    "returned_twice",  # a cancel or expiry gave back more than was taken (stock or the buyer's total)
    "paid_and_expired",  # an order both paid and expired (or expired after an acknowledged payment, no refund)
    "cancel_lost",  # an acknowledged cancel whose order is not canceled in PostgreSQL
    "payment_lost",  # an acknowledged payment whose order is neither paid nor refunded in PostgreSQL
)


@dataclass(frozen=True)
class Row:
    """One order as PostgreSQL holds it."""

    order_id: str
    user_id: int
    quantity: int
    status: str
    paid: bool = False  # paid_at is set
    expired: bool = False  # expired_at is set


@dataclass
class DealState:
    """A deal as the stores hold it after the run: its rules, Redis' stock and buyers, PostgreSQL's rows."""

    deal_id: int
    stock: int
    limit: int
    remaining: int  # the gate's stock key
    buyers: dict[int, int]  # the gate's per-user totals
    rows: list[Row]
    refunded: set[str] = field(default_factory=set)  # order ids with a refund row
    dead_letters: int = 0

    @property
    def held(self) -> int:
        """Units PostgreSQL counts as sold (accepted, confirmed, paid)."""
        return sum(r.quantity for r in self.rows if r.status in HOLDING_STATUSES)


@dataclass(frozen=True)
class Violation:
    """One broken invariant of one deal."""

    kind: str
    deal_id: int
    detail: str


@dataclass
class Report:
    """Counts of the history and every violation found."""

    ops: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, outcome) -> count
    unconfirmed: int = 0  # ok answers that carried the unconfirmed header
    unconfirmed_lost: int = 0  # of those orders, how many PostgreSQL does not hold
    violations: list[Violation] = field(default_factory=list)

    def count(self, kind: str) -> int:
        """How many violations of one kind."""
        return sum(1 for v in self.violations if v.kind == kind)

    @property
    def ok(self) -> bool:
        """No violation at all."""
        return not self.violations

    @property
    def fatal(self) -> bool:
        """A lost acknowledged order, a duplicate or an oversold unit."""
        return any(v.kind in FATAL for v in self.violations)


def read_state(db: Database, gate: Gate, deal_ids: list[int]) -> dict[int, DealState]:
    """Read what PostgreSQL and Redis hold for the deals (call it after heal and drain)."""
    states: dict[int, DealState] = {}
    with db.read() as s:
        for deal_id in deal_ids:
            stock, limit = s.execute(
                text("SELECT total_stock, per_user_limit FROM deals WHERE id = :d"), {"d": deal_id}
            ).one()
            rows = [
                Row(str(r[0]), r[1], r[2], r[3], r[4] is not None, r[5] is not None)
                for r in s.execute(
                    text("SELECT id, user_id, quantity, status, paid_at, expired_at FROM orders WHERE deal_id = :d"),
                    {"d": deal_id},
                )
            ]
            refunded = {
                str(r[0]) for r in s.execute(text("SELECT order_id FROM refunds WHERE deal_id = :d"), {"d": deal_id})
            }
            dead = s.execute(text("SELECT count(*) FROM dead_letters WHERE deal_id = :d"), {"d": deal_id}).scalar()
            keys = gate.keys.deal(deal_id)
            buyers = {int(u): int(q) for u, q in gate.redis.hgetall(keys.buyers).items()}
            remaining = int(gate.redis.get(keys.stock) or 0)
            states[deal_id] = DealState(deal_id, stock, limit, remaining, buyers, rows, refunded, int(dead or 0))
    return states


def check(history: History, states: dict[int, DealState]) -> Report:
    """Judge the history against the stores, deal by deal."""
    report = Report()
    for op in history:
        report.ops[(op.kind, op.outcome)] += 1
        report.unconfirmed += op.outcome == "ok" and op.unconfirmed
    by_deal: dict[int, list[Op]] = defaultdict(list)
    for op in history:
        by_deal[op.deal_id].append(op)
    for deal_id, state in states.items():
        _check_deal(report, by_deal.get(deal_id, []), state)
    return report


def _check_deal(report: Report, ops: list[Op], st: DealState) -> None:
    bad = report.violations
    d = st.deal_id
    rows = {r.order_id: r for r in st.rows}
    orders = [op for op in ops if op.kind == "order"]
    # Every order id an ok answer named, with the keys that named it.
    answered: dict[str, set[str]] = defaultdict(set)
    for op in orders:
        if op.outcome == "ok" and op.order_id:
            answered[op.order_id].add(op.key)
            if op.order_id not in rows:
                if op.unconfirmed:
                    report.unconfirmed_lost += 1
                else:
                    bad.append(Violation("lost", d, f"order {op.order_id} (key {op.key}) answered {op.status}"))
    ids_of_key: dict[str, set[str]] = defaultdict(set)
    for oid, keys in answered.items():
        for k in keys:
            ids_of_key[k].add(oid)
    for k, ids in ids_of_key.items():
        if len(ids) > 1:
            bad.append(Violation("duplicated", d, f"key {k} answered with orders {sorted(ids)}"))
    # Rows no ok answer named: each may be an attempt whose outcome was unknown, once per key.
    attempted_users = {op.user_id for op in orders}
    unknown_keys: dict[int, set[str]] = defaultdict(set)
    for op in orders:
        if op.outcome == "info" and op.key not in ids_of_key:
            unknown_keys[op.user_id].add(op.key)
    unexplained: dict[int, list[Row]] = defaultdict(list)
    for r in st.rows:
        if r.order_id not in answered:
            unexplained[r.user_id].append(r)
    for user, extra in unexplained.items():
        if user not in attempted_users:
            bad += [Violation("never_attempted", d, f"order {r.order_id} of user {user}") for r in extra]
        elif len(extra) > len(unknown_keys[user]):
            n = len(extra) - len(unknown_keys[user])
            bad.append(Violation("duplicated", d, f"user {user}: {n} orders beyond what attempts could explain"))
    held = st.held
    if held > st.stock:
        bad.append(Violation("oversold", d, f"PostgreSQL holds {held} units of a stock of {st.stock}"))
    if st.remaining + held != st.stock:
        bad.append(Violation("stock_mismatch", d, f"remaining {st.remaining} + held {held} != stock {st.stock}"))
    per_user: Counter[int] = Counter()
    for r in st.rows:
        if r.status in HOLDING_STATUSES:
            per_user[r.user_id] += r.quantity
    for user, q in per_user.items():
        if q > st.limit:
            bad.append(Violation("over_limit", d, f"user {user} holds {q}, limit {st.limit}"))
    # Given back twice: more units on sale than PostgreSQL leaves unsold, or a buyer's total below what he holds.
    if st.remaining + held > st.stock:
        bad.append(Violation("returned_twice", d, f"{st.remaining + held - st.stock} units back on sale twice"))
    for user, q in per_user.items():
        if st.buyers.get(user, 0) < q:
            bad.append(Violation("returned_twice", d, f"user {user}: gate total {st.buyers.get(user, 0)} < held {q}"))
    paid_ok = {op.order_id for op in ops if op.kind == "pay" and op.acknowledged}
    for r in st.rows:
        kept_after_expiry = r.status == "expired" and r.order_id in paid_ok and r.order_id not in st.refunded
        if (r.paid and r.expired) or kept_after_expiry:
            bad.append(Violation("paid_and_expired", d, f"order {r.order_id} is {r.status}, paid and expired"))
    for oid in paid_ok:
        r = rows.get(oid)
        if r is not None and r.status != "paid" and oid not in st.refunded:
            bad.append(Violation("payment_lost", d, f"order {oid} paid (acknowledged) but {r.status}"))
    for op in ops:
        if op.kind == "cancel" and op.acknowledged:
            r = rows.get(op.order_id)
            if r is not None and r.status != "canceled":
                bad.append(Violation("cancel_lost", d, f"order {op.order_id} canceled (acknowledged) but {r.status}"))
