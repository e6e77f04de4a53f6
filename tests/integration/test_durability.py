"""Data-loss safety: the rebuild rule of load_deal.lua, durable acknowledgement (WAIT), eviction refusal, settings."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from shared.deals import tick
from shared.gate import Admission, Gate, Loaded
from shared.keys import Keys
from shared.models import Deal
from shared.settings import DEFAULT_AMQP_URL, ConfigError, Settings, sentinel_broker_url
from tests.helpers import (
    ORIGIN,
    dev_event,
    dev_headers,
    login_client,
    make_deal,
    make_users,
    views_forbidden,
)
from web import create_app
from web.admission import REPLICATION_HEADER, UNCONFIRMED
from web.metrics import UNREPLICATED
from worker.drain import DrainOptions, drain_deal
from worker.reconcile import reconcile_deal


@pytest.fixture()
def gate(settings, rds) -> Gate:
    return Gate(rds, Keys(settings.key_prefix), settings.drain_kick_ms)


def _admit(gate: Gate, deal_id: int, user: int, qty: int) -> str:
    r = gate.admit(deal_id, user, qty, str(uuid.uuid4()))
    assert r.outcome is Admission.ACCEPTED, r
    return r.order_id


def _drain(db, gate: Gate, deal_id: int) -> None:
    drain_deal(db, gate.redis, gate.keys, deal_id, "t1", DrainOptions(1000, 60_000, 2, 10.0))


def test_stock_deleted_while_orders_are_in_the_outbox_is_not_reloaded_and_drift_is_reported(db, gate) -> None:
    users = make_users(db, 3)
    deal = make_deal(db, gate, stock=10, limit=5)
    _admit(gate, deal.id, users[0], 2)
    _drain(db, gate, deal.id)  # 2 persisted
    _admit(gate, deal.id, users[1], 3)  # 3 still in the outbox
    k = gate.keys.deal(deal.id)
    gate.redis.delete(k.stock)  # evicted, or deleted by hand
    report = tick(db, gate)
    # Rebuilt from PostgreSQL it would be 10 - 2 = 8, reselling the 3 units in the outbox.
    assert gate.redis.get(k.stock) is None and deal.id in report.drifted and deal.id not in report.loaded
    assert gate.admit(deal.id, users[2], 1, str(uuid.uuid4())).outcome is Admission.SOLD_OUT  # refuses, never resells
    with db.read() as s:
        assert s.get(Deal, deal.id).status == "open"  # a missing stock is not mistaken for a sell-out
    r = reconcile_deal(db, gate.redis, gate.keys, deal.id)
    assert not r.ok and r.redis_remaining is None and r.expected_remaining == 5
    assert reconcile_deal(db, gate.redis, gate.keys, deal.id, repair=True).repaired
    assert gate.redis.get(k.stock) == "5"


def test_stock_deleted_with_only_order_records_left_is_not_reloaded(db, gate) -> None:
    users = make_users(db, 1)
    deal = make_deal(db, gate, stock=10, limit=5)
    _admit(gate, deal.id, users[0], 2)
    _drain(db, gate, deal.id)  # the outbox is empty now; the order record stays while the deal is live
    k = gate.keys.deal(deal.id)
    gate.redis.delete(k.stock, k.outbox)
    with db.read() as s:
        from shared.deals import load_deal

        assert load_deal(s, gate, s.get(Deal, deal.id)) is Loaded.HELD
    assert gate.redis.get(k.stock) is None


def test_whole_deal_lost_is_rebuilt_with_stock_and_buyers_totals(db, gate) -> None:
    users = make_users(db, 3)
    deal = make_deal(db, gate, stock=10, limit=2)
    _admit(gate, deal.id, users[0], 2)
    _admit(gate, deal.id, users[1], 1)
    _drain(db, gate, deal.id)
    lost = _admit(gate, deal.id, users[2], 1)  # acknowledged, never persisted: lost with Redis
    k = gate.keys.deal(deal.id)
    gate.redis.delete(*k.gate_keys(), k.loaded)  # Redis restarted empty (no persistence)
    gate.redis.srem(gate.keys.live_deals, deal.id)
    report = tick(db, gate)
    assert deal.id in report.loaded and deal.id not in report.drifted
    assert gate.redis.get(k.stock) == "7"  # 10 - the 3 PostgreSQL holds
    assert gate.redis.hgetall(k.buyers) == {str(users[0]): "2", str(users[1]): "1"}
    # The per-user limit holds on the rebuilt deal: user 0 bought 2 of 2 before the loss.
    assert gate.admit(deal.id, users[0], 1, str(uuid.uuid4())).outcome is Admission.LIMIT_EXCEEDED
    assert gate.admit(deal.id, users[1], 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED
    r = reconcile_deal(db, gate.redis, gate.keys, deal.id)
    assert r.ok and r.held_at_load == 3 and r.loaded_at_ms is not None
    assert "lost with Redis" in r.rebuilt_note
    assert gate.find_order(lost, deal.id) is None


def test_repeated_load_of_a_live_deal_leaves_stock_and_buyers_alone(db, gate) -> None:
    users = make_users(db, 1)
    deal = make_deal(db, gate, stock=10, limit=5)
    _admit(gate, deal.id, users[0], 4)
    from shared.deals import load_deal

    with db.read() as s:
        assert load_deal(s, gate, s.get(Deal, deal.id)) is Loaded.LIVE
    k = gate.keys.deal(deal.id)
    assert gate.redis.get(k.stock) == "6" and gate.redis.hget(k.buyers, str(users[0])) == "4"


def _unreplicated(op: str) -> float:
    return UNREPLICATED.labels(op=op)._value.get()


@pytest.mark.parametrize("fast_path", [True, False])
def test_wait_timeout_still_answers_202_marked_and_counted_and_a_retry_finds_the_order(settings, db, fast_path) -> None:
    # The test Redis has no replica: WAIT 1 always times out, as with a replica down or lagging.
    app = create_app(settings.with_(ratelimit_enabled=False, fast_path=fast_path, order_ack_replicas=1,
                                    order_ack_timeout_ms=20))  # fmt: skip
    if fast_path:
        views_forbidden(app, "orders.place_order")
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    c = login_client(app, db, make_users(db, 1)[0])
    before = _unreplicated("order")
    r = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}, headers={"Idempotency-Key": "w1"})
    assert r.status_code == 202 and r.headers[REPLICATION_HEADER] == UNCONFIRMED
    assert _unreplicated("order") == before + 1
    again = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}, headers={"Idempotency-Key": "w1"})
    # A replay answers 200 with the order as it is now (docs/architecture.md, "Security"), marked again: its
    # WAIT timed out too.
    assert again.status_code == 200 and again.json["order_id"] == r.json["order_id"]
    assert again.json["status"] == "accepted" and again.headers[REPLICATION_HEADER] == UNCONFIRMED
    assert svc.gate.live(deal.id).remaining == 4  # one order, on the primary


def test_cancel_wait_timeout_is_200_marked_and_counted(settings, db) -> None:
    app = create_app(settings.with_(ratelimit_enabled=False, order_ack_replicas=1, order_ack_timeout_ms=20))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    c = login_client(app, db, make_users(db, 1)[0])
    oid = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    before = _unreplicated("cancel")
    r = c.post(f"/api/orders/{oid}/cancel", headers=ORIGIN)
    assert r.status_code == 200 and r.json["status"] == "canceled" and r.headers[REPLICATION_HEADER] == UNCONFIRMED
    assert _unreplicated("cancel") == before + 1 and svc.gate.live(deal.id).remaining == 5


def test_no_wait_asked_means_no_marker(settings, db) -> None:
    app = create_app(settings.with_(ratelimit_enabled=False, order_ack_replicas=0))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    c = login_client(app, db, make_users(db, 1)[0])
    r = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert r.status_code == 202 and REPLICATION_HEADER not in r.headers


def test_topology_settings() -> None:
    s = Settings.from_env({"FLASHDEAL_REDIS_TOPOLOGY": "sentinel", "REDIS_SENTINELS": "h1:26391, h2:26392",
                           "REDIS_URL": "redis://127.0.0.1:6379/4"})  # fmt: skip
    assert s.redis_sentinels == (("h1", 26391), ("h2", 26392)) and s.redis_sentinel_master == "flashdeal"
    assert s.order_ack_replicas == 1 and s.celery_broker_url == DEFAULT_AMQP_URL  # RabbitMQ with Sentinel
    assert sentinel_broker_url(s.redis_url, s.redis_sentinels) == "sentinel://h1:26391/4;sentinel://h2:26392/4"
    assert Settings.from_env({}).order_ack_replicas == 0
    # (Sentinel without REDIS_SENTINELS is the local topology of `make up`: tests/integration/test_settings.py.)
    for bad in ({"FLASHDEAL_REDIS_TOPOLOGY": "ring"},
                {"FLASHDEAL_REDIS_TOPOLOGY": "sentinel", "REDIS_SENTINELS": "nohost"}):  # fmt: skip
        with pytest.raises(ConfigError):
            Settings.from_env(bad)


def test_a_payment_decided_without_a_replica_answers_503_so_the_provider_sends_it_again(settings, db) -> None:
    """The webhook's decision gets the same durable acknowledgement as an order: unconfirmed means resend."""
    from shared.payments.providers.dev import dev_webhook_secret

    app = create_app(settings.with_(ratelimit_enabled=False, order_ack_replicas=1, order_ack_timeout_ms=20))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2, payment_window=120)
    c = login_client(app, db, make_users(db, 1)[0])
    oid = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    pid = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["payment_id"]
    payload = dev_event(oid, deal.id, pid, eid="evt_unreplicated")
    headers = dev_headers(payload, dev_webhook_secret(svc.settings))
    before = _unreplicated("payment")
    r = app.test_client().post("/api/payments/webhook", data=payload, headers=headers)
    assert r.status_code == 503 and r.json["error"]["code"] == "unavailable"
    assert _unreplicated("payment") == before + 1
    assert svc.gate.find_order(oid, deal.id).state == "paid"  # decided on the primary, never twice


def test_a_rebuilt_deal_gets_back_its_unpaid_orders_which_can_still_be_paid_or_expire(db, gate) -> None:
    """Unpaid orders hold units: rebuilt without their records and due entries, those units would be stranded."""
    users = make_users(db, 3)
    deal = make_deal(db, gate, stock=10, limit=2, payment_window=120)
    paid_later, expiring, kept_paid = (_admit(gate, deal.id, u, 2) for u in users)
    assert gate.settle(deal.id, "pay", kept_paid, "evt-before-loss", "pi_1").outcome.value == "paid"
    _drain(db, gate, deal.id)  # all three persisted: two 'confirmed' with pay_by, one 'paid'
    with db.transaction() as s:  # the second one's deadline passed while Redis was down
        s.execute(text("UPDATE orders SET pay_by = now() - interval '1 second' WHERE id = :o"), {"o": expiring})
    before = {o: gate.find_order(o, deal.id) for o in (paid_later, expiring)}
    k = gate.keys.deal(deal.id)
    gate.redis.delete(*k.all_keys())  # Redis restarted empty (no persistence)
    gate.redis.srem(gate.keys.live_deals, deal.id)
    assert deal.id in tick(db, gate).loaded
    assert gate.redis.get(k.stock) == "4"  # 10 - the 6 PostgreSQL holds (paid and unpaid alike)
    for oid, was in before.items():
        now = gate.find_order(oid, deal.id)
        assert now is not None and now.state == "accepted" and now.quantity == 2 and now.user_id == was.user_id
    assert gate.find_order(paid_later, deal.id).pay_by == before[paid_later].pay_by
    assert gate.find_order(kept_paid, deal.id) is None  # decided for good: PostgreSQL answers for it
    assert set(gate.redis.zrange(k.due, 0, -1)) == {paid_later, expiring}
    # Still payable, and still expiring: each unit comes back exactly once.
    assert gate.settle(deal.id, "pay", paid_later, "evt-after-loss", "pi_2").outcome.value == "paid"
    assert gate.expire_due(deal.id).expired == 1 and gate.expire_due(deal.id).expired == 0
    assert gate.redis.get(k.stock) == "6" and gate.redis.hget(k.buyers, str(users[1])) == "0"
