"""Login throttling (web/login_throttle.py): the owner keeps getting in while a stranger hammers their account."""

from __future__ import annotations

import re

import pytest

from tests.helpers import PASSWORD, email_of, make_users

ATTACKER = "203.0.113.7"
VICTIM = "198.51.100.20"


@pytest.fixture()
def throttled(settings):
    from web import create_app

    return create_app(
        settings.with_(
            ratelimit_enabled=True,
            ratelimit_login="3/minute;5/hour",
            ratelimit_login_ip="1000/minute",
            ratelimit_login_account="8/hour",
        )
    )


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


def _api(c, email: str, password: str, addr: str) -> int:
    return c.post(
        "/api/auth/login", json={"email": email, "password": password}, environ_base={"REMOTE_ADDR": addr}
    ).status_code


def _form(c, email: str, password: str, addr: str) -> int:
    env = {"REMOTE_ADDR": addr}
    token = _token(c.get("/login", environ_base=env).get_data(as_text=True))
    data = {"email": email, "password": password, "csrf_token": token}
    return c.post("/login", data=data, environ_base=env).status_code


def test_api_and_form_share_one_window_per_account_and_address(throttled, db) -> None:
    email = email_of(db, make_users(db, 1)[0])
    c = throttled.test_client()
    assert [_api(c, email, "wrong-pass-1", ATTACKER), _form(c, email, "wrong-pass-1", ATTACKER)] == [401, 401]
    assert _api(c, email, "wrong-pass-1", ATTACKER) == 401
    # Three failures from this address on this account, whichever way in: both ways are closed now.
    assert _form(c, email, PASSWORD, ATTACKER) == 429
    r = c.post("/api/auth/login", json={"email": email, "password": PASSWORD}, environ_base={"REMOTE_ADDR": ATTACKER})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    # A different address (the owner's) is not affected, nor is another account from the same address.
    assert _api(throttled.test_client(), email, PASSWORD, VICTIM) == 200
    other = email_of(db, make_users(db, 1)[0])
    assert _api(throttled.test_client(), other, PASSWORD, ATTACKER) == 200


def test_a_success_is_not_counted(throttled, db) -> None:
    email = email_of(db, make_users(db, 1)[0])
    for _ in range(6):  # more logins than the pair window allows failures
        assert _api(throttled.test_client(), email, PASSWORD, VICTIM) == 200


def test_the_victim_logs_in_while_a_stranger_hammers_their_account(throttled, db) -> None:
    victim = email_of(db, make_users(db, 1)[0])
    owner = throttled.test_client()
    assert _api(owner, victim, PASSWORD, VICTIM) == 200  # the owner's device, known from an earlier login
    assert owner.post("/api/auth/logout", json={}).status_code == 204

    # One stranger, one address, both ways in: after the pair's few failures, only 429s, which cost the owner nothing.
    stranger = throttled.test_client()
    codes = [(_api if i % 2 else _form)(stranger, victim, f"guess-{i:04d}xx", ATTACKER) for i in range(40)]
    assert codes.count(401) == 3 and set(codes[3:]) == {429}, codes
    assert _api(throttled.test_client(), victim, PASSWORD, VICTIM) == 200  # the owner from a new browser
    assert _form(owner, victim, PASSWORD, VICTIM) == 303

    # A stranger with many addresses fills the account-wide window of unknown devices...
    for n in range(10):
        for _ in range(3):
            _api(stranger, victim, "guess-distributed", f"203.0.113.{100 + n}")
    assert _api(throttled.test_client(), victim, "guess-from-new", "192.0.2.1") == 429
    # ...and the owner still gets in on the device they used before, from their address, both ways in.
    assert owner.post("/api/auth/logout", json={}).status_code == 204
    assert _api(owner, victim, PASSWORD, VICTIM) == 200
    assert owner.post("/api/auth/logout", json={}).status_code == 204
    assert _form(owner, victim, PASSWORD, VICTIM) == 303
