"""The web node's one resend of an admission after a dropped connection is answered as the first attempt.

A real Redis behind a relay that cuts the connection after Redis ran the script and before its
reply reaches the web node (harness/dropping_relay.py). DirectCalls sends the script once more; the buyer
must get what the first run decided: 202 accepted (not a 200 replay), with its drain kick, sold once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from harness.dropping_relay import DroppingRelay
from shared.gate import Admission, Gate
from shared.keys import Keys
from shared.redis import text_client
from shared.settings import Settings
from tests.helpers import PASSWORD, email_of, make_deal, make_users


def _through(settings: Settings, relay: DroppingRelay) -> Settings:
    u = urlsplit(settings.redis_url)
    netloc = (u.netloc.rpartition("@")[0] + "@" if "@" in u.netloc else "") + f"127.0.0.1:{relay.port}"
    return settings.with_(redis_url=urlunsplit(u._replace(netloc=netloc)))


def _target(settings: Settings) -> tuple[str, int]:
    u = urlsplit(settings.redis_url)
    return u.hostname or "127.0.0.1", u.port or 6379


@pytest.fixture()
def gate(settings: Settings) -> Gate:
    return Gate(text_client(settings), Keys(settings.key_prefix))


def test_a_resent_first_attempt_is_accepted_with_its_kick(db, gate: Gate, settings: Settings) -> None:
    deal = make_deal(db, gate, stock=5, limit=5)
    (user,) = make_users(db, 1)
    oid = str(uuid.uuid4())
    relay = DroppingRelay(_target(settings), marker=oid.encode())
    try:
        proxied = Gate(text_client(_through(settings, relay)), Keys(settings.key_prefix))
        result = proxied.admit(deal.id, user, 2, oid)
    finally:
        relay.close()
    assert relay.drops == 1  # the first run's reply was lost: what follows is the resend's answer
    assert (result.outcome, result.order_id, result.kick) == (Admission.ACCEPTED, oid, True)
    k = gate.keys.deal(deal.id)
    assert int(gate.redis.get(k.stock)) == 3 and int(gate.redis.hget(k.buyers, str(user))) == 2  # sold once
    assert gate.redis.xlen(k.outbox) == 1


@pytest.fixture()
def relay_app(settings: Settings, gate: Gate) -> Iterator[tuple[object, DroppingRelay]]:
    from web import create_app

    # The admission script is cached in Redis first: the relay cuts the reply of its EVALSHA, not a NOSCRIPT.
    sha = gate.redis.script_load(gate._admit.script)
    relay = DroppingRelay(_target(settings), marker=sha.encode())
    try:
        yield create_app(_through(settings, relay).with_(ratelimit_enabled=False)), relay
    finally:
        relay.close()


@pytest.mark.parametrize("idem", ["", "key-1"])
def test_a_buyer_whose_first_attempt_was_resent_gets_202(db, gate: Gate, relay_app, idem: str) -> None:
    app, relay = relay_app
    deal = make_deal(db, gate, stock=5, limit=5)
    (user,) = make_users(db, 1)
    c = app.test_client()
    assert c.post("/api/auth/login", json={"email": email_of(db, user), "password": PASSWORD}).status_code == 200
    headers = {"Idempotency-Key": idem} if idem else {}
    r = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}, headers=headers)
    assert relay.drops == 1
    assert r.status_code == 202 and r.json["status"] == "accepted", r.json
    again = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}, headers=headers)
    if idem:  # a real replay by the buyer is still a replay, of the same order
        assert again.status_code == 200 and again.json["order_id"] == r.json["order_id"]
    assert int(gate.redis.get(gate.keys.deal(deal.id).stock)) == (4 if idem else 3)
