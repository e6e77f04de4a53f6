"""Payment windows in the gate (shared/lua/settle.lua): every order ends paid or expired exactly once, on real Redis."""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis.crc import key_slot
from sqlalchemy import text

from shared.gate import Admission, Cancellation, Gate, Settlement
from shared.keys import Keys
from tests.helpers import make_deal, make_users, set_payment_window_ms
from worker.drain import DrainOptions, drain_deal
from worker.expiry import sweep
from worker.reconcile import reconcile_deal


@pytest.fixture()
def gate(settings, rds) -> Gate:
    return Gate(rds, Keys(settings.key_prefix), settings.drain_kick_ms)


def _admit(gate: Gate, deal_id: int, user: int, qty: int = 1) -> str:
    r = gate.admit(deal_id, user, qty, str(uuid.uuid4()))
    assert r.outcome is Admission.ACCEPTED, r
    return r.order_id


def _stock(gate: Gate, deal_id: int) -> int:
    return int(gate.redis.get(gate.keys.deal(deal_id).stock))


def _bought(gate: Gate, deal_id: int, user: int) -> int:
    return int(gate.redis.hget(gate.keys.deal(deal_id).buyers, str(user)) or 0)


def _kinds(gate: Gate, deal_id: int) -> list[str]:
    return [f["t"] for _id, f in gate.redis.xrange(gate.keys.deal(deal_id).outbox)]


def _wait_past(gate: Gate, deal_id: int, order_id: str) -> None:
    live = gate.find_order(order_id, deal_id)
    assert live is not None and live.pay_by is not None
    while time.time() <= live.pay_by.timestamp() + 0.002:
        time.sleep(0.01)


def test_every_key_a_payment_script_touches_is_in_the_deals_slot() -> None:
    for deal_id in (1, 42, 123456789):
        k = Keys("fd:").deal(deal_id)
        assert len({key_slot(x.encode()) for x in [*k.gate_keys(), *k.settle_keys(), *k.all_keys()]}) == 1


def test_admission_records_pay_by_in_the_record_and_the_due_index(db, gate) -> None:
    deal = make_deal(db, gate, stock=5, limit=2, payment_window=120)
    plain = make_deal(db, gate, stock=5, limit=2)
    (user,) = make_users(db, 1)
    before = time.time()
    oid = _admit(gate, deal.id, user)
    live = gate.find_order(oid, deal.id)
    assert live.state == "accepted" and before + 119 < live.pay_by.timestamp() < time.time() + 121
    k = gate.keys.deal(deal.id)
    assert gate.redis.zscore(k.due, oid) == int(live.pay_by.timestamp() * 1000)
    assert gate.redis.xrange(k.outbox)[-1][1]["pb"] == str(int(live.pay_by.timestamp() * 1000))
    # Without a window: today's record, no index entry, no deadline.
    other = _admit(gate, plain.id, user)
    assert gate.find_order(other, plain.id).pay_by is None
    assert gate.redis.zcard(gate.keys.deal(plain.id).due) == 0
    assert gate.redis.hget(gate.keys.deal(plain.id).orders, other).count("|") == 4


def test_pay_in_time_is_final_and_each_event_counts_once(db, gate) -> None:
    deal = make_deal(db, gate, stock=5, limit=2, payment_window=120)
    (user,) = make_users(db, 1)
    oid = _admit(gate, deal.id, user, 2)
    r = gate.settle(deal.id, "pay", oid, "evt_1", "pi_1")
    assert r.outcome is Settlement.PAID
    assert gate.find_order(oid, deal.id).state == "paid"
    assert gate.redis.zcard(gate.keys.deal(deal.id).due) == 0
    again = gate.settle(deal.id, "pay", oid, "evt_1", "pi_1")
    assert again.outcome is Settlement.DUPLICATE and again.detail == "paid:"
    other = gate.settle(deal.id, "pay", oid, "evt_2", "pi_1")
    assert other.outcome is Settlement.ALREADY_PAID and other.detail == "pi_1"
    # Late decline (out of order), a sweep and a cancel change nothing.
    assert gate.settle(deal.id, "decline", oid, "evt_3", "pi_1").outcome is Settlement.IGNORED
    assert sweep(gate, [deal.id]).expired == {}
    assert gate.cancel(deal.id, oid, user).outcome is Cancellation.PAID
    assert _stock(gate, deal.id) == 3 and _bought(gate, deal.id, user) == 2
    assert _kinds(gate, deal.id) == ["o", "p"]


def test_unpaid_order_expires_once_and_its_units_come_back(db, gate) -> None:
    deal = make_deal(db, gate, stock=3, limit=3, payment_window=60)
    set_payment_window_ms(gate, deal.id, 150)
    (user,) = make_users(db, 1)
    oid = _admit(gate, deal.id, user, 3)
    assert gate.admit(deal.id, user, 1, str(uuid.uuid4())).outcome is Admission.SOLD_OUT
    assert sweep(gate, [deal.id]).expired == {}  # not due yet
    _wait_past(gate, deal.id, oid)
    assert sweep(gate, [deal.id]).expired == {deal.id: 1}  # orders expired
    assert sweep(gate, [deal.id]).expired == {}  # a second sweep gives nothing back twice
    assert _stock(gate, deal.id) == 3 and _bought(gate, deal.id, user) == 0
    assert gate.find_order(oid, deal.id).state == "expired"
    assert gate.cancel(deal.id, oid, user).outcome is Cancellation.EXPIRED
    # A payment arriving now is refused and must be refunded.
    late = gate.settle(deal.id, "pay", oid, "evt_late", "pi_late")
    assert (late.outcome, late.detail) == (Settlement.REFUND, "expired")
    assert _stock(gate, deal.id) == 3 and _kinds(gate, deal.id) == ["o", "x"]
    # The units are sold again.
    _admit(gate, deal.id, user, 3)


def test_payment_after_the_deadline_but_before_any_sweep_expires_it(db, gate) -> None:
    deal = make_deal(db, gate, stock=2, limit=2, payment_window=60)
    set_payment_window_ms(gate, deal.id, 100)
    (user,) = make_users(db, 1)
    oid = _admit(gate, deal.id, user, 2)
    _wait_past(gate, deal.id, oid)
    r = gate.settle(deal.id, "pay", oid, "evt_x", "pi_x")
    assert (r.outcome, r.detail) == (Settlement.REFUND, "expired")  # the deadline decides, not the sweep
    assert _stock(gate, deal.id) == 2 and _bought(gate, deal.id, user) == 0
    assert sweep(gate, [deal.id]).expired == {}


def test_cancel_releases_an_unpaid_order_and_takes_it_out_of_the_index(db, gate) -> None:
    deal = make_deal(db, gate, stock=2, limit=2, payment_window=60)
    set_payment_window_ms(gate, deal.id, 100)
    (user,) = make_users(db, 1)
    oid = _admit(gate, deal.id, user, 2)
    assert gate.cancel(deal.id, oid, user).outcome is Cancellation.CANCELED
    _wait_past(gate, deal.id, oid)
    assert sweep(gate, [deal.id]).expired == {}
    assert _stock(gate, deal.id) == 2
    r = gate.settle(deal.id, "pay", oid, "evt_c", "pi_c")
    assert (r.outcome, r.detail) == (Settlement.REFUND, "canceled")


def test_decline_keeps_the_order_payable(db, gate) -> None:
    deal = make_deal(db, gate, stock=2, limit=2, payment_window=60)
    (user,) = make_users(db, 1)
    oid = _admit(gate, deal.id, user)
    assert gate.settle(deal.id, "decline", oid, "evt_d", "pi_d").outcome is Settlement.DECLINED
    assert gate.payment_of(deal.id, oid)[1] is not None
    assert gate.settle(deal.id, "pay", oid, "evt_p", "pi_d").outcome is Settlement.PAID
    assert gate.payment_of(deal.id, oid)[1] is None


def test_pay_racing_expiry_over_300_orders_ends_each_exactly_one_way(db, gate) -> None:
    total = 600
    deal = make_deal(db, gate, stock=total, limit=10, payment_window=60)
    set_payment_window_ms(gate, deal.id, 300)
    users = make_users(db, 60)
    orders: dict[str, int] = {}
    for i in range(300):  # admitted over about half a second: their deadlines are spread as wide
        orders[_admit(gate, deal.id, users[i % 60], 1 + i % 2)] = 1 + i % 2
        time.sleep(0.0015)
    due = sorted(gate.find_order(o, deal.id).pay_by.timestamp() for o in orders)
    first, deadline = due[0], due[-1]
    while time.time() < first:
        time.sleep(0.002)
    shuffled = list(orders)
    random.Random(7).shuffle(shuffled)

    def pay(oid: str) -> Settlement:
        return gate.settle(deal.id, "pay", oid, f"evt-{oid}", f"pi_{oid[:8]}").outcome

    def sweeper(_n: int) -> int:
        n = 0
        while time.time() < deadline + 0.1:
            n += sum(sweep(gate, [deal.id]).expired.values())
        return n

    with ThreadPoolExecutor(12) as pool:
        sweeps = [pool.submit(sweeper, i) for i in range(3)]
        pays = dict(zip(shuffled, pool.map(pay, shuffled), strict=True))
        expired_by_sweep = sum(s.result() for s in sweeps)
    states = {o: gate.find_order(o, deal.id).state for o in orders}
    paid = {o for o, s in states.items() if s == "paid"}
    expired = {o for o, s in states.items() if s == "expired"}
    assert paid | expired == set(orders) and not paid & expired
    assert paid == {o for o, r in pays.items() if r is Settlement.PAID}  # a payment is kept only if it won
    assert {o for o, r in pays.items() if r is Settlement.REFUND} == expired - {
        o for o, r in pays.items() if r is not Settlement.REFUND
    }
    assert paid and expired, "the race did not happen: all paid or all expired"
    paid_qty = sum(orders[o] for o in paid)
    assert _stock(gate, deal.id) + paid_qty == total  # held is 0: every order ended
    outbox = gate.redis.xrange(gate.keys.deal(deal.id).outbox)
    decided = [f["id"] for _i, f in outbox if f["t"] in ("p", "x")]
    assert sorted(decided) == sorted(orders)  # one decision entry per order, never two
    assert expired_by_sweep <= len(expired)


def test_drain_persists_paid_and_expired_and_pay_by(db, gate) -> None:
    deal = make_deal(db, gate, stock=10, limit=5, payment_window=60)
    set_payment_window_ms(gate, deal.id, 200)
    a, b, c = make_users(db, 3)
    paid, expired, early = _admit(gate, deal.id, a, 2), _admit(gate, deal.id, b, 1), _admit(gate, deal.id, c, 1)
    opts = DrainOptions(batch_size=100, claim_idle_ms=200, max_attempts=2, budget_s=5.0)
    drain_deal(db, gate.redis, gate.keys, deal.id, "t1", opts)  # orders written first: rows then move on
    assert gate.settle(deal.id, "pay", paid, "e1", "pi_paid").outcome is Settlement.PAID
    _wait_past(gate, deal.id, early)
    assert sweep(gate, [deal.id]).expired == {deal.id: 2}
    drain_deal(db, gate.redis, gate.keys, deal.id, "t1", opts)
    with db.read() as s:
        rows = {
            str(r[0]): r[1:]
            for r in s.execute(
                text("SELECT id, status, payment_id, pay_by IS NOT NULL, paid_at IS NOT NULL, expired_at IS NOT NULL"
                     " FROM orders WHERE deal_id = :d"),
                {"d": deal.id},
            )
        }  # fmt: skip
    assert rows == {
        paid: ("paid", "pi_paid", True, True, False),
        expired: ("expired", None, True, False, True),
        early: ("expired", None, True, False, True),
    }
    # Reconcile counts a paid order as holding its units and an expired one as not: no drift.
    report = reconcile_deal(db, gate.redis, gate.keys, deal.id)
    assert report is not None and report.ok and report.expected_remaining == 8, report


def test_a_decision_persisted_before_its_order_row_is_not_undone(db, gate) -> None:
    deal = make_deal(db, gate, stock=10, limit=5, payment_window=60)
    (user,) = make_users(db, 1)
    oid = _admit(gate, deal.id, user)
    gate.settle(deal.id, "pay", oid, "e1", "pi_1")
    k = gate.keys.deal(deal.id)
    entries = gate.redis.xrange(k.outbox)
    # The order's entry is held by a dead worker; the payment's is drained first.
    gate.redis.xgroup_create(k.outbox, gate.keys.drain_group, id="0", mkstream=True)
    gate.redis.xreadgroup(gate.keys.drain_group, "ghost", {k.outbox: ">"}, count=1)
    opts = DrainOptions(batch_size=100, claim_idle_ms=100, max_attempts=2, budget_s=5.0)
    drain_deal(db, gate.redis, gate.keys, deal.id, "t1", opts)
    time.sleep(0.15)
    drain_deal(db, gate.redis, gate.keys, deal.id, "t1", opts)  # claims the order's entry: DO NOTHING
    with db.read() as s:
        assert s.execute(text("SELECT status FROM orders WHERE id = :i"), {"i": oid}).scalar() == "paid"
    assert len(entries) == 2


def test_a_stale_due_entry_never_gives_units_back_twice(db, gate) -> None:
    deal = make_deal(db, gate, stock=4, limit=4, payment_window=60)
    set_payment_window_ms(gate, deal.id, 1000)
    (user,) = make_users(db, 1)
    canceled, paid = _admit(gate, deal.id, user, 2), _admit(gate, deal.id, user, 2)
    assert gate.cancel(deal.id, canceled, user).outcome is Cancellation.CANCELED
    assert gate.settle(deal.id, "pay", paid, "e-stale", "pi_s").outcome is Settlement.PAID
    _wait_past(gate, deal.id, paid)  # both deadlines have passed: only their state keeps them decided
    # Whatever put them back in the index (an operator, a restore), a decided order stays decided.
    gate.redis.zadd(gate.keys.deal(deal.id).due, {canceled: 0, paid: 0, str(uuid.uuid4()): 0})
    assert sweep(gate, [deal.id]).expired == {}
    assert _stock(gate, deal.id) == 2 and _bought(gate, deal.id, user) == 2
    assert gate.redis.zcard(gate.keys.deal(deal.id).due) == 0
