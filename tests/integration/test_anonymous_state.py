"""What anonymous visitors leave in Redis: nothing but rate-limit counters (web/csrf.py, shared/cache.py)."""

from __future__ import annotations

import re

import redis

from shared.gate import Gate
from shared.keys import Keys
from shared.redis import text_client
from tests.helpers import PASSWORD, email_of, make_deal, make_users


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


def _keys(rds: redis.Redis, prefix: str) -> set[str]:
    return set(rds.scan_iter(match=f"{prefix}*", count=1000))


def test_anonymous_visits_leave_no_state_but_rate_limit_counters(settings, db, rds) -> None:
    from web import create_app

    app = create_app(settings.with_(ratelimit_enabled=True))
    keys = Keys(settings.key_prefix)
    deal = make_deal(db, Gate(text_client(settings), keys), stock=5, limit=2)
    email = email_of(db, make_users(db, 1)[0])
    before = _keys(rds, settings.key_prefix)
    for i in range(30):
        c = app.test_client()  # a new visitor each time: no cookie
        assert c.get("/login").status_code == 200
        assert c.get("/signup").status_code == 200
        assert c.get("/").status_code == 200
        assert c.get(f"/deals/{deal.id}").status_code == 200
        assert c.get("/orders").status_code == 302
        assert c.get("/api/me").status_code == 401
        assert c.get(f"/api/deals/{10**12 + i}").status_code == 404  # unknown ids are not cached one by one
        assert c.get(f"/deals/{10**12 + i}").status_code == 404
        assert c.post("/api/auth/logout", json={}).status_code == 204
        token = _token(c.get("/login").get_data(as_text=True))
        r = c.post("/login", data={"email": email, "password": "wrong-pass-1", "csrf_token": token})
        assert r.status_code in (401, 429)
    new = _keys(rds, settings.key_prefix) - before
    # Besides counters (bounded per address and window), only the caches of what exists: one per deal, one list.
    shared = {keys.deal_cache(deal.id), f"{settings.key_prefix}cache:deals:ver"}
    others = {k for k in new if not k.startswith(keys.ratelimit_prefix) and k not in shared}
    assert len({k for k in others if k.startswith(f"{settings.key_prefix}cache:deals:")}) <= 1, sorted(others)
    others = {k for k in others if not k.startswith(f"{settings.key_prefix}cache:deals:")}
    assert others == set(), sorted(others)[:10]


def test_the_anonymous_forms_use_a_signed_cookie(app, db) -> None:
    email = email_of(db, make_users(db, 1)[0])
    c = app.test_client()
    r = c.get("/login")
    token = _token(r.get_data(as_text=True))
    assert "flashdeal_session" not in r.headers.get("Set-Cookie", "")
    cookie = c.get_cookie("flashdeal_form")
    assert cookie is not None and cookie.value == token and cookie.http_only and cookie.same_site == "Lax"
    assert _token(c.get("/signup").get_data(as_text=True)) == token  # one token per visitor, not per view
    # Without the cookie, with another visitor's cookie, or a token we did not sign: refused.
    stranger = app.test_client()
    assert stranger.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token}).status_code == 400
    other = app.test_client()
    other_token = _token(other.get("/login").get_data(as_text=True))
    data = {"email": email, "password": PASSWORD, "csrf_token": other_token}
    assert c.post("/login", data=data).status_code == 400
    forged = "x" + token[1:]
    c.set_cookie("flashdeal_form", forged)
    assert c.post("/login", data={**data, "csrf_token": forged}).status_code == 400
    c.set_cookie("flashdeal_form", token)
    r = c.post("/login", data={**data, "csrf_token": token})
    assert r.status_code == 303 and c.get("/api/me").status_code == 200
    assert c.get_cookie("flashdeal_form") is None  # logged in: the session's own token from now on
