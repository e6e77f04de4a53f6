"""Payment API through Flask on the real services: the pay endpoint and signed webhooks (dev provider).

Events are built and signed here as the dev provider sends them (its own shape, ``Flashdeal-Dev-Signature:
t=…,v1=HMAC-SHA256(secret, "t.payload")``); Stripe's events are tests/integration/test_payment_providers.py.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from sqlalchemy import text

from shared.payments.providers.dev import SIGNATURE_HEADER, dev_webhook_secret, sign
from tests.helpers import (
    ORIGIN,
    dev_event,
    login_client,
    make_deal,
    make_users,
    set_payment_window_ms,
)


def post_event(client, svc, payload: bytes, header: str | None = None):
    header = header if header is not None else sign(payload, dev_webhook_secret(svc.settings))
    return client.post(
        "/api/payments/webhook", data=payload, headers={SIGNATURE_HEADER: header, "Content-Type": "application/json"}
    )


def buy(app, db, svc, *, window: int = 120, stock: int = 5, qty: int = 1, price: str = "9.99"):
    deal = make_deal(db, svc.gate, stock=stock, limit=5, payment_window=window, price=price)
    (user,) = make_users(db, 1)
    c = login_client(app, db, user)
    r = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": qty})
    assert r.status_code == 202
    return deal, user, c, r.json["order_id"]


def _refunds(db, order_id: str) -> list[tuple]:
    with db.read() as s:
        return list(
            s.execute(text("SELECT reason, payment_id, amount_minor FROM refunds WHERE order_id = :o"), {"o": order_id})
        )


def test_pay_is_idempotent_and_only_for_the_owner(app, db, svc, client) -> None:
    deal, _user, c, oid = buy(app, db, svc)
    assert client.post(f"/api/orders/{oid}/pay", headers=ORIGIN).status_code == 401
    other = login_client(app, db, make_users(db, 1)[0])
    assert other.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["error"]["code"] == "not_found"
    first = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN)
    assert first.status_code == 200, first.json
    assert first.json["provider"] == "dev" and first.json["checkout_url"].startswith("/payments/dev/checkout/")
    assert c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json == first.json
    view = c.get(f"/api/orders/{oid}").json
    assert view["status"] == "accepted" and view["pay_by"] == first.json["pay_by"]
    assert c.post("/api/orders/not-a-uuid/pay", headers=ORIGIN).status_code == 404


def test_pay_refused_without_a_window_and_after_the_deadline(app, db, svc) -> None:
    _deal, _u, c, oid = buy(app, db, svc, window=0)
    r = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN)
    assert r.status_code == 409 and r.json["error"]["code"] == "no_payment_window"
    deal = make_deal(db, svc.gate, stock=5, limit=5, payment_window=60)
    set_payment_window_ms(svc.gate, deal.id, 50)
    oid = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    time.sleep(0.1)
    r = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN)
    assert r.status_code == 409 and r.json["error"]["code"] == "order_expired"


def test_signed_success_pays_once_duplicates_and_late_failures_change_nothing(app, db, svc, client) -> None:
    deal, _user, c, oid = buy(app, db, svc, qty=2, price="4.99")
    pid = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["payment_id"]
    ok = dev_event(oid, deal.id, pid, amount=998)
    r = post_event(client, svc, ok)
    assert r.status_code == 200 and r.json == {"received": True, "outcome": "paid"}
    assert c.get(f"/api/orders/{oid}").json["status"] == "paid"
    assert post_event(client, svc, ok).json["outcome"] == "duplicate"  # the same delivery again
    failed = post_event(client, svc, dev_event(oid, deal.id, pid, ok=False, amount=998))  # out of order
    assert failed.json["outcome"] == "ignored"
    assert c.get(f"/api/orders/{oid}").json["status"] == "paid"
    assert c.post(f"/api/orders/{oid}/cancel", headers=ORIGIN).json["error"]["code"] == "order_paid"
    assert _refunds(db, oid) == []
    assert int(svc.redis.get(svc.keys.deal(deal.id).stock)) == 3


@pytest.mark.parametrize("attack", ["tampered", "wrong_secret", "no_header", "stale", "garbage"])
def test_bad_signatures_are_400_and_change_nothing(app, db, svc, client, attack) -> None:
    deal, _user, c, oid = buy(app, db, svc)
    pid = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["payment_id"]
    payload = dev_event(oid, deal.id, pid)
    secret = dev_webhook_secret(svc.settings)
    header = {
        "tampered": sign(payload, secret),
        "wrong_secret": sign(payload, "whsec_not_ours"),
        "no_header": "",
        "stale": sign(payload, secret, int(time.time()) - 3600),  # a captured event replayed an hour later
        "garbage": "t=1,v1=00",
    }[attack]
    if attack == "tampered":
        payload = payload.replace(b'"amount": 999', b'"amount": 1')
        assert b'"amount": 1,' in payload
    r = post_event(client, svc, payload, header)
    assert r.status_code == 400 and r.json["error"]["code"] == "bad_signature"
    assert c.get(f"/api/orders/{oid}").json["status"] == "accepted"
    assert not svc.redis.hlen(svc.keys.deal(deal.id).events)


def test_success_after_expiry_is_refunded_and_reported(app, db, svc, client) -> None:
    deal, user, c, oid = buy(app, db, svc)
    set_payment_window_ms(svc.gate, deal.id, 60)
    pid = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["payment_id"]
    late = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]  # pay_by 60 ms away
    time.sleep(0.1)
    payload = dev_event(late, deal.id, pid.replace(oid.replace("-", ""), late.replace("-", "")))
    r = post_event(client, svc, payload)
    assert r.json["outcome"] == "refund"
    assert c.get(f"/api/orders/{late}").json["status"] == "expired"
    assert [x[0] for x in _refunds(db, late)] == ["expired"]
    assert post_event(client, svc, payload).json["outcome"] == "duplicate"
    assert len(_refunds(db, late)) == 1  # reported once
    assert int(svc.redis.get(svc.keys.deal(deal.id).stock)) == 4  # the first order still holds its unit
    assert user


def test_wrong_amount_is_never_marked_paid(app, db, svc, client) -> None:
    deal, _user, c, oid = buy(app, db, svc)
    pid = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["payment_id"]
    r = post_event(client, svc, dev_event(oid, deal.id, pid, amount=1))
    assert r.json["outcome"] == "refund" and [x[0] for x in _refunds(db, oid)] == ["amount_mismatch"]
    assert c.get(f"/api/orders/{oid}").json["status"] == "accepted"


def test_events_not_about_our_orders_are_acknowledged_and_ignored(app, db, svc, client) -> None:
    other = json.dumps({"id": "evt_x", "type": "payment.other", "payment": {"id": "ch_1"}})
    assert post_event(client, svc, other.encode()).json["outcome"] == "ignored"
    assert post_event(client, svc, dev_event("nope", 1, "pi_1")).json["outcome"] == "ignored"


def test_an_unpaid_order_keeps_its_deal_and_a_resend_after_retirement_refunds_nothing(app, db, svc, client) -> None:
    """Retirement waits for every payment decision; afterwards PostgreSQL answers for the forgotten gate."""
    from shared.deals import close_now
    from shared.retire import retire_deal
    from worker.drain import DrainOptions, drain_deal

    deal, _user, c, oid = buy(app, db, svc)
    pid = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["payment_id"]
    close_now(db, svc.gate, deal.id)
    drain_deal(db, svc.redis, svc.keys, deal.id, "t-pay-retire", DrainOptions(batch_size=100, budget_s=10.0))
    verdict = retire_deal(db, svc.gate, deal.id)
    assert (verdict.outcome, verdict.count) == ("unpaid", 1)  # the order may still be paid: the gate stays
    ok = dev_event(oid, deal.id, pid)
    assert post_event(client, svc, ok).json["outcome"] == "paid"
    drain_deal(db, svc.redis, svc.keys, deal.id, "t-pay-retire", DrainOptions(batch_size=100, budget_s=10.0))
    assert retire_deal(db, svc.gate, deal.id).outcome == "retired"
    assert svc.gate.find_order(oid, deal.id) is None
    # The provider resends the same success (our answer was lost): the order's own payment, kept.
    again = post_event(client, svc, dev_event(oid, deal.id, pid))
    assert again.status_code == 200 and again.json["outcome"] == "duplicate"
    assert _refunds(db, oid) == []
    # A second, different payment for the same order still goes back.
    other = post_event(client, svc, dev_event(oid, deal.id, f"pi_{uuid.uuid4().hex}"))
    assert other.status_code == 200
    assert [r[0] for r in _refunds(db, oid)] == ["duplicate_payment"]
    assert c.get(f"/api/orders/{oid}").json["status"] == "paid"
    # Events after retirement are decided from PostgreSQL and written nowhere in Redis: no key of the deal is
    # recreated (nothing would ever delete it), whatever the event says.
    assert post_event(client, svc, dev_event(oid, deal.id, pid, ok=False)).status_code == 200
    assert post_event(client, svc, dev_event(oid, deal.id, pid)).status_code == 200
    assert svc.redis.exists(*svc.keys.deal(deal.id).all_keys()) == 0


def test_a_success_while_redis_lost_the_deal_is_answered_503_never_refunded_and_pays_after_the_rebuild(
    app, db, svc, client
) -> None:
    """Redis restarted empty, the deal not rebuilt yet: the event comes again later, the money is kept."""
    from shared.deals import deal_row, load_deal
    from worker.drain import DrainOptions, drain_deal

    deal, _user, c, oid = buy(app, db, svc)
    pid = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["payment_id"]
    drain_deal(db, svc.redis, svc.keys, deal.id, "t-pay-lost", DrainOptions(batch_size=100, budget_s=10.0))
    svc.gate.unload(deal.id)  # what a Redis restarted empty holds of the deal: nothing; PostgreSQL: confirmed
    ok = dev_event(oid, deal.id, pid)
    r = post_event(client, svc, ok)
    assert r.status_code == 503 and r.json["error"]["code"] == "deal_not_loaded" and r.headers["Retry-After"]
    assert _refunds(db, oid) == []
    assert svc.redis.exists(*svc.keys.deal(deal.id).all_keys()) == 0  # nothing written meanwhile
    with db.transaction() as s:
        load_deal(s, svc.gate, deal_row(s, deal.id))  # the rebuild (beat's tick) restores the unpaid order
    assert post_event(client, svc, ok).json["outcome"] == "paid"  # the provider's resend
    assert c.get(f"/api/orders/{oid}").json["status"] == "paid"
    assert _refunds(db, oid) == []


def test_prices_carry_their_currency_a_deal_its_regular_price_and_orders_awaiting_payment_say_so(
    app, db, svc, client
) -> None:
    from datetime import UTC, datetime, timedelta

    admin = login_client(app, db, make_users(db, 1, role="admin")[0])
    now = datetime.now(UTC)
    body = {"title": "Blender", "price": "30.00", "regular_price": "40.00", "stock": 5, "per_user_limit": 2,
            "starts_at": (now - timedelta(minutes=1)).isoformat(), "ends_at": (now + timedelta(hours=1)).isoformat(),
            "payment_window_seconds": 600}  # fmt: skip
    r = admin.post("/api/admin/deals", json=body)
    assert r.status_code == 201, r.json
    assert (r.json["price"], r.json["currency"], r.json["regular_price"], r.json["discount_percent"]) == (
        "30.00",
        "EUR",
        "40.00",
        25,
    )
    below = admin.post("/api/admin/deals", json={**body, "regular_price": "20.00"})
    assert below.status_code == 422 and below.json["error"]["code"] == "invalid"
    deal_id = r.json["id"]
    item = next(d for d in client.get("/api/deals").json["items"] if d["id"] == deal_id)
    assert (item["currency"], item["regular_price"], item["discount_percent"]) == ("EUR", "40.00", 25)
    _deal, _user, c, _other = buy(app, db, svc)  # a buyer of another deal, logged in
    oid = c.post(f"/api/deals/{deal_id}/orders", json={"quantity": 1}).json["order_id"]
    mine = {o["order_id"]: o for o in c.get("/api/orders").json["items"]}[oid]
    assert mine["awaiting_payment"] is True and mine["currency"] == "EUR" and mine["pay_by"]
    pid = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["payment_id"]
    assert post_event(client, svc, dev_event(oid, deal_id, pid, amount=3000)).json["outcome"] == "paid"
    mine = {o["order_id"]: o for o in c.get("/api/orders").json["items"]}[oid]
    assert (mine["status"], mine["awaiting_payment"]) == ("paid", False)
