"""Proof of origin on every state-changing API call; signup rate limit; replays answer the order's current state."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import ORIGIN, PASSWORD, make_deal, new_user_client, unique_email

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def _api_state_changes(app) -> list[tuple[str, str]]:
    """Every (method, path) under /api that can change state, with its placeholders filled in."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<int:{arg}>", "1").replace(f"<{arg}>", "00000000-0000-0000-0000-000000000001")
        found += [(m, path) for m in sorted((rule.methods or set()) & STATE_CHANGING)]
    return found


def test_every_state_changing_api_call_needs_proof_of_origin(app, db) -> None:
    admin = new_user_client(app, db, "admin")
    calls = _api_state_changes(app)
    assert ("POST", "/api/auth/logout") in calls and (
        "POST",
        "/api/orders/00000000-0000-0000-0000-000000000001/cancel",
    ) in calls
    assert len(calls) >= 7
    for method, path in calls:
        r = admin.open(path, method=method)  # no body, no header: what a bodyless form post sends
        assert r.status_code == 403 and r.json["error"]["code"] == "origin_required", (method, path, r.status_code)
        r = admin.open(path, method=method, data="a=1", content_type="application/x-www-form-urlencoded")
        assert r.status_code == 415, (method, path, r.status_code)
        r = admin.open(path, method=method, data="a=1", content_type="text/plain")
        assert r.status_code == 415, (method, path, r.status_code)
    assert admin.get("/api/me").status_code == 200  # the refused logouts ended nothing


def test_bodyless_calls_pass_with_a_header_or_the_csrf_token(app, db) -> None:
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    buyer = new_user_client(app, db)
    oid = buyer.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    assert buyer.post(f"/api/orders/{oid}/cancel").status_code == 403
    assert buyer.get(f"/api/orders/{oid}").json["status"] == "accepted"  # the refused cancel changed nothing
    assert int(svc.redis.get(svc.keys.deal(deal.id).stock)) == 4
    # The pages' token (the session's CSRF token) is proof too; a wrong one is not.
    page = buyer.get(f"/deals/{deal.id}").data.decode()
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    assert buyer.post(f"/api/orders/{oid}/cancel", headers={"X-CSRF-Token": token + "x"}).status_code == 403
    r = buyer.post(f"/api/orders/{oid}/cancel", headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json["status"] == "canceled"
    assert buyer.post("/api/auth/logout", headers=ORIGIN).status_code == 204
    assert buyer.get("/api/me").status_code == 401


def test_signup_is_rate_limited_per_ip_across_the_api_and_the_page(settings, db) -> None:
    from web import create_app

    app = create_app(settings.with_(ratelimit_enabled=True, ratelimit_signup_ip="3/minute"))
    c = app.test_client()
    n = uuid.uuid4().int
    ip, other = ({"REMOTE_ADDR": f"10.{n % 250}.{n // 250 % 250}.{k}"} for k in (1, 2))  # fresh windows
    for _ in range(2):
        body = {"email": unique_email("rl"), "password": PASSWORD, "name": "Limited"}
        assert c.post("/api/auth/signup", json=body, environ_base=ip).status_code == 201
    token = c.get("/signup", environ_base=ip).data.decode().split('name="csrf_token" value="')[1].split('"')[0]
    form = {"email": unique_email("rl"), "password": PASSWORD, "name": "Limited", "csrf_token": token}
    assert c.post("/signup", data=form, environ_base=ip).status_code == 303  # the third in the shared window
    r = c.post(
        "/api/auth/signup", json={"email": unique_email("rl"), "password": PASSWORD, "name": "L"}, environ_base=ip
    )
    assert r.status_code == 429 and r.json["error"]["code"] == "rate_limited" and "Retry-After" in r.headers
    r = c.post(
        "/api/auth/signup", json={"email": unique_email("rl"), "password": PASSWORD, "name": "L"}, environ_base=other
    )
    assert r.status_code == 201  # per IP: another address is not affected


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_replay_answers_the_orders_current_state(settings, db, fast_path) -> None:
    from web import create_app

    app = create_app(settings.with_(ratelimit_enabled=False, fast_path=fast_path))
    deal = make_deal(db, app.extensions["flashdeal"].gate, stock=5, limit=2)
    buyer = new_user_client(app, db)
    url, key = f"/api/deals/{deal.id}/orders", {"Idempotency-Key": f"replay-{fast_path}"}
    first = buyer.post(url, json={"quantity": 1}, headers=key)
    assert first.status_code == 202 and first.json["status"] == "accepted"
    again = buyer.post(url, json={"quantity": 1}, headers=key)
    assert again.status_code == 200, again.json  # 200: nothing new was placed
    assert again.json == {**first.json, "status": "accepted"}
    oid = first.json["order_id"]
    assert buyer.post(f"/api/orders/{oid}/cancel", headers=ORIGIN).json["status"] == "canceled"
    replay = buyer.post(url, json={"quantity": 1}, headers=key)
    assert replay.status_code == 200 and replay.json["order_id"] == oid
    assert replay.json["status"] == "canceled"  # not "accepted": the order was canceled


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_replay_with_postgresql_unreachable_still_answers_from_the_gate(settings, db, fast_path) -> None:
    from web import create_app

    good = create_app(settings.with_(ratelimit_enabled=False))
    deal = make_deal(db, good.extensions["flashdeal"].gate, stock=5, limit=2)
    buyer = new_user_client(good, db)
    url, key = f"/api/deals/{deal.id}/orders", {"Idempotency-Key": f"pg-down-{fast_path}"}
    first = buyer.post(url, json={"quantity": 1}, headers=key)
    assert first.status_code == 202
    # Same Redis (sessions, gate), PostgreSQL gone: the order is safe in the gate, so is its replay.
    dead_pg = "postgresql+psycopg://postgres@127.0.0.1:1/flashdeal_test_down"
    down = create_app(settings.with_(ratelimit_enabled=False, fast_path=fast_path, database_url=dead_pg))
    c = down.test_client()
    c.set_cookie("flashdeal_session", buyer.get_cookie("flashdeal_session").value)
    r = c.post(url, json={"quantity": 1}, headers=key)
    assert r.status_code == 200 and r.json == first.json, (r.status_code, r.json)
