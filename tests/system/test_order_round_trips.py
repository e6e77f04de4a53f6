"""One order attempt is one round trip: the admission script (and its WAIT), no other Redis command, on every topology.

Counted on private servers with MONITOR on every data node while one logged-in buyer (session and
order token cookies, as a browser keeps them) places one order, rate limits on. The commands Redis
runs inside the script (MONITOR's ``lua`` client) and those of the replication links and sentinels
are not the web node's and are left out.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis

from harness.redis_server import PrivateRedis
from tests.fixtures.topologies import ClusterSetup, SentinelSetup
from tests.helpers import PASSWORD, email_of, make_deal, make_users
from web import create_app

Node = tuple[str, int]


def _bystanders(client: redis.Redis) -> set[str]:
    """Addresses of the clients that are not a web node: replication links and sentinels."""
    return {
        str(c["addr"])
        for c in client.client_list()
        if "S" in c["flags"] or "M" in c["flags"] or str(c.get("name", "")).startswith("sentinel")
    }


def _monitored(nodes: list[Node], act: Callable[[], None]) -> list[str]:
    """The commands the web node sent to ``nodes`` while ``act()`` ran (MONITOR), e.g. ``["EVALSHA", "WAIT"]``."""
    clients = [redis.Redis(host=h, port=p, decode_responses=True) for h, p in nodes]
    monitors = [c.monitor() for c in clients]
    try:
        for m in monitors:
            m.__enter__()  # MONITOR is on once its +OK is read
        skip = set().union(*(_bystanders(c) for c in clients))
        act()
        marker = f"end-{uuid.uuid4().hex}"
        seen: list[str] = []
        for client, m in zip(clients, monitors, strict=True):
            client.echo(marker)  # MONITOR keeps the order of execution: everything before it is in
            while True:
                cmd = m.next_command()
                if marker in cmd["command"]:
                    break
                addr = f"{cmd['client_address']}:{cmd['client_port']}"
                if cmd["client_type"] != "lua" and addr not in skip:
                    seen.append(cmd["command"].split(" ", 1)[0].upper())
        return seen
    finally:
        for m in monitors:
            m.__exit__(None, None, None)
        for c in clients:
            c.close()


def _one_order(settings, db, nodes: list[Node], fast_path: bool) -> tuple[list[str], int]:  # type: ignore[no-untyped-def]
    """(commands, status) of one order attempt by a logged-in buyer, after a first one warmed everything up."""
    # Rate limits on: they must be counted in the same round trip. A long kick interval: the warm-up
    # order's drain kick is the only one (a kick is one Celery message per interval, not per order).
    app = create_app(settings.with_(ratelimit_enabled=True, fast_path=fast_path, drain_kick_ms=600_000))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=10, limit=10)
    (user,) = make_users(db, 1)
    c = app.test_client()
    assert c.post("/api/auth/login", json={"email": email_of(db, user), "password": PASSWORD}).status_code == 200
    url = f"/api/deals/{deal.id}/orders"
    assert c.post(url, json={"quantity": 1}).status_code == 202  # connections made, scripts loaded
    status: list[int] = []
    seen = _monitored(nodes, lambda: status.append(c.post(url, json={"quantity": 1}).status_code))
    return seen, status[0]


@pytest.mark.parametrize("fast_path", [True, False])
def test_single_redis_one_command(settings, db, private_redis: PrivateRedis, fast_path: bool) -> None:
    s = settings.with_(redis_url=private_redis.url, order_ack_replicas=0)
    seen, status = _one_order(s, db, [("127.0.0.1", private_redis.port)], fast_path)
    assert status == 202 and seen == ["EVALSHA"]


def test_sentinel_script_and_wait(settings, db, sentinel_setup: SentinelSetup) -> None:
    nodes = [("127.0.0.1", p) for p in sentinel_setup.topology.ports.data]
    seen, status = _one_order(sentinel_setup.settings, db, nodes, True)
    assert status == 202 and seen == ["EVALSHA", "WAIT"]


@pytest.mark.parametrize("fast_path", [True, False])
def test_cluster_script_and_wait(settings, db, cluster_setup: ClusterSetup, fast_path: bool) -> None:
    nodes = [("127.0.0.1", p) for p in cluster_setup.topology.ports.nodes]
    seen, status = _one_order(cluster_setup.settings, db, nodes, fast_path)
    assert status == 202 and seen == ["EVALSHA", "WAIT"]
