"""Reconcile: expected stock from PostgreSQL, the outbox and dead letters; drift found and repaired."""

from __future__ import annotations

import uuid

import pytest

from shared.gate import Admission, Cancellation, Gate
from shared.keys import Keys
from tests.helpers import make_deal, make_users
from worker.drain import DrainOptions, drain_deal
from worker.reconcile import reconcile, reconcile_deal


@pytest.fixture()
def gate(settings, rds) -> Gate:
    return Gate(rds, Keys(settings.key_prefix), settings.drain_kick_ms)


def _admit(gate: Gate, deal_id: int, users: list[int], qty: int = 1) -> list[str]:
    out = []
    for u in users:
        r = gate.admit(deal_id, u, qty, str(uuid.uuid4()))
        assert r.outcome == Admission.ACCEPTED
        out.append(r.order_id)
    return out


def _drain(db, gate: Gate, deal_id: int, batch: int = 1000) -> None:
    drain_deal(db, gate.redis, gate.keys, deal_id, "r1", DrainOptions(batch, 60_000, 2, 10.0))


def _check(db, gate: Gate, deal_id: int, repair: bool = False):
    r = reconcile_deal(db, gate.redis, gate.keys, deal_id, repair=repair)
    assert r is not None
    return r


def test_consistent_with_orders_split_between_postgres_outbox_cancels_and_dead_letters(db, gate) -> None:
    users = make_users(db, 40)
    deal = make_deal(db, gate, stock=200, limit=3)
    first = _admit(gate, deal.id, users[:20], qty=2)
    assert gate.cancel(deal.id, first[0], users[0]).outcome == Cancellation.CANCELED
    _drain(db, gate, deal.id)  # 20 persisted, one canceled
    second = _admit(gate, deal.id, users[20:], qty=3)  # still in the outbox
    assert gate.cancel(deal.id, second[0], users[20]).outcome == Cancellation.CANCELED  # cancel in the outbox
    assert gate.cancel(deal.id, first[1], users[1]).outcome == Cancellation.CANCELED  # persisted, cancel pending
    _admit(gate, deal.id, [2_050_000_000 + uuid.uuid4().int % 1_000_000], qty=1)  # will be a dead letter
    r = _check(db, gate, deal.id)
    assert r.ok and r.drift == 0, r
    assert (r.persisted_qty, r.outbox_qty, r.outbox_cancels) == (18 * 2, 19 * 3 + 1, 2)
    _drain(db, gate, deal.id)
    r = _check(db, gate, deal.id)
    assert r.ok and r.dead_letter_qty == 1 and r.outbox_qty == 0, r
    assert r.expected_remaining == 200 - 18 * 2 - 19 * 3 - 1 == gate.live(deal.id).remaining


def test_detects_and_repairs_a_lost_and_a_wrong_stock(db, gate) -> None:
    users = make_users(db, 10)
    deal = make_deal(db, gate, stock=50, limit=2)
    _admit(gate, deal.id, users[:6], qty=2)
    _drain(db, gate, deal.id)
    _admit(gate, deal.id, users[6:], qty=1)  # in the outbox
    k = gate.keys.deal(deal.id)
    expected = 50 - 12 - 4
    assert gate.live(deal.id).remaining == expected
    # Redis lost the stock and the buyers' totals (e.g. a restart without persistence).
    gate.redis.delete(k.stock, k.buyers)
    r = _check(db, gate, deal.id)
    assert not r.ok and r.redis_remaining is None and r.drift is None and r.buyers_mismatched == 10
    assert r.expected_remaining == expected
    fixed = _check(db, gate, deal.id, repair=True)
    assert fixed.repaired and gate.redis.get(k.stock) == str(expected)
    assert gate.redis.hgetall(k.buyers) == {**{str(u): "2" for u in users[:6]}, **{str(u): "1" for u in users[6:]}}
    assert _check(db, gate, deal.id).ok
    # A wrong value is found with its sign and put right; the per-user limit holds again after the rebuild.
    gate.redis.set(k.stock, expected + 7)
    report = reconcile(db, gate.redis, gate.keys, [deal.id])
    assert [d.drift for d in report.drifted] == [7]
    assert report.as_dict()["drifted"] == [deal.id]
    report = reconcile(db, gate.redis, gate.keys, [deal.id], repair=True)
    assert report.deals[0].repaired and gate.live(deal.id).remaining == expected
    assert gate.admit(deal.id, users[0], 1, str(uuid.uuid4())).outcome == Admission.LIMIT_EXCEEDED
    assert gate.admit(deal.id, users[6], 1, str(uuid.uuid4())).outcome == Admission.ACCEPTED


def test_unknown_deal_is_skipped(db, gate) -> None:
    assert reconcile_deal(db, gate.redis, gate.keys, 987_654_321) is None
    assert reconcile(db, gate.redis, gate.keys, [987_654_321]).deals == []
