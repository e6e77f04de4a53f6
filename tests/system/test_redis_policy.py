"""Redis configurations the shop refuses to sell on, on a private redis-server: an evicting memory policy (at
startup and in readiness), and a primary cut off from its replicas (orders 503, nothing half-written)."""

from __future__ import annotations

import pytest
import redis

from shared.settings import ConfigError
from tests.helpers import login_client, make_deal, make_users
from web import create_app


def test_evicting_redis_is_refused_at_startup_and_by_readyz(settings, private_redis) -> None:
    s = settings.with_(redis_url=private_redis.url, ratelimit_enabled=False)
    app = create_app(s)
    assert app.test_client().get("/readyz").status_code == 200
    redis.Redis.from_url(private_redis.url).config_set("maxmemory-policy", "allkeys-lru")
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and "allkeys-lru" in r.json["checks"]["redis"]
    with pytest.raises(ConfigError, match="noeviction"):
        create_app(s)


@pytest.mark.parametrize("fast_path", [True, False])
def test_primary_without_its_replicas_refuses_orders_with_503_and_writes_nothing(
    settings,
    db,
    private_redis,
    fast_path,
) -> None:
    app = create_app(settings.with_(redis_url=private_redis.url, ratelimit_enabled=False, fast_path=fast_path))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    c = login_client(app, db, make_users(db, 1)[0])
    # min-replicas-to-write: a primary cut off from its replicas (the old side of a split brain) takes no writes.
    redis.Redis.from_url(private_redis.url).config_set("min-replicas-to-write", "1")
    r = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}, headers={"Idempotency-Key": "nr"})
    assert r.status_code == 503 and r.json["error"]["code"] == "unavailable" and r.headers["Retry-After"] == "1"
    k = svc.gate.keys.deal(deal.id)
    assert svc.gate.redis.get(k.stock) == "5" and svc.gate.redis.hlen(k.orders) == 0  # nothing half-written
