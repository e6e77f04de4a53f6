"""The order token (web/order_token.py): issued at login, renewed by session-backed requests, taken by both paths."""

from __future__ import annotations

import re
import time

import pytest

from shared.passes import PassSigner
from tests.helpers import ORIGIN, PASSWORD, email_of, make_deal, make_users
from web import create_app

COOKIE = "flashdeal_order"


def _app(settings, fast_path: bool = True, **kw):  # type: ignore[no-untyped-def]
    return create_app(settings.with_(ratelimit_enabled=False, fast_path=fast_path, **kw))


def _token_cookie(resp) -> str | None:  # type: ignore[no-untyped-def]
    """The Set-Cookie header of the order token in ``resp``, if any."""
    found = [h for h in resp.headers.getlist("Set-Cookie") if h.startswith(f"{COOKIE}=")]
    return found[0] if found else None


def _login(app, db, user_id: int):  # type: ignore[no-untyped-def]
    c = app.test_client()
    r = c.post("/api/auth/login", json={"email": email_of(db, user_id), "password": PASSWORD})
    assert r.status_code == 200
    return c, r


def _only(app, name: str, value: str):  # type: ignore[no-untyped-def]
    """A client that sends one cookie and nothing else."""
    c = app.test_client()
    c.set_cookie(name, value, path="/")
    return c


def test_login_issues_the_token_with_its_flags(settings, db) -> None:
    app = _app(settings)
    (user,) = make_users(db, 1)
    _c, r = _login(app, db, user)
    header = _token_cookie(r)
    assert header is not None
    for flag in ("HttpOnly", "SameSite=Lax", "Path=/;", "Max-Age=300"):
        assert flag in header, flag
    assert "Secure" not in header
    _c, r = _login(_app(settings, session_cookie_secure=True), db, user)
    assert "Secure" in (_token_cookie(r) or "")


def test_the_login_form_issues_the_token_too(settings, db) -> None:
    app = _app(settings)
    (user,) = make_users(db, 1)
    c = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    r = c.post("/login", data={"email": email_of(db, user), "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 303 and _token_cookie(r) is not None


@pytest.mark.parametrize("fast_path", [True, False])
def test_the_token_alone_places_an_order(settings, db, fast_path: bool) -> None:
    """No session cookie at all: the token proves the buyer, whose order it is."""
    app = _app(settings, fast_path)
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5)
    (user,) = make_users(db, 1)
    c, _r = _login(app, db, user)
    value = c.get_cookie(COOKIE, path="/").value
    r = _only(app, COOKIE, value).post(f"/api/deals/{deal.id}/orders", json={"quantity": 2})
    assert r.status_code == 202
    assert int(svc.redis.hget(svc.keys.deal(deal.id).buyers, str(user))) == 2


@pytest.mark.parametrize("fast_path", [True, False])
def test_the_session_alone_orders_and_gets_a_token(settings, db, fast_path: bool) -> None:
    app = _app(settings, fast_path)
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5)
    c, _r = _login(app, db, make_users(db, 1)[0])
    client = _only(app, "flashdeal_session", c.get_cookie("flashdeal_session").value)
    r = client.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert r.status_code == 202 and _token_cookie(r) is not None
    # The next attempt carries the new token: nothing more to renew.
    r = client.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert r.status_code == 202 and _token_cookie(r) is None


@pytest.mark.parametrize("fast_path", [True, False])
def test_bad_tokens_prove_nothing(settings, db, fast_path: bool) -> None:
    """Forged, expired, of another kind or another secret: 401 alone, the session's buyer beside a session."""
    app = _app(settings, fast_path)
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=50, limit=50)
    victim, buyer = make_users(db, 2)
    now = int(time.time())
    good = PassSigner(settings.secret_key, "order").issue(victim, None, now + 100)
    bad = [
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),  # signature altered
        good.replace(f"order.{victim}.", f"order.{buyer}.", 1),  # another user, same signature
        PassSigner(settings.secret_key, "order").issue(victim, None, now - 1),  # expired
        PassSigner(settings.secret_key, "queue").issue(victim, None, now + 100),  # a queue pass
        PassSigner(settings.secret_key, "order").issue(victim, deal.id, now + 100),  # bound to a deal
        PassSigner("another-secret-of-enough-length", "order").issue(victim, None, now + 100),
    ]
    url = f"/api/deals/{deal.id}/orders"
    for token in bad:
        r = _only(app, COOKIE, token).post(url, json={"quantity": 1})
        assert r.status_code == 401, token
    c, _r = _login(app, db, buyer)
    for token in bad:
        c.set_cookie(COOKIE, token, path="/")
        assert c.post(url, json={"quantity": 1}).status_code == 202, token
    buyers = svc.redis.hgetall(svc.keys.deal(deal.id).buyers)
    assert buyers == {str(buyer): str(len(bad))}  # every order is the session's buyer's, none the victim's


def test_session_backed_requests_renew_a_token_past_half_its_life(settings, db) -> None:
    app = _app(settings)
    (user,) = make_users(db, 1)
    c, _r = _login(app, db, user)
    assert _token_cookie(c.get("/api/me")) is None  # fresh from the login
    old = PassSigner(settings.secret_key, "order").issue(user, None, int(time.time()) + 100)  # < 150 s left
    c.set_cookie(COOKIE, old, path="/")
    assert _token_cookie(c.get("/api/me")) is not None
    deal = make_deal(db, app.extensions["flashdeal"].gate, stock=5, limit=5)
    c.set_cookie(COOKIE, old, path="/")
    # The token path itself never renews (only a live session does) ...
    assert _token_cookie(c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})) is None
    # ... the deal page, backed by the session, does.
    r = c.get(f"/deals/{deal.id}")
    assert r.status_code == 200 and _token_cookie(r) is not None


def test_logout_clears_the_cookie_and_a_copy_lives_out_its_lifetime(settings, db) -> None:
    """The documented bound: logout ends the session at once; a token copied before keeps ordering until it expires."""
    app = _app(settings)
    deal = make_deal(db, app.extensions["flashdeal"].gate, stock=5, limit=5)
    (user,) = make_users(db, 1)
    c, _r = _login(app, db, user)
    copy = c.get_cookie(COOKIE, path="/").value
    r = c.post("/api/auth/logout", headers=ORIGIN)
    assert r.status_code == 204 and (_token_cookie(r) or "").startswith(f"{COOKIE}=;")
    assert c.get_cookie(COOKIE, path="/") is None
    assert c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code == 401
    assert _only(app, COOKIE, copy).post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code == 202
