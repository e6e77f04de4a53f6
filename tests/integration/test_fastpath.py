"""The order fast path (web/fastpath.py) answers exactly what the Flask view answers, or hands over."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.helpers import ORIGIN, login_client, make_deal, make_users, views_forbidden
from web import create_app
from web.fastpath import FastPath


def _apps(settings):
    fast = create_app(settings.with_(ratelimit_enabled=False))
    slow = create_app(settings.with_(ratelimit_enabled=False, fast_path=False))
    return fast, slow


def test_fast_path_is_on_by_default_with_or_without_rate_limits(settings) -> None:
    fast, slow = _apps(settings)
    assert isinstance(fast.wsgi_app, FastPath) and fast.wsgi_app.enabled and fast.wsgi_app.orders
    assert not slow.wsgi_app.enabled
    limited = create_app(settings.with_(ratelimit_enabled=True)).wsgi_app
    assert limited.enabled and limited.orders


def test_rate_limits_count_in_the_same_windows_on_both_paths(settings, db) -> None:
    """The order windows are shared: orders counted by one path are seen by the other."""
    limited = settings.with_(ratelimit_enabled=True, ratelimit_order="3/minute", ratelimit_order_ip="1000/minute")
    fast = create_app(limited)
    svc = fast.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=100, limit=100)
    u1, u2 = make_users(db, 2)
    c1 = login_client(fast, db, u1)
    views_forbidden(fast, "orders.place_order")
    # Three orders within the limit: all answered by the fast path (the Flask view would raise).
    assert [c1.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code for _ in range(3)] == [202] * 3
    # The window is full for the Flask path too (a plain Flask app on the same Redis).
    slow = create_app(limited.with_(fast_path=False))
    r = login_client(slow, db, u1).post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert r.status_code == 429 and r.json["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) > 0
    # And the other way round: orders counted by the Flask view fill the fast path's window.
    slow = create_app(limited.with_(fast_path=False))
    c2 = login_client(slow, db, u2)
    assert [c2.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code for _ in range(3)] == [202] * 3
    fast = create_app(limited)
    r = login_client(fast, db, u2).post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


def test_per_ip_limit_on_the_fast_path(settings, db) -> None:
    limited = settings.with_(ratelimit_enabled=True, ratelimit_order="1000/minute", ratelimit_order_ip="2/minute")
    app = create_app(limited)
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=100, limit=100)
    clients = [login_client(app, db, u) for u in make_users(db, 3)]
    codes = [c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code for c in clients]
    assert codes == [202, 202, 429]


def test_plain_order_is_answered_without_flask(settings, db) -> None:
    fast, _slow = _apps(settings)
    svc = fast.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    c = login_client(fast, db, make_users(db, 1)[0])
    views_forbidden(fast, "orders.place_order")
    r = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 2}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 202 and r.json["status"] == "accepted" and r.json["quantity"] == 2
    assert r.headers["Content-Type"] == "application/json" and "Cookie" in r.headers["Vary"]
    again = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 2}, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json["order_id"] == r.json["order_id"]
    assert c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code == 409
    assert int(svc.redis.get(svc.keys.deal(deal.id).stock)) == 3


def _scenarios(db, gate):
    """(name, deal id, json body or raw bytes, headers, login?) covering every answer of the endpoint."""
    open_deal = make_deal(db, gate, stock=3, limit=2)
    gone = make_deal(db, gate, stock=1, limit=1)
    assert gate.admit(gone.id, make_users(db, 1)[0], 1, str(uuid.uuid4())).order_id  # someone else bought it all
    later = make_deal(db, gate, starts_in=3600)
    ok = {"quantity": 1}
    return [
        ("accepted", open_deal.id, ok, {}, True),
        ("idem first", open_deal.id, ok, {"Idempotency-Key": "same"}, True),
        ("idem replay", open_deal.id, ok, {"Idempotency-Key": "same"}, True),
        ("idem other body", open_deal.id, {"quantity": 2}, {"Idempotency-Key": "same"}, True),
        ("above limit", open_deal.id, {"quantity": 3}, {}, True),
        ("limit reached", open_deal.id, {"quantity": 1}, {}, True),
        ("sold out", gone.id, ok, {}, True),
        ("not open yet", later.id, ok, {}, True),
        ("no such deal", 987654321, ok, {}, True),
        ("bad idem key", open_deal.id, ok, {"Idempotency-Key": "has space"}, True),
        ("anonymous", open_deal.id, ok, {}, False),
        ("zero", open_deal.id, {"quantity": 0}, {}, True),
        ("string", open_deal.id, {"quantity": "1"}, {}, True),
        ("extra field", open_deal.id, {"quantity": 1, "x": 1}, {}, True),
        ("not json", open_deal.id, b"quantity=1", {"Content-Type": "application/x-www-form-urlencoded"}, True),
        ("malformed", open_deal.id, b"{", {"Content-Type": "application/json"}, True),
        ("array", open_deal.id, [1], {}, True),
        ("leading zero", f"0{open_deal.id}", ok, {}, True),
    ]


def test_fast_path_answers_what_the_flask_view_answers(settings, db) -> None:
    """The same sequence of requests, once with the fast path and once without: same statuses and bodies."""
    answers = []
    for app in _apps(settings):
        svc = app.extensions["flashdeal"]
        user = make_users(db, 1)[0]
        buyer, anonymous = login_client(app, db, user), app.test_client()
        seen = []
        for name, deal_id, body, headers, logged_in in _scenarios(db, svc.gate):
            c = buyer if logged_in else anonymous
            kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
            r = c.post(f"/api/deals/{deal_id}/orders", headers=headers, **kwargs)
            payload = dict(r.json)
            if "order_id" in payload:
                payload["order_id"] = "<id>"
            if "deal_id" in payload:
                payload["deal_id"] = "<deal>"
            if "error" in payload:
                payload["error"] = {**payload["error"], "message": payload["error"]["message"].split(" ")[0]}
            seen.append((name, r.status_code, payload))
        answers.append(seen)
    fast, slow = answers
    assert fast == slow
    statuses = {name: status for name, status, _ in fast}
    assert statuses["accepted"] == 202 and statuses["idem replay"] == 200 and statuses["sold out"] == 409
    assert statuses["no such deal"] == 404 and statuses["anonymous"] == 401 and statuses["not json"] == 415


def test_a_session_due_for_refresh_is_refreshed(settings, db) -> None:
    """On the session path the idle timeout is still pushed forward: such a request goes to Flask, which rewrites it."""
    app = create_app(settings.with_(ratelimit_enabled=False, session_refresh_seconds=1))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5)
    c = login_client(app, db, make_users(db, 1)[0])

    def session_path_order() -> int:
        c.set_cookie("flashdeal_order", "x" * 20, path="/")  # unusable: the session proves the buyer
        return c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code

    sid = c.get_cookie("flashdeal_session").value
    store = app.session_interface
    seen_at_login = store.load(sid)["seen"]
    assert session_path_order() == 202
    assert store.load(sid)["seen"] == seen_at_login  # answered by the fast path: no write
    time.sleep(1.1)
    assert session_path_order() == 202
    assert store.load(sid)["seen"] > seen_at_login


@pytest.mark.parametrize("fast_path", [True, False])
def test_logout_ends_ordering_at_once(settings, db, fast_path) -> None:
    app = create_app(settings.with_(ratelimit_enabled=False, fast_path=fast_path))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5)
    c = login_client(app, db, make_users(db, 1)[0])
    assert c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code == 202
    assert c.post("/api/auth/logout", headers=ORIGIN).status_code == 204
    r = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert r.status_code == 401


def test_redis_down_is_503_not_500(settings, db) -> None:
    """Redis unreachable: a clear 503 in the JSON error shape, with Retry-After."""
    app = create_app(settings.with_(ratelimit_enabled=False, redis_url="redis://127.0.0.1:1/0"))
    c = app.test_client()
    c.set_cookie("flashdeal_session", uuid.uuid4().hex)
    r = c.post("/api/deals/1/orders", json={"quantity": 1})
    assert r.status_code == 503 and r.json["error"]["code"] == "unavailable" and r.headers["Retry-After"] == "1"


def test_an_unexpected_error_is_answered_in_the_json_shape(settings, db, monkeypatch) -> None:
    import web.fastpath

    fast, _slow = _apps(settings)
    svc = fast.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    c = login_client(fast, db, make_users(db, 1)[0])

    def broken(*_a, **_kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(web.fastpath, "admit_order", broken)
    r = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert r.status_code == 500 and r.json["error"]["code"] == "internal_error"


def test_deal_reads_are_answered_without_flask_and_show_live_stock(settings, db) -> None:
    fast, _slow = _apps(settings)
    svc = fast.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    c = login_client(fast, db, make_users(db, 1)[0])
    views_forbidden(fast, "deals.get_deal", "deals.list_deals")
    r = c.get(f"/api/deals/{deal.id}")
    assert r.status_code == 200 and r.json["remaining_stock"] == 5 and r.json["status"] == "open"
    assert r.headers["Content-Type"] == "application/json" and "Set-Cookie" not in r.headers
    assert c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 2}).status_code == 202
    assert c.get(f"/api/deals/{deal.id}").json["remaining_stock"] == 3  # live, never cached
    listed = c.get("/api/deals?status=open&per_page=100").json
    assert {"id": deal.id, "remaining_stock": 3} in [
        {k: i[k] for k in ("id", "remaining_stock")} for i in listed["items"]
    ]
    assert c.get("/api/deals").status_code == 200
    # What the fast path leaves to Flask reaches the (here failing) view: a query that does not validate.
    assert c.get("/api/deals?per_page=0").status_code == 500


def _read_paths(db, gate) -> list[tuple[str, int, str | None]]:
    """Deal reads covering every answer of the two endpoints: (path, expected status, expected error code)."""
    deal = make_deal(db, gate, stock=7, limit=1)
    later = make_deal(db, gate, starts_in=3600)
    unloaded = make_deal(db, None, stock=4, starts_in=7 * 86400)
    return [
        (f"/api/deals/{deal.id}", 200, None),
        (f"/api/deals/{later.id}", 200, None),
        (f"/api/deals/{unloaded.id}", 200, None),
        ("/api/deals/987654321", 404, "not_found"),
        (f"/api/deals/0{deal.id}", 404, "not_found"),
        ("/api/deals/99999999999999999999999", 404, "not_found"),  # beyond bigint: no route, not a 500
        ("/api/deals/9223372036854775808", 404, "not_found"),  # bigint's maximum + 1
        ("/api/deals/9223372036854775807", 404, "not_found"),  # the maximum itself: a valid id, no such deal
        ("/api/deals", 200, None),
        ("/api/deals?status=open", 200, None),
        ("/api/deals?status=active&per_page=3&page=2", 200, None),
        ("/api/deals?status=open&status=ended", 200, None),
        ("/api/deals?per_page=0", 422, "invalid"),
        ("/api/deals?status=nope", 422, "invalid"),
        ("/api/deals?page=x", 422, "invalid"),
        ("/api/deals?unknown=1", 422, "invalid"),
        ("/api/deals?", 200, None),
    ]


@pytest.mark.parametrize("logged_in", [True, False])
def test_deal_reads_answer_what_the_flask_views_answer(settings, db, logged_in) -> None:
    """The same reads with and without the fast path: the expected status, and the same bodies and headers."""
    fast, slow = _apps(settings)
    user = make_users(db, 1)[0]
    clients = [login_client(app, db, user) if logged_in else app.test_client() for app in (fast, slow)]
    for path, status, code in _read_paths(db, fast.extensions["flashdeal"].gate):
        r_fast, r_slow = (c.get(path) for c in clients)
        # Against the expected answer first: two paths failing alike (both 500) must not pass.
        assert (r_fast.status_code, r_slow.status_code) == (status, status), path
        if code is not None:
            assert r_fast.json["error"]["code"] == code, path
        elif "?" not in path and path != "/api/deals":
            assert r_fast.json["id"] == int(path.rsplit("/", 1)[1]), path
        assert (r_fast.status_code, r_fast.json) == (r_slow.status_code, r_slow.json), path
        for header in ("Content-Type", "Vary", "Set-Cookie", "Retry-After"):
            assert r_fast.headers.get(header) == r_slow.headers.get(header), (path, header)


def test_deal_reads_with_redis_down_are_503(settings) -> None:
    app = create_app(settings.with_(ratelimit_enabled=False, redis_url="redis://127.0.0.1:1/0"))
    c = app.test_client()
    for path in ("/api/deals/1", "/api/deals", "/api/deals?status=open"):
        r = c.get(path)
        assert r.status_code == 503 and r.json["error"]["code"] == "unavailable" and r.headers["Retry-After"] == "1"


def test_fast_path_answers_are_counted_in_the_metrics(settings, db) -> None:
    from web.metrics import REQUESTS

    def count(endpoint: str, method: str, status: str) -> float:
        return REQUESTS.labels(endpoint, method, status)._value.get()

    fast, _slow = _apps(settings)
    svc = fast.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=1)
    c = login_client(fast, db, make_users(db, 1)[0])
    views_forbidden(fast, "deals.get_deal", "deals.list_deals", "orders.place_order")
    labels = [
        ("/api/deals/<int:deal_id>", "GET", "200"),
        ("/api/deals/<int:deal_id>", "GET", "404"),
        ("/api/deals", "GET", "200"),
        ("/api/deals/<int:deal_id>/orders", "POST", "202"),
    ]
    before = [count(*label) for label in labels]
    c.get(f"/api/deals/{deal.id}")
    c.get("/api/deals/987654321")
    c.get("/api/deals")
    c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert [count(*label) - b for label, b in zip(labels, before, strict=True)] == [1, 1, 1, 1]


def test_an_app_keeps_only_its_own_limiter_storage_options(settings, db, monkeypatch) -> None:
    """The limiter is one per process: an app made before (another topology's options) must not leak into the next."""
    import web.limits

    monkeypatch.setattr(web.limits, "limits_storage_options", lambda _s: {"require_full_coverage": False})
    create_app(settings.with_(ratelimit_enabled=True))  # a cluster app's option, on this Redis URL
    monkeypatch.undo()
    limited = settings.with_(ratelimit_enabled=True, ratelimit_order="2/minute", ratelimit_order_ip="1000/minute")
    app = create_app(limited)
    deal = make_deal(db, app.extensions["flashdeal"].gate, stock=100, limit=100)
    (user,) = make_users(db, 1)
    c = login_client(app, db, user)
    codes = [c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
