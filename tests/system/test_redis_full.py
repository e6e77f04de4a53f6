"""A full Redis (maxmemory reached, noeviction): every path answers 503 with Retry-After, never 500.

A private redis-server (tests/redis_procs.py) is set up with a deal, a buyer and their session,
then its ``maxmemory`` is set below what it holds: from then on Redis refuses every write with
``OOM``, exactly as when a loop of requests has filled it.
"""

from __future__ import annotations

import re

import pytest
import redis

from shared.gate import Gate
from shared.keys import Keys
from shared.redis import text_client
from tests.helpers import PASSWORD, email_of, make_deal, make_users


def _fill(url: str) -> None:
    """Set maxmemory below the memory in use: from now on every write is refused with OOM."""
    r = redis.Redis.from_url(url)
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    r.config_set("maxmemory", max(1, int(r.info("memory")["used_memory"]) // 2))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.set("probe", "x")


def _assert_503(r, where: str) -> None:
    assert r.status_code == 503, (where, r.status_code, r.get_data(as_text=True)[:300])
    assert int(r.headers["Retry-After"]) > 0, where


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_full_redis_is_503_with_retry_after_everywhere(settings, db, private_redis, fast_path: bool) -> None:
    from web import create_app

    s = settings.with_(redis_url=private_redis.url, ratelimit_enabled=True, fast_path=fast_path)
    app = create_app(s)
    deal = make_deal(db, Gate(text_client(s), Keys(s.key_prefix)), stock=50, limit=5)
    buyer, other = make_users(db, 2)
    c = app.test_client()
    assert c.post("/api/auth/login", json={"email": email_of(db, buyer), "password": PASSWORD}).status_code == 200
    placed = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert placed.status_code == 202
    page = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get("/login").get_data(as_text=True)).group(1)
    _fill(private_redis.url)

    _assert_503(c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}), "order")
    _assert_503(
        c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}, headers={"Idempotency-Key": "k1"}), "order+key"
    )
    _assert_503(c.post(f"/api/orders/{placed.json['order_id']}/cancel", json={}), "cancel")
    fresh = app.test_client()
    _assert_503(fresh.post("/api/auth/login", json={"email": email_of(db, other), "password": PASSWORD}), "API login")
    r = page.post("/login", data={"email": email_of(db, other), "password": PASSWORD, "csrf_token": token})
    _assert_503(r, "form login")
    assert r.mimetype == "text/html"
    # Reads that need no write still work; an anonymous form view writes nothing.
    assert app.test_client().get("/login").status_code == 200
    assert c.get("/api/me").status_code == 200

    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503 and ready.json["checks"]["redis"].startswith("error: full"), ready.json
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    counted = re.search(r"^flashdeal_redis_full_total ([0-9.e+]+)$", metrics, re.M)
    assert counted is not None and float(counted.group(1)) >= 5, metrics[:500]

    redis.Redis.from_url(private_redis.url).config_set("maxmemory", 0)  # room again: back to normal
    assert c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).status_code == 202
    assert app.test_client().get("/readyz").status_code == 200
