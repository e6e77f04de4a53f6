"""Retiring ended deals: keys leave Redis atomically once settled, PostgreSQL serves them, nothing is dropped."""

from __future__ import annotations

import uuid

import pytest
import redis

from shared.deals import DealStateError, close_now, open_now, tick
from shared.gate import Admission, Cancellation, Gate
from shared.models import Deal, Order
from shared.retire import retire_deal, retire_ended
from tests.helpers import ORIGIN, deal_keys_in_redis, login_client, make_deal, make_users
from worker.dlq import dead_letter, drop_dead_letter
from worker.drain import DrainOptions, drain_deal
from worker.reconcile import reconcile_deal


def _drain(db, gate: Gate, deal_id: int) -> None:
    drain_deal(db, gate.redis, gate.keys, deal_id, "t-retire", DrainOptions(batch_size=100, budget_s=10.0))


def _retired_at(db, deal_id: int):
    with db.read() as s:
        return s.get(Deal, deal_id).retired_at


def test_an_ended_settled_deal_leaves_redis_and_is_served_from_postgresql(app, db, svc) -> None:
    gate = svc.gate
    deal = make_deal(db, gate, stock=5, limit=2)
    (uid,) = make_users(db, 1)
    c = login_client(app, db, uid)
    kept = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 2}).json["order_id"]
    gone = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert gone.status_code == 409  # the limit: 2
    (other,) = make_users(db, 1)
    c2 = login_client(app, db, other)
    canceled = c2.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    assert c2.post(f"/api/orders/{canceled}/cancel", headers=ORIGIN).json["status"] == "canceled"

    # Open: never retired, whatever the grace (the script itself refuses too).
    assert deal.id not in retire_ended(db, gate, after_seconds=0).retired
    assert gate.retire(deal.id, delete=True).outcome == "open"
    close_now(db, gate, deal.id)
    # Ended but the orders are still in the outbox: not yet.
    assert retire_ended(db, gate, after_seconds=0).waiting[deal.id].startswith("outbox")
    assert _retired_at(db, deal.id) is None
    _drain(db, gate, deal.id)
    # Ended and drained, but within the grace period (a retry with the same Idempotency-Key still replays).
    assert deal.id not in retire_ended(db, gate, after_seconds=3600).retired
    assert deal.id in retire_ended(db, gate, after_seconds=0).retired

    assert deal_keys_in_redis(gate, deal.id) == []
    assert deal.id not in gate.live_deal_ids()
    assert _retired_at(db, deal.id) is not None
    # Served from PostgreSQL from now on, exactly as before.
    assert c.get(f"/api/orders/{kept}").json["status"] == "confirmed"
    assert c2.get(f"/api/orders/{canceled}").json["status"] == "canceled"
    assert [o["order_id"] for o in c.get("/api/orders").json["items"]] == [kept]
    assert c2.get("/api/orders").json["items"][0]["status"] == "canceled"
    detail = c.get(f"/api/deals/{deal.id}").json
    assert (detail["status"], detail["remaining_stock"]) == ("ended", 3)
    stats = c.get(f"/api/deals/{deal.id}")  # and the buyer's actions are refused, never a 500
    assert stats.status_code == 200
    assert c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["error"]["code"] == "deal_not_open"
    assert c.post(f"/api/orders/{kept}/cancel", headers=ORIGIN).json["error"]["code"] == "deal_not_open"
    # Nothing brings its keys back: the scheduler, a reopen, a repair, a drain.
    tick(db, gate)
    with pytest.raises(DealStateError):
        open_now(db, gate, deal.id)
    close_now(db, gate, deal.id)
    assert reconcile_deal(db, gate.redis, gate.keys, deal.id, repair=True) is None
    _drain(db, gate, deal.id)
    # A dead letter of the deal dropped after it retired: deleted, no stock written back.
    letter = str(uuid.uuid4())
    with db.transaction() as s:
        payload = {"t": "o", "id": letter, "u": str(uid), "q": "1", "p": "9.99", "ts": "1"}
        dead_letter(s, deal.id, "1-0", letter, payload, "test", 3)
    dropped = drop_dead_letter(db, gate, letter)
    assert dropped.found and not dropped.stock_returned
    assert deal_keys_in_redis(gate, deal.id) == []


def test_entries_read_but_not_acknowledged_keep_the_deal(db, svc) -> None:
    gate = svc.gate
    deal = make_deal(db, gate, stock=5, limit=5)
    (uid,) = make_users(db, 1)
    assert gate.admit(deal.id, uid, 1, "00000000-0000-4000-8000-000000000001").outcome is Admission.ACCEPTED
    close_now(db, gate, deal.id)
    k = gate.keys.deal(deal.id)
    # A worker read the entry and died before its commit: the entry is pending, not persisted.
    gate.redis.xgroup_create(k.outbox, gate.keys.drain_group, id="0")
    gate.redis.xreadgroup(gate.keys.drain_group, "dead-worker", {k.outbox: ">"}, count=10)
    gate.redis.xdel(k.outbox, *[e for e, _ in gate.redis.xrange(k.outbox)])  # even with the stream itself empty
    verdict = retire_deal(db, gate, deal.id)
    assert (verdict.outcome, verdict.count) == ("pending", 1)
    assert _retired_at(db, deal.id) is None and gate.live(deal.id) is not None


def test_a_late_cancel_between_the_check_and_the_delete_is_never_dropped(db, svc, monkeypatch) -> None:
    gate = svc.gate
    deal = make_deal(db, gate, stock=5, limit=5)
    (uid,) = make_users(db, 1)
    oid = "00000000-0000-4000-8000-00000000000a"
    assert gate.admit(deal.id, uid, 2, oid).outcome is Admission.ACCEPTED
    close_now(db, gate, deal.id)
    _drain(db, gate, deal.id)
    real = Gate.retire

    def late_cancel_first(self, deal_id, *, delete):
        if delete:  # after the look and the PostgreSQL mark, just before the atomic step
            assert gate.cancel(deal_id, oid, 0, admin=True, force=True).outcome is Cancellation.CANCELED
            monkeypatch.setattr(Gate, "retire", real)
        return real(self, deal_id, delete=delete)

    monkeypatch.setattr(Gate, "retire", late_cancel_first)
    verdict = retire_deal(db, gate, deal.id)
    assert (verdict.outcome, verdict.count) == ("outbox", 1)  # the script saw the cancel and kept everything
    assert _retired_at(db, deal.id) is not None and gate.live(deal.id) is not None
    _drain(db, gate, deal.id)
    # The next pass finishes what the first one marked.
    assert deal.id in retire_ended(db, gate, after_seconds=0).retired
    assert deal_keys_in_redis(gate, deal.id) == [] and deal.id not in gate.live_deal_ids()
    with db.read() as s:
        assert s.get(Order, oid).status == "canceled"


def test_a_crash_between_the_mark_and_the_delete_is_finished_by_the_next_pass(db, svc, monkeypatch) -> None:
    gate = svc.gate
    deal = make_deal(db, gate, stock=5, limit=5)
    close_now(db, gate, deal.id)
    real = Gate.retire

    def redis_dies_on_delete(self, deal_id, *, delete):
        if delete:
            raise redis.ConnectionError("Redis went away")
        return real(self, deal_id, delete=delete)

    monkeypatch.setattr(Gate, "retire", redis_dies_on_delete)
    with pytest.raises(redis.ConnectionError):
        retire_ended(db, gate, after_seconds=0)
    monkeypatch.setattr(Gate, "retire", real)
    # Marked first: never "gone from Redis but not marked", which a reload rule would take for data loss.
    assert _retired_at(db, deal.id) is not None and gate.live(deal.id) is not None
    assert deal.id in retire_ended(db, gate, after_seconds=0).retired
    assert deal_keys_in_redis(gate, deal.id) == []
    # A crash after the delete and before leaving the live set: the next pass removes the id.
    gate.redis.sadd(gate.keys.live_deals, deal.id)
    assert deal.id in retire_ended(db, gate, after_seconds=0).retired
    assert deal.id not in gate.live_deal_ids()
