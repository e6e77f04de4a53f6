"""The waiting room (shared/queue.py, shared/lua/queue.lua, web/queue.py): fair order, one place per buyer, the inlet's
rate and bound, passes bound to buyer and deal, the order path's pass check on both paths, sold out, proof of work."""

from __future__ import annotations

import statistics
import time

import pytest

from shared.deals import deal_stats
from shared.queue import QueueRules, solve_pow
from tests.helpers import login_client, make_deal, make_users
from web import create_app


def _apps(settings, **changes):
    fast = create_app(settings.with_(ratelimit_enabled=False, **changes))
    slow = create_app(settings.with_(ratelimit_enabled=False, fast_path=False, **changes))
    return fast, slow


def _svc(app):
    return app.extensions["flashdeal"]


def _start_now(svc, deal_id: int) -> None:
    """Move a loaded deal's start to now (the pre-queue's draw is over from here on)."""
    svc.redis.hset(svc.keys.deal(deal_id).state, "open_ms", int(time.time() * 1000))


def test_pre_queue_is_a_random_order_and_later_joins_are_fifo(settings, db) -> None:
    fast, _ = _apps(settings)
    svc = _svc(fast)
    # Paused: the line stays whole, and the inlet pops it from its lowest score (ZPOPMIN), in this order.
    deal = make_deal(db, svc.gate, stock=10, starts_in=600, queue=QueueRules(rate=1000, paused=True))
    early, late = list(range(1, 1201)), list(range(5001, 5201))
    for uid in early:
        assert svc.queue.join(deal.id, uid).state == "waiting"
    _start_now(svc, deal.id)
    for uid in late:
        view = svc.queue.join(deal.id, uid)
        assert view.state == "waiting" and view.ahead is not None
    line = svc.redis.zrange(svc.keys.deal(deal.id).queue_line, 0, -1)
    order = [int(u) for u in line]
    assert order[len(early) :] == late  # after the start: first come, first served, behind the pre-queue
    admitted_rank = {u: i for i, u in enumerate(order[: len(early)])}
    # Both are ranks (arrival 0..n-1, place 0..n-1): their Pearson correlation is Spearman's.
    rho = statistics.correlation(list(range(len(early))), [admitted_rank[u] for u in early])
    assert abs(rho) < 0.1, rho  # arriving early in the pre-queue buys no advantage


def test_one_place_per_buyer(settings, db) -> None:
    fast, _ = _apps(settings)
    svc = _svc(fast)
    deal = make_deal(db, svc.gate, stock=10, queue=QueueRules(rate=1))
    svc.redis.hset(svc.keys.deal(deal.id).queue, "paused", 1)
    (u,) = make_users(db, 1)
    c = login_client(fast, db, u)
    # Answered by the fast path (the Flask view would fail), as every join without a surprise is.
    fast.view_functions["queue.room"] = lambda **_: (_ for _ in ()).throw(AssertionError("Flask ran"))
    first = [c.post(f"/api/deals/{deal.id}/queue", json={}).json for _ in range(5)]
    assert {f["position"] for f in first} == {1} and first[0]["state"] == "waiting"
    assert svc.redis.zcard(svc.keys.deal(deal.id).queue_line) == 1


def test_inlet_lets_in_at_the_rate_and_never_beyond_the_live_pass_bound(settings, db) -> None:
    fast, _ = _apps(settings)
    svc = _svc(fast)
    deal = make_deal(db, svc.gate, stock=1000, queue=QueueRules(rate=50, max_live_passes=60))
    for uid in range(1, 301):
        svc.queue.join(deal.id, uid)
    k = svc.keys.deal(deal.id)
    svc.redis.hset(k.queue, "last_ms", int(time.time() * 1000))  # count from now
    start = time.monotonic()
    lets, peak = 0, 0
    while time.monotonic() - start < 1.0:
        lets += svc.queue.inlet(deal.id)
        peak = max(peak, svc.redis.zcard(k.queue_passes))
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    assert abs(lets / elapsed - 50) <= 50 * 0.15, (lets, elapsed)
    while time.monotonic() - start < 2.0:
        lets += svc.queue.inlet(deal.id)
        peak = max(peak, svc.redis.zcard(k.queue_passes))
        time.sleep(0.01)
    assert peak == 60 and svc.redis.zcard(k.queue_passes) == 60  # the bound holds: nobody used a pass


def test_expired_passes_free_their_slots(settings, db) -> None:
    fast, _ = _apps(settings, queue_pass_seconds=1)
    svc = _svc(fast)
    deal = make_deal(db, svc.gate, stock=1000, queue=QueueRules(rate=1000, max_live_passes=2))
    for uid in range(1, 6):
        svc.queue.join(deal.id, uid)
    time.sleep(0.05)
    svc.queue.inlet(deal.id)
    k = svc.keys.deal(deal.id)
    assert svc.redis.zcard(k.queue_passes) == 2 and svc.redis.zcard(k.queue_line) == 3  # the bound: 2 live
    assert svc.queue.status(deal.id, 1).state == "admitted"
    time.sleep(1.1)
    assert svc.queue.inlet(deal.id) == 2  # the two unused passes expired: two more let in
    assert svc.queue.status(deal.id, 1).state == "expired"
    q = deal_stats(svc.db, svc.gate, deal.id).as_dict()["queue"]
    assert q["passes_expired"] == 2 and q["admitted"] == 4 and q["passes_live"] == 2 and q["waiting"] == 1


def _admitted_pass(svc, c, deal_id: int) -> str:
    c.post(f"/api/deals/{deal_id}/queue", json={})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        body = c.get(f"/api/deals/{deal_id}/queue").json
        if body["state"] == "admitted":
            assert body["pass"] and body["pass_expires_at"]
            return body["pass"]
        time.sleep(0.05)
    raise AssertionError(f"never let in: {body}")


@pytest.mark.parametrize("fast_path", [True, False])
def test_orders_need_a_pass_for_this_buyer_and_this_deal(settings, db, fast_path) -> None:
    fast, slow = _apps(settings)
    app = fast if fast_path else slow
    if fast_path:
        app.view_functions["orders.place_order"] = lambda **_: (_ for _ in ()).throw(AssertionError("Flask ran"))
    svc = _svc(app)
    deal = make_deal(db, svc.gate, stock=10, limit=5, queue=QueueRules(rate=1000))
    other = make_deal(db, svc.gate, stock=10, limit=5, queue=QueueRules(rate=1000))
    u1, u2 = make_users(db, 2)
    c1, c2 = login_client(app, db, u1), login_client(app, db, u2)
    url = f"/api/deals/{deal.id}/orders"
    r = c1.post(url, json={"quantity": 1})
    assert r.status_code == 403 and r.json["error"]["code"] == "queue_pass_required"
    pass1 = _admitted_pass(svc, c1, deal.id)
    pass_other = _admitted_pass(svc, c1, other.id)
    for client, token in ((c2, pass1), (c1, pass_other), (c1, pass1[:-2] + "xx"), (c1, "garbage")):
        r = client.post(url, json={"quantity": 1}, headers={"Queue-Pass": token})
        assert r.status_code == 403 and r.json["error"]["code"] == "queue_pass_required", token
    r = c1.post(url, json={"quantity": 1}, headers={"Queue-Pass": pass1})
    assert r.status_code == 202, r.json
    stats = svc.queue.status(deal.id, u1)
    assert stats.state == "admitted"
    assert svc.redis.hget(svc.keys.deal(deal.id).queue, "used") == "1"
    r = c1.post(url, json={"quantity": 1}, headers={"Queue-Pass": pass1})  # still valid: up to the limit
    assert r.status_code == 202 and svc.redis.hget(svc.keys.deal(deal.id).queue, "used") == "1"
    # A deal without a queue needs no pass.
    plain = make_deal(db, svc.gate, stock=10)
    assert c2.post(f"/api/deals/{plain.id}/orders", json={"quantity": 1}).status_code == 202


def test_an_expired_pass_is_refused(settings, db) -> None:
    fast, _ = _apps(settings, queue_pass_seconds=1)
    svc = _svc(fast)
    deal = make_deal(db, svc.gate, stock=10, queue=QueueRules(rate=1000))
    (u,) = make_users(db, 1)
    c = login_client(fast, db, u)
    token = _admitted_pass(svc, c, deal.id)
    time.sleep(2.1)
    r = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}, headers={"Queue-Pass": token})
    assert r.status_code == 403 and r.json["error"]["code"] == "queue_pass_required"


@pytest.mark.parametrize("fast_path", [True, False])
def test_sold_out_reaches_waiting_buyers_at_their_next_poll_and_new_joins_at_once(settings, db, fast_path) -> None:
    fast, slow = _apps(settings)
    app = fast if fast_path else slow
    svc = _svc(app)
    deal = make_deal(db, svc.gate, stock=1, queue=QueueRules(rate=1))
    svc.redis.hset(svc.keys.deal(deal.id).queue, "paused", 1)
    u1, u2, u3 = make_users(db, 3)
    c2 = login_client(app, db, u2)
    assert c2.post(f"/api/deals/{deal.id}/queue", json={}).json["state"] == "waiting"
    svc.redis.set(svc.keys.deal(deal.id).stock, 0)  # the last unit sold
    assert c2.get(f"/api/deals/{deal.id}/queue").json["state"] == "sold_out"
    r = login_client(app, db, u3).post(f"/api/deals/{deal.id}/queue", json={})
    assert r.status_code == 200 and r.json["state"] == "sold_out"


def test_status_poll_is_answered_by_the_fast_path(settings, db) -> None:
    fast, _ = _apps(settings)
    svc = _svc(fast)
    deal = make_deal(db, svc.gate, stock=5, queue=QueueRules(rate=1))
    (u,) = make_users(db, 1)
    c = login_client(fast, db, u)
    c.post(f"/api/deals/{deal.id}/queue", json={})
    fast.view_functions["queue.room"] = lambda **_: (_ for _ in ()).throw(AssertionError("Flask ran"))
    body = c.get(f"/api/deals/{deal.id}/queue").json
    assert body["state"] in ("waiting", "admitted") and body["poll_after_ms"] == settings.queue_poll_ms
    metrics = c.get("/metrics").text  # Prometheus: answers by state, buyers let in
    assert 'flashdeal_queue_answers_total{state="waiting"}' in metrics or 'state="admitted"' in metrics
    assert "flashdeal_queue_let_in_total" in metrics


def test_proof_of_work_required_and_checked(settings, db) -> None:
    fast, _ = _apps(settings)
    svc = _svc(fast)
    deal = make_deal(db, svc.gate, stock=5, queue=QueueRules(rate=1, pow_bits=8))
    other = make_deal(db, svc.gate, stock=5, queue=QueueRules(rate=1, pow_bits=8))
    u1, u2 = make_users(db, 2)
    c1, c2 = login_client(fast, db, u1), login_client(fast, db, u2)
    url = f"/api/deals/{deal.id}/queue"
    for body in ({}, {"challenge": "x", "nonce": "1"}):
        r = c1.post(url, json=body)
        assert r.status_code == 403 and r.json["error"]["code"] == "proof_of_work_required"
    ch = c1.get(f"{url}/challenge").json
    assert ch["bits"] == 8
    nonce = solve_pow(ch["challenge"], 8)
    wrong = next(str(n) for n in range(10**6) if str(n) != nonce and not _solves(ch["challenge"], str(n), 8))
    assert c1.post(url, json={"challenge": ch["challenge"], "nonce": wrong}).status_code == 403
    # Another buyer's, or another deal's, challenge is no proof for this one.
    assert c2.post(url, json={"challenge": ch["challenge"], "nonce": nonce}).status_code == 403
    ch_other = c1.get(f"/api/deals/{other.id}/queue/challenge").json["challenge"]
    assert c1.post(url, json={"challenge": ch_other, "nonce": solve_pow(ch_other, 8)}).status_code == 403
    r = c1.post(url, json={"challenge": ch["challenge"], "nonce": nonce})
    assert r.status_code == 200 and r.json["state"] in ("waiting", "admitted")


def _solves(challenge: str, nonce: str, bits: int) -> bool:
    from shared.queue import pow_solved

    return pow_solved(challenge, nonce, bits)


def test_no_queue_and_unknown_deal(settings, db) -> None:
    fast, _ = _apps(settings)
    svc = _svc(fast)
    plain = make_deal(db, svc.gate, stock=5)
    (u,) = make_users(db, 1)
    c = login_client(fast, db, u)
    r = c.post(f"/api/deals/{plain.id}/queue", json={})
    assert r.status_code == 409 and r.json["error"]["code"] == "no_queue"
    assert c.get(f"/api/deals/{plain.id}/queue").status_code == 409
    assert c.get("/api/deals/999999999/queue").status_code == 404
    assert fast.test_client().get(f"/api/deals/{plain.id}/queue").status_code == 401


def test_join_limits_per_account(settings, db) -> None:
    app = create_app(settings.with_(ratelimit_enabled=True, ratelimit_queue_join="2/minute"))
    svc = _svc(app)
    deal = make_deal(db, svc.gate, stock=5, queue=QueueRules(rate=1))
    (u,) = make_users(db, 1)
    c = login_client(app, db, u)
    codes = [c.post(f"/api/deals/{deal.id}/queue", json={}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_admin_api_and_stats(settings, db) -> None:
    fast, _ = _apps(settings)
    svc = _svc(fast)
    (admin,) = make_users(db, 1, role="admin")
    c = login_client(fast, db, admin)
    r = c.post(
        "/api/admin/deals",
        json={
            "title": "Queued",
            "price": "5.00",
            "stock": 3,
            "per_user_limit": 1,
            "starts_at": "2026-01-01T00:00:00Z",
            "ends_at": "2099-01-01T00:00:00Z",
            "queue": {"rate": 7, "pow_bits": 4},
        },
    )
    assert r.status_code == 201, r.json
    deal_id = r.json["id"]
    q = c.get(f"/api/admin/deals/{deal_id}/stats").json["queue"]
    assert q["rate"] == 7 and q["paused"] is False and q["waiting"] == 0
    assert c.post(f"/api/admin/deals/{deal_id}/queue", json={"rate": 9, "paused": True}).status_code == 200
    q = c.get(f"/api/admin/deals/{deal_id}/stats").json["queue"]
    assert q["rate"] == 9 and q["paused"] is True
    assert svc.queue.pow_bits(deal_id) == 4
    bad = c.post("/api/admin/deals", json={**r.json, "queue": {"rate": 0}})
    assert bad.status_code == 422


def test_polls_with_the_signed_ticket_read_no_session_and_the_ticket_holds_only_beside_its_session(
    settings, db
) -> None:
    fast, _ = _apps(settings)
    svc = _svc(fast)
    deal = make_deal(db, svc.gate, stock=5, queue=QueueRules(rate=1, paused=True))
    u1, u2 = make_users(db, 2)
    c1, c2 = login_client(fast, db, u1), login_client(fast, db, u2)
    assert c2.post(f"/api/deals/{deal.id}/queue", json={}).json["position"] == 1
    assert c1.post(f"/api/deals/{deal.id}/queue", json={}).json["position"] == 2
    ticket = c1.get_cookie("flashdeal_queue", path="/api/deals").value
    url = f"/api/deals/{deal.id}/queue"

    def boom(*_a, **_kw):
        raise AssertionError("read")

    fastpath = fast.wsgi_app
    fastpath.store.load = boom  # no session read, and no Flask: the ticket alone answers
    fast.view_functions["queue.room"] = boom
    assert c1.get(url).json["position"] == 2
    del fastpath.store.load
    # Beside another session (another buyer logged in on that browser), the ticket answers for nobody.
    c2.set_cookie("flashdeal_queue", ticket, path="/api/deals")
    _, slow = _apps(settings)
    fast.view_functions["queue.room"] = slow.view_functions["queue.room"]
    assert c2.get(url).json["position"] == 1
    # Without any session (logged out) it is no proof either: 401.
    bare = fast.test_client()
    bare.set_cookie("flashdeal_queue", ticket, path="/api/deals")
    assert bare.get(url).status_code == 401


def test_make_up_seeds_a_demo_deal_with_an_open_pre_queue(settings, db) -> None:
    from scripts import manage

    fast, _ = _apps(settings)
    svc = _svc(fast)
    deal_id = manage.seed_demo_queue_deal(svc.db, svc.gate, settings.deal_load_ahead_seconds)
    assert manage.seed_demo_queue_deal(svc.db, svc.gate, settings.deal_load_ahead_seconds) == deal_id  # idempotent
    assert svc.redis.hget(svc.keys.deal(deal_id).state, "queue") == "1"  # loaded now: its pre-queue is open
    (u,) = make_users(db, 1)
    c = login_client(fast, db, u)
    ch = c.get(f"/api/deals/{deal_id}/queue/challenge").json
    r = c.post(
        f"/api/deals/{deal_id}/queue",
        json={"challenge": ch["challenge"], "nonce": solve_pow(ch["challenge"], ch["bits"])},
    )
    assert r.status_code == 200 and r.json["state"] == "waiting" and r.json["position"] is None


def test_a_deals_queue_keys_share_its_cluster_slot() -> None:
    from redis.crc import key_slot

    from shared.keys import Keys

    for deal_id in (1, 42, 10**12):
        k = Keys("fd:").deal(deal_id)
        assert len({key_slot(x.encode()) for x in [*k.queue_keys(), *k.admit_keys(), *k.all_keys()]}) == 1


def test_the_scheduler_loads_a_queued_deal_when_its_pre_queue_opens(settings, db) -> None:
    from shared.deals import tick

    fast, _ = _apps(settings)
    svc = _svc(fast)
    rules = QueueRules(rate=5, opens_before_seconds=900)
    queued = make_deal(db, None, stock=5, starts_in=600, queue=rules)  # starts in 10 min, joins open 5 min ago
    later = make_deal(db, None, stock=5, starts_in=600)  # no queue: loaded a minute before its start
    report = tick(svc.db, svc.gate, load_ahead_seconds=60)
    assert queued.id in report.loaded and later.id not in report.loaded
    (u,) = make_users(db, 1)
    assert login_client(fast, db, u).post(f"/api/deals/{queued.id}/queue", json={}).json["state"] == "waiting"


def test_a_cached_poll_ticket_still_expires_and_holds_only_beside_its_session(settings) -> None:
    from web.queue import TICKET_COOKIE, ticket_cookie, ticket_user
    from web.sessions import COOKIE_NAME

    svc = create_app(settings.with_(ratelimit_enabled=False)).extensions["flashdeal"]
    now = time.time()
    sid = "s" * 43
    ticket = ticket_cookie(svc, 7, sid, now)["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]
    header = f"{COOKIE_NAME}={sid}; {TICKET_COOKIE}={ticket}"
    assert ticket_user(svc, header, now) == (7, False)
    assert ticket_user(svc, header, now) == (7, False)  # the second check is the cache's
    assert ticket_user(svc, header, now + svc.settings.session_idle_seconds + 1) is None  # expired, cached or not
    assert ticket_user(svc, f"{COOKIE_NAME}={'t' * 43}; {TICKET_COOKIE}={ticket}", now) is None  # another session
    assert ticket_user(svc, f"{COOKIE_NAME}={'s' * 500}; {TICKET_COOKIE}={ticket}", now) is None  # never a sid
