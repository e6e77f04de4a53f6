"""Every redirect target that comes from a request stays on the shop and never fails (web/redirects.py)."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest

from tests.helpers import PASSWORD, email_of, make_users

SHOP = "http://shop.test/"
# Values a browser would follow off the shop, or that broke the header (a 500 after the login happened).
HOSTILE = [
    "//evil.example/x",
    "/\\evil.example",
    "\\\\evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r\n/evil.example",
    "\x00//evil.example",
    " //evil.example",
    "\x01/\x1f/evil.example",
    "/\\/evil.example",
    "https://evil.example/",
    "HTTPS:evil.example",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "/%0d%0aSet-Cookie:x=1",
    "/\r\nSet-Cookie: x=1",
    "/x\x00y",
    "/\u2028/evil.example",
    "/\uff0f\uff0fevil.example",
    "/d\u00e9als?q=\u00e9",
    "/" + "a" * 5000,
    "  /orders  ",
    "?next=//evil.example",
    "",
]


def _browser_target(location: str) -> str:
    """Where a browser goes with this Location (WHATWG: strip C0/space, drop tab/newline, backslash is slash)."""
    cleaned = re.sub(r"[\t\n\r]", "", location.strip("".join(chr(c) for c in range(0x21)))).replace("\\", "/")
    return urljoin(SHOP, cleaned)


def _assert_on_shop(location: str) -> None:
    assert re.fullmatch(r"[\x21-\x7e]+", location), f"not a plain ASCII header value: {location!r}"
    assert location.startswith("/") and not location.startswith("//"), location
    target = urlsplit(_browser_target(location))
    assert (target.scheme, target.netloc) == ("http", "shop.test"), location


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


@pytest.mark.parametrize("target", HOSTILE)
def test_login_form_redirect_stays_on_the_shop(app, db, target: str) -> None:
    c = app.test_client()
    email = email_of(db, make_users(db, 1)[0])
    token = _token(c.get("/login").get_data(as_text=True))
    r = c.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": target})
    assert r.status_code == 303, r.status_code
    _assert_on_shop(r.headers["Location"])
    for page in ("/login", "/signup"):  # already logged in: both forms send the visitor on
        r = c.get(page, query_string={"next": target})
        assert r.status_code == 302, (page, r.status_code)
        _assert_on_shop(r.headers["Location"])


def test_local_targets_are_kept() -> None:
    from web.redirects import local_path

    assert local_path("/orders") == "/orders"
    assert local_path("/deals/7?x=1#top") == "/deals/7?x=1#top"
    assert local_path(" /orders\n") == "/orders"
    assert local_path("/d\u00e9als") == "/d%C3%A9als"
    assert local_path("/%2F%2Fevil.example") == "/%2F%2Fevil.example"  # a path of ours: browsers keep it encoded
    for bad in ("/\ud800", "//evil.example", "/\\evil.example", "https://evil.example", "/\t/evil.example", None, ""):
        assert local_path(bad) is None, bad


def test_undecodable_bytes_in_next_fall_back(app, db) -> None:
    """Raw bytes that are no UTF-8 (a lone surrogate's encoding, 0xff) in the posted form."""
    email = email_of(db, make_users(db, 1)[0])
    for raw in (b"/%ED%A0%80//evil.example", b"%FF//evil.example", b"/%C0%AF/evil.example"):
        c = app.test_client()
        token = _token(c.get("/login").get_data(as_text=True))
        body = f"email={email}&password={PASSWORD}&csrf_token={token}&next=".encode() + raw
        r = c.post("/login", data=body, content_type="application/x-www-form-urlencoded")
        assert r.status_code == 303, (raw, r.status_code)
        _assert_on_shop(r.headers["Location"])
