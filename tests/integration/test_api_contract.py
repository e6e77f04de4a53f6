"""The OpenAPI document says what the code requires, and the code answers what the document says."""

from __future__ import annotations

import re

import pytest

from tests.helpers import PASSWORD, email_of, make_deal, make_users


@pytest.fixture()
def spec(client) -> dict:
    return client.get("/openapi.json").json


def test_an_undeclared_method_is_405_with_allow_before_any_other_check(client, spec) -> None:
    """No proof of origin, no body, no session: still 405 (not 403 origin_required) for a method the path lacks."""
    for path, ops in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        for method in {"PUT", "PATCH", "DELETE", "POST", "GET"} - {m.upper() for m in ops}:
            r = client.open(concrete, method=method)
            assert r.status_code == 405, (method, path, r.status_code, r.json)
            assert r.json["error"]["code"] == "method_not_allowed"
            assert {m.upper() for m in ops} <= {m.strip() for m in r.headers["Allow"].split(",")}, (method, path)
    assert client.put("/api/no-such-thing").status_code == 404


def test_headers_the_code_requires_are_required_in_the_document(client, spec) -> None:
    """A bodyless state change without X-Requested-With is refused, so the document must require the header."""
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method.upper() not in ("POST", "PUT", "PATCH", "DELETE") or "requestBody" in op:
                continue
            declared = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "header"}
            assert declared.get("X-Requested-With", {}).get("required") is True, (method, path)
            r = client.open(re.sub(r"\{[^}]+\}", "1", path), method=method.upper())
            assert r.status_code == 403 and r.json["error"]["code"] == "origin_required", (method, path)


def test_the_idempotency_key_is_declared_with_the_rule_the_code_applies(spec) -> None:
    from web.admission import IDEMPOTENCY_KEY

    op = spec["paths"]["/api/deals/{deal_id}/orders"]["post"]
    (header,) = [p for p in op["parameters"] if p["in"] == "header" and p["name"] == "Idempotency-Key"]
    assert IDEMPOTENCY_KEY.pattern in header["schema"]["pattern"]


def test_a_blank_or_bad_idempotency_key_is_refused_not_ignored(client, db) -> None:
    from tests.helpers import PASSWORD, email_of, make_users

    (uid,) = make_users(db, 1)
    assert client.post("/api/auth/login", json={"email": email_of(db, uid), "password": PASSWORD}).status_code == 200
    for value in ("", " ", "\t", "a b", "\u00e9"):
        r = client.post("/api/deals/1/orders", json={"quantity": 1}, headers={"Idempotency-Key": value})
        assert r.status_code == 422, (value, r.status_code)


def test_an_order_answer_may_carry_every_order_status(spec) -> None:
    """A replay answers the order's current status: paid and expired included."""
    schemas = spec["components"]["schemas"]
    assert set(schemas["OrderAccepted"]["properties"]["status"]["enum"]) == set(
        schemas["OrderOut"]["properties"]["status"]["enum"]
    )


def test_every_security_alternative_the_document_names_gets_an_order_in(client, db, spec) -> None:
    """The order operation takes the session or the order token: each cookie alone gets past authentication."""
    op = spec["paths"]["/api/deals/{deal_id}/orders"]["post"]
    assert op["security"] == [{"session": []}, {"order_token": []}]
    schemes = spec["components"]["securitySchemes"]
    (user,) = make_users(db, 1)
    deal = make_deal(db, client.application.extensions["flashdeal"].gate, stock=5, limit=2)
    r = client.post("/api/auth/login", json={"email": email_of(db, user), "password": PASSWORD})
    assert r.status_code == 200
    cookies = {h.split("=", 1)[0]: h.split("=", 1)[1].split(";", 1)[0] for h in r.headers.getlist("Set-Cookie")}
    for alternative in op["security"]:
        (name,) = alternative
        scheme = schemes[name]
        assert scheme["in"] == "cookie" and scheme["name"] in cookies, (name, sorted(cookies))
        only = client.application.test_client()
        only.set_cookie(scheme["name"], cookies[scheme["name"]], path="/")
        answer = only.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
        assert answer.status_code == 202, (name, answer.json)
    anonymous = client.application.test_client().post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert anonymous.status_code == 401
