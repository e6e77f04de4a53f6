"""The order API end to end through Flask and real web processes, on the real Redis and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.models import Order
from tests.helpers import ORIGIN, login_client, make_deal, make_users
from web import create_app


def test_anonymous_gets_401(client, db, svc) -> None:
    deal = make_deal(db, svc.gate)
    r = client.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
    assert client.get("/api/orders").status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"quantity": 0},
        {"quantity": -1},
        {"quantity": "1"},
        {"quantity": 1.5},
        {},
        {"quantity": 1, "x": 1},
        {"quantity": True},
        {"quantity": None},
        {"quantity": 10**9},
    ],
)
def test_bad_quantities_are_422(app, db, svc, body) -> None:
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    c = login_client(app, db, make_users(db, 1)[0])
    r = c.post(f"/api/deals/{deal.id}/orders", json=body)
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid"
    assert int(svc.redis.get(svc.keys.deal(deal.id).stock)) == 5


def test_malformed_and_wrong_type_bodies(app, db, svc) -> None:
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    c = login_client(app, db, make_users(db, 1)[0])
    url = f"/api/deals/{deal.id}/orders"
    assert c.post(url, data="{", content_type="application/json").status_code == 400
    assert c.post(url, data="quantity=1", content_type="application/x-www-form-urlencoded").status_code == 415
    assert c.post(url, data="quantity=1", content_type="text/plain").status_code == 415
    r = c.post(url, json={"quantity": 3})
    assert r.status_code == 422 and "limit" in r.json["error"]["message"]
    r = c.post(url, json={"quantity": 1}, headers={"Idempotency-Key": "x" * 129})
    assert r.status_code == 422
    assert int(svc.redis.get(svc.keys.deal(deal.id).stock)) == 5


def test_accept_replay_conflicts(app, db, svc) -> None:
    deal = make_deal(db, svc.gate, stock=3, limit=2)
    u1, u2, u3 = make_users(db, 3)
    c1, c2, c3 = login_client(app, db, u1), login_client(app, db, u2), login_client(app, db, u3)
    url = f"/api/deals/{deal.id}/orders"
    r = c1.post(url, json={"quantity": 2}, headers={"Idempotency-Key": "abc"})
    assert r.status_code == 202 and r.json["status"] == "accepted"
    first = r.json["order_id"]
    again = c1.post(url, json={"quantity": 2}, headers={"Idempotency-Key": "abc"})
    assert again.status_code == 200 and again.json["order_id"] == first  # a replay: 200 with the current state
    r = c1.post(url, json={"quantity": 1}, headers={"Idempotency-Key": "abc"})
    assert r.status_code == 422 and r.json["error"]["code"] == "idempotency_key_reused"
    r = c1.post(url, json={"quantity": 1})
    assert r.status_code == 409 and r.json["error"]["code"] == "limit_exceeded"
    assert c2.post(url, json={"quantity": 1}).status_code == 202
    r = c3.post(url, json={"quantity": 1})
    assert r.status_code == 409 and r.json["error"]["code"] == "sold_out"
    # the same key by another user is another order
    assert c3.post(url, json={"quantity": 1}, headers={"Idempotency-Key": "abc"}).json["error"]["code"] == "sold_out"
    # a replay of an accepted order still answers after the sale sold out
    assert c1.post(url, json={"quantity": 2}, headers={"Idempotency-Key": "abc"}).json["order_id"] == first


def test_not_open_and_unknown_deal(app, db, svc) -> None:
    later = make_deal(db, svc.gate, starts_in=120)
    c = login_client(app, db, make_users(db, 1)[0])
    r = c.post(f"/api/deals/{later.id}/orders", json={"quantity": 1})
    assert r.status_code == 409 and r.json["error"]["code"] == "deal_not_open"
    r = c.post("/api/deals/987654321/orders", json={"quantity": 1})
    assert r.status_code == 404


def test_order_lookup_owner_admin_other(app, db, svc) -> None:
    deal = make_deal(db, svc.gate, stock=5, limit=1, price="12.34")
    owner, other = make_users(db, 2)
    (admin,) = make_users(db, 1, role="admin")
    co, cx, ca = login_client(app, db, owner), login_client(app, db, other), login_client(app, db, admin)
    oid = co.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    r = co.get(f"/api/orders/{oid}")
    assert r.status_code == 200
    assert r.json | {"admitted_at": None} == {
        "order_id": oid,
        "deal_id": deal.id,
        "user_id": owner,
        "quantity": 1,
        "unit_price": "12.34",
        "status": "accepted",
        "admitted_at": None,
        "pay_by": None,  # a deal without a payment window
        "awaiting_payment": False,
        "currency": "EUR",
    }
    assert cx.get(f"/api/orders/{oid}").status_code == 404
    assert ca.get(f"/api/orders/{oid}").status_code == 200
    assert co.get("/api/orders/not-a-uuid").status_code == 404
    assert co.get(f"/api/orders/{uuid.uuid4()}").status_code == 404
    assert [o["order_id"] for o in co.get("/api/orders").json["items"]] == [oid]
    assert cx.get("/api/orders").json["items"] == []
    # once a worker has persisted it, it reads as confirmed (the row is written here as a worker would)
    with db.transaction() as s:
        s.add(
            Order(
                id=uuid.UUID(oid),
                deal_id=deal.id,
                user_id=owner,
                quantity=1,
                unit_price=Decimal("12.34"),
                status="confirmed",
                admitted_at=datetime.now(UTC),
            )
        )
    svc.redis.delete(svc.keys.deal(deal.id).outbox)
    assert co.get(f"/api/orders/{oid}").json["status"] == "confirmed"
    assert [o["status"] for o in co.get("/api/orders").json["items"]] == ["confirmed"]


def test_cancel_returns_stock_once_then_closed_deal_refuses(app, db, svc) -> None:
    deal = make_deal(db, svc.gate, stock=2, limit=2)
    owner, other = make_users(db, 2)
    co, cx = login_client(app, db, owner), login_client(app, db, other)
    oid = co.post(f"/api/deals/{deal.id}/orders", json={"quantity": 2}).json["order_id"]
    assert cx.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["error"]["code"] == "sold_out"
    assert cx.post(f"/api/orders/{oid}/cancel", headers=ORIGIN).status_code == 404
    r = co.post(f"/api/orders/{oid}/cancel", headers=ORIGIN)
    assert r.status_code == 200 and r.json["status"] == "canceled"
    assert co.post(f"/api/orders/{oid}/cancel", headers=ORIGIN).json["status"] == "canceled"
    assert int(svc.redis.get(svc.keys.deal(deal.id).stock)) == 2
    assert co.get(f"/api/orders/{oid}").json["status"] == "canceled"
    # the stock came back: the other buyer can buy now (the sold-out fast path was cleared)
    oid2 = cx.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    svc.gate.set_window(deal.id, status="ended")
    r = cx.post(f"/api/orders/{oid2}/cancel", headers=ORIGIN)
    assert r.status_code == 409 and r.json["error"]["code"] == "deal_not_open"


def test_order_rate_limit_per_user(settings, db) -> None:
    app = create_app(
        settings.with_(ratelimit_enabled=True, ratelimit_order="3/minute", ratelimit_order_ip="1000/minute")
    )
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=100, limit=100)
    u1, u2 = make_users(db, 2)
    c1, c2 = login_client(app, db, u1), login_client(app, db, u2)
    codes = [c1.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code for _ in range(5)]
    assert codes == [202, 202, 202, 429, 429]
    r = c1.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert r.json["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) > 0
    assert c2.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code == 202


def test_dead_lettered_order_reads_failed(app, db, svc) -> None:
    from shared.models import DeadLetter

    deal = make_deal(db, svc.gate, stock=5, limit=1)
    (owner,) = make_users(db, 1)
    c = login_client(app, db, owner)
    oid = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    with db.transaction() as s:
        s.add(
            DeadLetter(
                order_id=uuid.UUID(oid),
                deal_id=deal.id,
                entry_id="1-0",
                reason="test refusal",
                attempts=3,
                payload={"t": "o", "id": oid, "u": str(owner), "q": "1", "p": "9.99", "ts": "1700000000000"},
            )
        )
    assert c.get(f"/api/orders/{oid}").json["status"] == "failed"  # gate record + dead letter
    svc.gate.unload(deal.id)
    r = c.get(f"/api/orders/{oid}")
    assert r.status_code == 200 and r.json["status"] == "failed"  # dead letter alone
    r = c.post(f"/api/orders/{oid}/cancel", headers=ORIGIN)
    assert r.status_code == 409 and r.json["error"]["code"] == "order_failed"
