"""Accounts and sessions through the Flask app, on the real Redis and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from tests.helpers import ORIGIN, PASSWORD, unique_email
from web import create_app


def _cookie(client) -> str | None:
    c = client.get_cookie("flashdeal_session")
    return c.value if c else None


def test_signup_login_me_logout(client, signup) -> None:
    user = signup()
    assert client.get("/api/me").status_code == 401
    r = client.post("/api/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert r.status_code == 200 and r.json["email"] == user["email"] and r.json["role"] == "buyer"
    assert "password" not in r.json and "password_hash" not in r.json
    me = client.get("/api/me")
    assert me.status_code == 200 and me.json["id"] == user["id"]
    assert client.post("/api/auth/logout", headers=ORIGIN).status_code == 204
    assert client.get("/api/me").status_code == 401


def test_session_cookie_flags(client, signup) -> None:
    user = signup()
    r = client.post("/api/auth/login", json={"email": user["email"], "password": PASSWORD})
    header = r.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" not in header


def test_secure_cookie_when_configured(settings, signup) -> None:
    app = create_app(settings.with_(session_cookie_secure=True, ratelimit_enabled=False))
    c = app.test_client()
    email = unique_email()
    c.post("/api/auth/signup", json={"email": email, "password": PASSWORD, "name": "S"})
    r = c.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert "Secure" in r.headers["Set-Cookie"]


def test_session_id_changes_at_login(client, signup, rds, settings) -> None:
    user = signup()
    client.get("/api/me")
    client.post("/api/auth/login", json={"email": user["email"], "password": PASSWORD})
    first = _cookie(client)
    client.post("/api/auth/login", json={"email": user["email"], "password": PASSWORD})
    second = _cookie(client)
    assert first and second and first != second
    # the old record is gone from Redis, the new one is there
    prefix = settings.key_prefix + "session:"
    assert rds.exists(prefix + first) == 0
    assert rds.exists(prefix + second) == 1


def test_logout_deletes_server_record(client, signup, rds, settings) -> None:
    user = signup()
    client.post("/api/auth/login", json={"email": user["email"], "password": PASSWORD})
    sid = _cookie(client)
    assert rds.exists(settings.key_prefix + "session:" + sid) == 1
    client.post("/api/auth/logout", headers=ORIGIN)
    assert rds.exists(settings.key_prefix + "session:" + sid) == 0


def test_idle_timeout_enforced_on_server(settings, rds) -> None:
    app = create_app(settings.with_(session_idle_seconds=2, session_refresh_seconds=0, ratelimit_enabled=False))
    c = app.test_client()
    email = unique_email()
    c.post("/api/auth/signup", json={"email": email, "password": PASSWORD, "name": "Idle"})
    c.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    sid = _cookie(c)
    ttl = rds.ttl(settings.key_prefix + "session:" + sid)
    assert 0 < ttl <= 2
    time.sleep(1.2)
    assert c.get("/api/me").status_code == 200  # activity pushes the idle deadline forward
    time.sleep(1.2)
    assert c.get("/api/me").status_code == 200
    time.sleep(2.3)
    r = c.get("/api/me")
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"


def test_absolute_lifetime(settings) -> None:
    app = create_app(settings.with_(session_absolute_seconds=1, session_refresh_seconds=0, ratelimit_enabled=False))
    c = app.test_client()
    email = unique_email()
    c.post("/api/auth/signup", json={"email": email, "password": PASSWORD, "name": "Abs"})
    c.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert c.get("/api/me").status_code == 200
    time.sleep(1.2)
    r = c.get("/api/me")
    assert r.status_code == 401 and "expired" in r.json["error"]["message"]


def test_wrong_password_and_unknown_email(client, signup) -> None:
    user = signup()
    for body in ({"email": user["email"], "password": "wrong-pass-1"}, {"email": unique_email(), "password": PASSWORD}):
        r = client.post("/api/auth/login", json=body)
        assert r.status_code == 401 and r.json["error"]["code"] == "invalid_credentials"


def test_duplicate_email_is_409_case_insensitive(client, signup) -> None:
    user = signup()
    r = client.post("/api/auth/signup", json={"email": user["email"].upper(), "password": PASSWORD, "name": "Dup"})
    assert r.status_code == 409 and r.json["error"]["code"] == "email_taken"


BAD_SIGNUPS = [
    ({"email": "not-an-email", "password": PASSWORD, "name": "X"}, "email"),
    ({"email": unique_email(), "password": "short1", "name": "X"}, "password"),
    ({"email": unique_email(), "password": "onlyletters", "name": "X"}, "password"),
    ({"email": unique_email(), "password": "12345678!", "name": "X"}, "password"),
    ({"email": unique_email(), "password": "correct\x07horse9", "name": "X"}, "password"),
    ({"email": unique_email(), "password": PASSWORD}, "name"),
    ({"email": unique_email(), "password": PASSWORD, "name": ""}, "name"),
    ({"email": unique_email(), "password": PASSWORD, "name": "n" * 101}, "name"),
    ({"email": unique_email(), "password": 12345678, "name": "X"}, "password"),
    ({"email": ["a@b.c"], "password": PASSWORD, "name": "X"}, "email"),
    ({"email": "x" * 250 + "@example.com", "password": PASSWORD, "name": "X"}, "email"),
    ({"email": unique_email(), "password": PASSWORD, "name": "X", "role": "admin"}, "role"),
]


@pytest.mark.parametrize(("body", "field"), BAD_SIGNUPS)
def test_bad_signup_is_422_naming_the_field(client, body, field) -> None:
    r = client.post("/api/auth/signup", json=body)
    assert r.status_code == 422, r.json
    assert r.json["error"]["code"] == "invalid"
    assert field in r.json["error"]["message"]


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ("email=a@b.c&password=x", "application/x-www-form-urlencoded", 415),
        ("hello", "text/plain", 415),
        ("[1, 2]", "application/json", 422),
        ('"just a string"', "application/json", 422),
        ("null", "application/json", 400),
    ],
)
def test_malformed_bodies(client, data, content_type, status) -> None:
    r = client.post("/api/auth/signup", data=data, content_type=content_type)
    assert r.status_code == status, r.data
    assert set(r.json["error"]) >= {"code", "message"}


def test_http_errors_have_json_shape(client) -> None:
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    r = client.get("/api/auth/login")
    assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]


def test_unexpected_exception_is_json_500(settings) -> None:
    app = create_app(settings.with_(ratelimit_enabled=False))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    r = app.test_client().get("/boom")
    assert r.status_code == 500 and r.json["error"]["code"] == "internal_error"
    assert "boom" not in r.json["error"]["message"]


def test_login_rate_limited_per_account(settings, signup) -> None:
    app = create_app(
        settings.with_(ratelimit_enabled=True, ratelimit_login="3/minute", ratelimit_login_ip="1000/minute")
    )
    c = app.test_client()
    email = unique_email()
    c.post("/api/auth/signup", json={"email": email, "password": PASSWORD, "name": "RL"})
    codes = [c.post("/api/auth/login", json={"email": email, "password": "wrong-pass-1"}).status_code for _ in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]
    r = c.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 429 and r.json["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) > 0
    # another account from the same IP is not affected
    other = unique_email()
    c.post("/api/auth/signup", json={"email": other, "password": PASSWORD, "name": "RL2"})
    assert c.post("/api/auth/login", json={"email": other, "password": PASSWORD}).status_code == 200
