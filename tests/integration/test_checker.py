"""The history checker catches each kind of violation: hand-made histories and store states, one per kind."""

from __future__ import annotations

from faults.checker import KINDS, DealState, Report, Row, check, read_state
from faults.history import REPLICATION_HEADER, UNCONFIRMED, History, Op
from shared.gate import Gate
from shared.order_ids import new_order_id
from shared.redis import text_client
from tests.helpers import make_deal, make_users

D = 7  # the deal of every hand-made case
A, B = "a" * 8 + "-0000-8000-8000-000000000001", "a" * 8 + "-0000-8000-8000-000000000002"
C = "a" * 8 + "-0000-8000-8000-000000000003"


def order(user: int, key: str, outcome: str, order_id: str = "", **kw) -> Op:  # type: ignore[no-untyped-def]
    """One completed order operation."""
    op = Op("order", D, user, "c1", key=key)
    return History.complete(op, outcome, 202 if outcome == "ok" else None, order_id=order_id, **kw)  # type: ignore[arg-type]


def act(kind: str, user: int, order_id: str, outcome: str = "ok") -> Op:
    """One completed cancel or payment."""
    return History.complete(Op(kind, D, user, "c1", order_id=order_id), outcome, 200)  # type: ignore[arg-type]


def state(rows: list[Row], *, stock: int = 10, limit: int = 3, remaining: int | None = None, **kw) -> DealState:  # type: ignore[no-untyped-def]
    """A store state consistent with rows unless told otherwise."""
    held = sum(r.quantity for r in rows if r.status in ("accepted", "confirmed", "paid"))
    buyers: dict[int, int] = {}
    for r in rows:
        if r.status in ("accepted", "confirmed", "paid"):
            buyers[r.user_id] = buyers.get(r.user_id, 0) + r.quantity
    kw.setdefault("buyers", buyers)
    return DealState(D, stock, limit, stock - held if remaining is None else remaining, rows=rows, **kw)


def run(ops: list[Op], st: DealState) -> Report:
    return check(History(ops), {D: st})


def kinds(report: Report) -> set[str]:
    return {v.kind for v in report.violations}


def test_a_clean_history_has_no_violation_and_counts_every_outcome():
    ops = [
        order(1, "k1", "ok", A),
        order(1, "k2", "fail", error="limit_exceeded"),
        order(2, "k3", "info"),  # unknown, and it did happen: B is explained by it
        order(2, "k4", "ok", C, headers={REPLICATION_HEADER: UNCONFIRMED}),  # unconfirmed, and lost: reported
        act("cancel", 1, A),
    ]
    rows = [Row(A, 1, 1, "canceled"), Row(B, 2, 1, "confirmed")]
    report = run(ops, state(rows))
    assert report.ok and not report.fatal, report.violations
    assert report.ops[("order", "ok")] == 2 and report.ops[("order", "info")] == 1
    assert report.ops[("order", "fail")] == 1 and report.ops[("cancel", "ok")] == 1
    assert report.unconfirmed == 1 and report.unconfirmed_lost == 1


def test_an_acknowledged_order_missing_from_postgresql_is_lost():
    report = run([order(1, "k1", "ok", A)], state([], remaining=9, buyers={1: 1}))
    assert "lost" in kinds(report) and report.fatal


def test_an_unconfirmed_order_missing_is_counted_not_lost():
    ops = [order(1, "k1", "ok", A, headers={REPLICATION_HEADER: UNCONFIRMED})]
    report = run(ops, state([]))
    assert report.ok and report.unconfirmed_lost == 1


def test_an_order_of_a_buyer_who_never_attempted_is_reported():
    report = run([order(1, "k1", "ok", A)], state([Row(A, 1, 1, "confirmed"), Row(B, 2, 1, "confirmed")]))
    assert kinds(report) == {"never_attempted"}


def test_one_key_answered_with_two_orders_is_a_duplicate():
    ops = [order(1, "k1", "ok", A), order(1, "k1", "ok", B)]
    report = run(ops, state([Row(A, 1, 1, "confirmed"), Row(B, 1, 1, "confirmed")]))
    assert "duplicated" in kinds(report) and report.fatal


def test_more_orders_than_unknown_attempts_could_explain_is_a_duplicate():
    ops = [order(1, "k1", "ok", A), order(1, "k2", "info")]
    rows = [Row(A, 1, 1, "confirmed"), Row(B, 1, 1, "confirmed"), Row(C, 1, 1, "confirmed")]
    assert "duplicated" in kinds(run(ops, state(rows)))


def test_more_units_held_than_the_stock_is_oversold():
    ops = [order(u, f"k{u}", "ok", oid) for u, oid in ((1, A), (2, B), (3, C))]
    rows = [Row(A, 1, 1, "confirmed"), Row(B, 2, 1, "paid"), Row(C, 3, 1, "confirmed")]
    report = run(ops, state(rows, stock=2, remaining=0))
    assert "oversold" in kinds(report) and report.fatal


def test_remaining_plus_held_short_of_the_stock_is_a_mismatch():
    report = run([order(1, "k1", "ok", A)], state([Row(A, 1, 1, "confirmed")], remaining=8))  # a unit stranded
    assert kinds(report) == {"stock_mismatch"}


def test_a_buyer_above_the_limit_is_reported():
    ops = [order(1, f"k{i}", "ok", oid) for i, oid in enumerate((A, B, C))]
    rows = [Row(A, 1, 1, "confirmed"), Row(B, 1, 1, "confirmed"), Row(C, 1, 1, "confirmed")]
    assert kinds(run(ops, state(rows, limit=2))) == {"over_limit"}


def test_a_cancel_that_gave_the_stock_back_twice_is_reported():
    ops = [order(1, "k1", "ok", A), act("cancel", 1, A), act("cancel", 1, A)]
    # One unit held, yet the gate shows it back on sale and the buyer's total back to 0.
    report = run(ops, state([Row(A, 1, 1, "confirmed")], remaining=10, buyers={1: 0}))
    assert "returned_twice" in kinds(report)
    assert "cancel_lost" in kinds(report)  # and the acknowledged cancel is not in PostgreSQL


def test_an_order_both_paid_and_expired_is_reported():
    ops = [order(1, "k1", "ok", A), act("pay", 1, A)]
    report = run(ops, state([Row(A, 1, 1, "expired", paid=True, expired=True)]))
    assert "paid_and_expired" in kinds(report)


def test_an_acknowledged_payment_on_an_order_that_expired_without_a_refund_is_reported():
    ops = [order(1, "k1", "ok", A), act("pay", 1, A)]
    assert {"paid_and_expired", "payment_lost"} <= kinds(run(ops, state([Row(A, 1, 1, "expired", expired=True)])))
    refunded = run(ops, state([Row(A, 1, 1, "expired", expired=True)], refunded={A}))
    assert refunded.ok, refunded.violations  # refunded: the buyer got the money back, as the README promises


def test_every_kind_has_a_test():
    names = {n for n in globals() if n.startswith("test_")}
    assert len(KINDS) == 10 and len(names) >= len(KINDS)


def test_read_state_reads_the_real_stores(db, settings):
    gate = Gate.from_settings(text_client(settings), settings)
    (user,) = make_users(db, 1)
    deal = make_deal(db, gate, stock=5, limit=2)
    oid = new_order_id(deal.id)
    assert gate.admit(deal.id, user, 2, oid).order_id == oid
    st = read_state(db, gate, [deal.id])[deal.id]
    assert (st.stock, st.limit, st.remaining, st.buyers, st.rows) == (5, 2, 3, {user: 2}, [])
    op = History.complete(Op("order", deal.id, user, "c1", key="k", quantity=2), "ok", 202, order_id=oid)
    # Read before any drain: the acknowledged order is not in PostgreSQL yet, and 2 units are unaccounted for.
    report = check(History([op]), {deal.id: st})
    assert kinds(report) == {"lost", "stock_mismatch"}
