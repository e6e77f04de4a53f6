"""Payment windows with real Celery workers and beat, a real web process and SIGKILL.

Every order of a deal with a payment window ends exactly one way (paid, expired or canceled), its units are
back exactly when it did not end paid, PostgreSQL follows through the outbox, and a payment that lost is
refunded and reported.
"""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import text

from harness.waits import wait_until
from shared.gate import Admission, Gate, lua_source
from shared.keys import Keys
from shared.payments.providers.dev import dev_webhook_secret, payment_id_of
from tests.helpers import (
    ORIGIN,
    PASSWORD,
    CeleryProcs,
    dev_event,
    dev_headers,
    email_of,
    make_deal,
    make_users,
    outbox_empty,
    set_payment_window_ms,
)

pytestmark = pytest.mark.slow


@pytest.fixture()
def gate(settings, rds) -> Gate:
    return Gate(rds, Keys(settings.key_prefix), settings.drain_kick_ms)


def statuses(db, deal_id: int) -> dict[str, str]:
    with db.read() as s:
        return {
            str(r[0]): r[1] for r in s.execute(text("SELECT id, status FROM orders WHERE deal_id = :d"), {"d": deal_id})
        }


def refunds(db, deal_id: int) -> dict[str, str]:
    with db.read() as s:
        rows = s.execute(text("SELECT order_id, reason FROM refunds WHERE deal_id = :d"), {"d": deal_id})
        return {str(r[0]): r[1] for r in rows}


def stock(gate: Gate, deal_id: int) -> int:
    return int(gate.redis.get(gate.keys.deal(deal_id).stock))


def deliver(server, payload: bytes, secret: str) -> requests.Response:
    """Post a signed event to the webhook, as the provider does."""
    return requests.post(
        server.url + "/api/payments/webhook",
        data=payload,
        headers=dev_headers(payload, secret),
    )


def session_for(server, db, user: int) -> requests.Session:
    s = requests.Session()
    r = s.post(server.url + "/api/auth/login", json={"email": email_of(db, user), "password": PASSWORD})
    assert r.ok, r.text
    return s


def test_unpaid_order_expires_and_someone_else_buys_its_units(db, gate, celery_procs: CeleryProcs) -> None:
    deal = make_deal(db, gate, stock=2, limit=2, payment_window=2)
    a, b = make_users(db, 2)
    first = gate.admit(deal.id, a, 2, str(uuid.uuid4()))
    assert first.outcome is Admission.ACCEPTED
    assert gate.admit(deal.id, b, 1, str(uuid.uuid4())).outcome is Admission.SOLD_OUT
    celery_procs.worker("w1")
    celery_procs.beat()
    pay_by = gate.find_order(first.order_id, deal.id).pay_by.timestamp()
    assert wait_until(lambda: stock(gate, deal.id) == 2, 15, 0.05)  # beat's sweep, no request involved
    assert time.time() >= pay_by  # never before the deadline
    second = gate.admit(deal.id, b, 2, str(uuid.uuid4()))
    assert second.outcome is Admission.ACCEPTED
    assert wait_until(
        lambda: statuses(db, deal.id) == {first.order_id: "expired", second.order_id: "confirmed"}, 20, 0.1
    ), statuses(db, deal.id)
    assert gate.redis.hget(gate.keys.deal(deal.id).buyers, str(a)) == "0"


def test_pay_racing_expiry_from_many_threads_with_real_workers(db, gate, web_server, celery_procs: CeleryProcs) -> None:
    total, n = 1000, 300
    deal = make_deal(db, gate, stock=total, limit=30, payment_window=60)
    set_payment_window_ms(gate, deal.id, 1000)
    users = make_users(db, 50)
    server = web_server({"CELERY_QUEUE": celery_procs.queue})
    celery_procs.worker("w1")
    celery_procs.beat()
    orders: dict[str, int] = {}
    for i in range(n):  # deadlines spread over the admission time
        r = gate.admit(deal.id, users[i % 50], 1 + i % 3, str(uuid.uuid4()))
        assert r.outcome is Admission.ACCEPTED
        orders[r.order_id] = 1 + i % 3
        time.sleep(0.002)
    # Paying starts about when the first deadlines fall and, shuffled, runs past the last ones.
    secret = dev_webhook_secret(gate_settings(db))
    plan = list(orders)
    random.Random(3).shuffle(plan)

    def pay(oid: str) -> str:
        payload = dev_event(oid, deal.id, payment_id_of(oid, deal.id), amount=999 * orders[oid])
        r = deliver(server, payload, secret)
        assert r.status_code == 200, r.text
        return r.json()["outcome"]

    with ThreadPoolExecutor(16) as pool:
        outcomes = dict(zip(plan, pool.map(pay, plan), strict=True))
    assert wait_until(lambda: len(statuses(db, deal.id)) == n and outbox_empty(gate, deal.id), 30, 0.2)
    assert wait_until(lambda: set(statuses(db, deal.id).values()) <= {"paid", "expired"}, 30, 0.2), statuses(
        db, deal.id
    )
    final = statuses(db, deal.id)
    paid = {o for o, s in final.items() if s == "paid"}
    expired = {o for o, s in final.items() if s == "expired"}
    assert paid and expired, "no race: every payment came before, or after, every deadline"
    assert paid == {o for o, r in outcomes.items() if r == "paid"}
    assert set(refunds(db, deal.id)) == {o for o, r in outcomes.items() if r == "refund"} <= expired
    held = sum(q for o, q in orders.items() if gate.find_order(o, deal.id).state == "accepted")
    assert held == 0
    assert stock(gate, deal.id) + held + sum(orders[o] for o in paid) == total


def gate_settings(db):
    """The settings the web process derives its dev webhook secret from (same environment as the tests)."""
    from shared.settings import Settings

    return Settings.from_env().with_(env="test")


def test_sweep_sigkilled_mid_storm_expires_each_order_exactly_once(db, gate, celery_procs: CeleryProcs) -> None:
    n = 6000
    deal = make_deal(db, gate, stock=n, limit=n, payment_window=60)
    set_payment_window_ms(gate, deal.id, 50)
    users = make_users(db, 100)
    k = gate.keys.deal(deal.id)
    sha = gate.redis.script_load(lua_source("admit"))
    pipe = gate.redis.pipeline(transaction=False)
    for i in range(n):
        pipe.evalsha(sha, len(k.gate_keys()), *k.gate_keys(), users[i % 100], 1, str(uuid.uuid4()), "", 100)
    assert all(r[0] == "accepted" for r in pipe.execute())
    time.sleep(0.1)
    slow = {"EXPIRY_SWEEP_BATCH": "5"}  # many small atomic steps: the kill lands between or inside them
    w1 = celery_procs.worker("w1", slow)
    from worker import app

    app.send_task("flashdeal.expire_due_deal", args=[deal.id], queue=celery_procs.queue)
    assert wait_until(lambda: stock(gate, deal.id) >= 200, 30, 0.005)
    w1.kill()
    killed_at = stock(gate, deal.id)
    assert killed_at < n, "the sweep finished before the kill; the test proves nothing"
    celery_procs.worker("w2")
    celery_procs.beat()
    assert wait_until(lambda: stock(gate, deal.id) == n, 30, 0.1)
    assert wait_until(lambda: outbox_empty(gate, deal.id) and len(statuses(db, deal.id)) == n, 60, 0.2)
    assert set(statuses(db, deal.id).values()) == {"expired"}
    with db.read() as s:
        expired_qty = s.execute(text("SELECT sum(quantity) FROM orders WHERE deal_id = :d"), {"d": deal.id}).scalar()
    assert expired_qty == n and gate.redis.zcard(k.due) == 0
    assert {v for v in gate.redis.hvals(k.buyers)} == {"0"}  # every buyer's quantity came back once


def test_cancel_racing_payment_ends_one_way(db, gate, web_server, celery_procs: CeleryProcs) -> None:
    total, n = 200, 60
    deal = make_deal(db, gate, stock=total, limit=20, payment_window=120)
    users = make_users(db, 6)  # ten orders each: a login (argon2, ~0.7 s here) costs more than the race itself
    server = web_server({"CELERY_QUEUE": celery_procs.queue})  # its drain kicks reach our worker
    celery_procs.worker("w1")
    sessions = {u: session_for(server, db, u) for u in users}
    orders = {}
    for u in users * 10:
        r = sessions[u].post(f"{server.url}/api/deals/{deal.id}/orders", json={"quantity": 2})
        assert r.status_code == 202
        orders[r.json()["order_id"]] = u
    secret = dev_webhook_secret(gate_settings(db))

    def cancel(oid: str) -> int:
        return sessions[orders[oid]].post(f"{server.url}/api/orders/{oid}/cancel", headers=ORIGIN).status_code

    def pay(oid: str) -> str:
        payload = dev_event(oid, deal.id, payment_id_of(oid, deal.id), amount=1998)
        r = deliver(server, payload, secret)
        return r.json()["outcome"]

    with ThreadPoolExecutor(16) as pool:
        cancels = {o: pool.submit(cancel, o) for o in orders}
        pays = {o: pool.submit(pay, o) for o in orders}
        c = {o: f.result() for o, f in cancels.items()}
        p = {o: f.result() for o, f in pays.items()}
    assert wait_until(lambda: outbox_empty(gate, deal.id) and len(statuses(db, deal.id)) == n, 30, 0.2)
    final = statuses(db, deal.id)
    assert set(final.values()) <= {"paid", "canceled"}
    for oid, state in final.items():
        if state == "paid":
            assert p[oid] == "paid" and c[oid] == 409  # the cancel was refused
        else:
            assert c[oid] == 200 and p[oid] == "refund"  # the payment was given back
    assert set(refunds(db, deal.id)) == {o for o, s in final.items() if s == "canceled"}
    assert stock(gate, deal.id) + 2 * sum(1 for s in final.values() if s == "paid") == total


def test_a_payment_whose_webhook_never_came_is_decided_by_beats_check_job(
    db,
    gate,
    web_server,
    celery_procs: CeleryProcs,
) -> None:
    """The provider took the money, its event never reached us: the order is paid, never expired or refunded."""
    deal = make_deal(db, gate, stock=3, limit=3, payment_window=4, price="2.50")
    # The dev provider's events go to a port nothing listens on: every delivery fails.
    server = web_server({"CELERY_QUEUE": celery_procs.queue, "DEV_WEBHOOK_URL": "http://127.0.0.1:9"})
    s = session_for(server, db, make_users(db, 1)[0])
    paid = s.post(f"{server.url}/api/deals/{deal.id}/orders", json={"quantity": 1}).json()["order_id"]
    unpaid = s.post(f"{server.url}/api/deals/{deal.id}/orders", json={"quantity": 1}).json()["order_id"]
    url = server.url + s.post(f"{server.url}/api/orders/{paid}/pay", headers=ORIGIN).json()["checkout_url"]
    s.post(f"{server.url}/api/orders/{unpaid}/pay", headers=ORIGIN)  # opened, never paid
    r = requests.post(url, json={"card": "4242424242424242"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "webhook_failed"  # taken; its event lost
    celery_procs.worker("w1")
    celery_procs.beat()
    assert wait_until(lambda: statuses(db, deal.id) == {paid: "paid", unpaid: "expired"}, 60, 0.2), statuses(
        db, deal.id
    )
    assert refunds(db, deal.id) == {}
    assert stock(gate, deal.id) == 2
