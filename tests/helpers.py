"""Test helpers: fast users, deals loaded into the gate, logged-in clients, the harness bound to this run."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from bench.users import CHEAP_HASHER
from harness import celery, nginx
from shared.cache import invalidate_deal
from shared.db import Database
from shared.deals import NewDeal, create_deal, load_deal
from shared.gate import Gate
from shared.models import Deal, User
from shared.payments.providers.dev import SIGNATURE_HEADER, sign
from shared.queue import QueueRules
from tests.environment import RUN_PREFIX, base_env

T = TypeVar("T")
PASSWORD = "correct-horse-9"
# Test users carry the bench's cheap argon2id hash: a hash carries its own parameters, so every process checks
# it at that cost (the production one, ~0.1 s a check here, was over a third of the in-process tiers' time).
_HASH = CHEAP_HASHER.hash(PASSWORD)


def unique_email(tag: str = "u") -> str:
    """A fresh email address."""
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


def make_users(db: Database, n: int, role: str = "buyer") -> list[int]:
    """Insert n users sharing one password hash (argon2 per user would dominate test time)."""
    tag = uuid.uuid4().hex[:10]
    rows = [
        {"email": f"b{i}-{tag}@example.com", "password_hash": _HASH, "name": f"B{i}", "role": role} for i in range(n)
    ]
    with db.transaction() as s:
        return list(s.scalars(insert(User).returning(User.id), rows))


def email_of(db: Database, user_id: int) -> str:
    """The email of a user id."""
    with db.read() as s:
        return s.get(User, user_id).email  # type: ignore[union-attr]


def login_client(app: Flask, db: Database, user_id: int) -> FlaskClient:
    """A Flask test client logged in as ``user_id`` through the API (a real session and order token)."""
    c = app.test_client()
    r = c.post("/api/auth/login", json={"email": email_of(db, user_id), "password": PASSWORD})
    assert r.status_code == 200, r.json
    return c


def new_user_client(app: Flask, db: Database, role: str = "buyer") -> FlaskClient:
    """A Flask test client logged in as a new user with ``role``."""
    (uid,) = make_users(db, 1, role=role)
    return login_client(app, db, uid)


def iso_in(seconds: float) -> str:
    """An ISO 8601 time ``seconds`` from now (negative: in the past), as the API takes times."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def deal_body(**over: object) -> dict:
    """A valid body of ``POST /api/admin/deals`` (open now for an hour), with ``over`` applied."""
    body: dict = {
        "title": "Lamp",
        "price": "19.90",
        "stock": 10,
        "per_user_limit": 2,
        "starts_at": iso_in(-1),
        "ends_at": iso_in(3600),
    }
    body.update(over)
    return body


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return metric_samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def views_forbidden(app: Flask, *names: str) -> None:
    """Make Flask views fail loudly: an answer afterwards can only come from the fast path."""

    def boom(**_kw):
        raise AssertionError("a Flask view ran")

    for name in names:
        app.view_functions[name] = boom


def deal_keys_in_redis(gate: Gate, deal_id: int) -> list[str]:
    """Every Redis key of the deal (its hash tag), whatever its name."""
    return sorted(gate.redis.scan_iter(match=f"{gate.keys.prefix}{{deal:{deal_id}}}*", count=1000))


def dev_event(
    order_id: str, deal_id: int, payment_id: str, *, ok: bool = True, amount: int = 999, eid: str = ""
) -> bytes:
    """The dev provider's event about a payment (succeeded, or failed)."""
    return json.dumps(
        {
            "id": eid or f"devevt_{uuid.uuid4().hex}",
            "type": "payment.succeeded" if ok else "payment.failed",
            "payment": {
                "id": payment_id,
                "amount": amount,
                "currency": "eur",
                "metadata": {"order_id": order_id, "deal_id": str(deal_id)},
            },
        }
    ).encode()


def dev_headers(payload: bytes, secret: str) -> dict[str, str]:
    """The headers the dev provider posts an event with."""
    return {SIGNATURE_HEADER: sign(payload, secret), "Content-Type": "application/json; charset=utf-8"}


def outbox_empty(gate: Gate, deal_id: int) -> bool:
    """The deal's outbox holds no entry and no group has one pending (every entry drained and acknowledged)."""
    k = gate.keys.deal(deal_id)
    if gate.redis.xlen(k.outbox):
        return False
    groups = gate.redis.xinfo_groups(k.outbox) if gate.redis.exists(k.outbox) else []
    return all(int(g["pending"]) == 0 for g in groups)


def make_deal(
    db: Database,
    gate: Gate | None,
    *,
    stock: int = 100,
    limit: int = 1,
    price: str = "9.99",
    starts_in: float = -1,
    lasts: float = 3600,
    status: str | None = None,
    title: str | None = None,
    payment_window: int = 0,
    queue: QueueRules | None = None,
) -> Deal:
    """Create a deal starting ``starts_in`` seconds from now; load it into the gate when given one."""
    now = datetime.now(UTC)
    with db.transaction() as s:
        deal = create_deal(
            s,
            NewDeal(
                title=title or f"Deal {uuid.uuid4().hex[:6]}",
                price=Decimal(price),
                stock=stock,
                per_user_limit=limit,
                starts_at=now + timedelta(seconds=starts_in),
                ends_at=now + timedelta(seconds=starts_in + lasts),
                payment_window_seconds=payment_window,
                queue=queue,
            ),
        )
        if status:
            deal.status = status
        elif starts_in <= 0:
            deal.status = "open"
    if gate is not None:
        with db.read() as s:  # after the commit, as shared/deals.py: publish_deal does
            load_deal(s, gate, deal)
        invalidate_deal(gate.redis, gate.keys, deal.id)  # and the caches dropped, as publish_deal does
    return deal


def set_payment_window_ms(gate: Gate, deal_id: int, ms: int) -> None:
    """Shorten a loaded deal's payment window below a second (the column counts seconds; tests need less)."""
    gate.redis.hset(gate.keys.deal(deal_id).state, "pay_ms", ms)


# Proof of origin for a bodyless state-changing API call (web/origin.py), as the pages' scripts send it.
ORIGIN = {"X-Requested-With": "fetch"}


def require_tool(binary: str | None, name: str, package: str) -> str:
    """The tool's path. Missing, it fails the test under CI (.ci/run installs it) and skips it elsewhere."""
    if binary:
        return binary
    message = f"{name} is not installed: apt-get install {package} (.ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def login_over_http(base: str, email: str, password: str = PASSWORD) -> requests.Session:
    """A requests session logged in at the web node or LB ``base`` (tests with real processes)."""
    s = requests.Session()
    r = s.post(f"{base}/api/auth/login", json={"email": email, "password": password}, timeout=10)
    assert r.status_code == 200, r.text
    return s


def order_until_answered(
    s: requests.Session,
    url: str,
    quantity: int,
    key: str,
    *,
    stop: threading.Event | None = None,
    seen: Callable[[int], None] | None = None,
) -> requests.Response | None:
    """POST one order as a buyer does through a failover: a 503 or a dropped connection is sent again with the
    same Idempotency-Key. The first other answer, or None once ``stop`` is set; ``seen`` gets every status."""
    while stop is None or not stop.is_set():
        try:
            r = s.post(url, json={"quantity": quantity}, headers={"Idempotency-Key": key}, timeout=15)
        except requests.ConnectionError:
            continue
        if seen is not None:
            seen(r.status_code)
        if r.status_code != 503:
            return r
        time.sleep(0.05)
    return None


def through_failover(call: Callable[[], T], timeout: float = 30) -> T:
    """Run ``call`` again while the primary is changing (connection refused, READONLY, NOREPLICAS, LOADING),
    as a buyer's next attempt would; past ``timeout`` the last error is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class StormAnswers:
    """What a storm of buyers was told through a failover, checked against what PostgreSQL kept at the end.

    The promise (docs/durability.md): every ``202``/``200`` is kept once with its quantity, except one marked
    ``Flashdeal-Replication: unconfirmed``, which a failover may lose (no replica had acknowledged it); nothing
    that was not answered is kept. A second failover in a row (a sentinel or a cluster judging the fresh
    primary down) is allowed by that promise too, so the checks hold however many there were.
    """

    accepted: dict[str, tuple[int, int]] = field(default_factory=dict)  # order id -> (deal, quantity)
    unconfirmed: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __len__(self) -> int:
        return len(self.accepted)

    def saw(self, status: int) -> None:
        """Count one HTTP status (``seen`` of ``order_until_answered``)."""
        with self.lock:
            self.statuses[status] += 1

    def record(self, r: requests.Response, deal_id: int, quantity: int) -> None:
        """Note one final answer: placed (202) or the replay of a key whose first answer was lost (200)."""
        # 503 is the only failure docs/topologies.md documents for a failover, and order_until_answered retried it.
        assert r.status_code in (200, 202), r.text
        oid = r.json()["order_id"]
        with self.lock:
            assert self.accepted.setdefault(oid, (deal_id, quantity)) == (deal_id, quantity)
            if r.headers.get("Flashdeal-Replication") == "unconfirmed":
                self.unconfirmed.add(oid)

    def settled(self, rows: dict[str, int], remaining: dict[int, int | None], stock: int) -> bool:
        """True once every confirmed answer is in ``rows`` (order id -> quantity) and, for each deal of
        ``remaining`` (deal -> units left in the gate), the units left and the units kept add up to ``stock``."""
        kept = Counter[int]()
        for oid, q in rows.items():
            kept[self.accepted.get(oid, (-1, 0))[0]] += q  # -1: kept but never answered (check() names it)
        confirmed = all(oid in rows for oid in self.accepted if oid not in self.unconfirmed)
        return confirmed and all(left is not None and left + kept[d] == stock for d, left in remaining.items())

    def check(self, rows: dict[str, int]) -> None:
        """Every confirmed answer kept with its quantity; nothing kept that was not answered, or with another one."""
        want = {oid: q for oid, (_d, q) in self.accepted.items()}
        assert {o: want[o] for o in want if o not in self.unconfirmed} == {
            o: q for o, q in rows.items() if o not in self.unconfirmed
        }
        assert set(rows) <= set(want)
        assert all(rows[o] == want[o] for o in rows)
        assert set(self.statuses) <= {200, 202, 503}, self.statuses


class LoadBalancer(nginx.LoadBalancer):
    """The harness's nginx LB; a missing nginx fails the test under CI and skips it elsewhere."""

    def __init__(self, prefix: Path, upstreams: list[int], read_timeout_s: int | None = None) -> None:
        binary = require_tool(nginx.nginx_binary(), "nginx", "nginx")
        super().__init__(prefix, upstreams, read_timeout_s, binary)


class CeleryProcs(celery.CeleryProcs):
    """The harness's Celery processes on this run's environment and a queue no dev stack or other run listens to."""

    def __init__(self, tmp: Path, queue: str | None = None) -> None:
        super().__init__(tmp, base_env(), queue or celery.unique_queue(f"fdtest-{RUN_PREFIX.rstrip(':')}"))
