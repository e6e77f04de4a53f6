"""What the public sees through the load balancer: no internal details (readiness checks, node addresses, versions)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import LoadBalancer

INTERNAL = re.compile(r"127\.0\.0\.1|localhost|:6379|:5432|redis|postgres|granian|werkzeug|Traceback|sqlalchemy", re.I)


@pytest.fixture()
def shop(web_server, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(LB URL, node URL): one real web node behind deploy/nginx.conf."""
    node = web_server({"TRUSTED_PROXIES": "1"})
    lb = LoadBalancer(tmp_path / "nginx", [node.port])
    try:
        yield lb.url, node.url
    finally:
        lb.stop()


def test_readyz_through_the_lb_is_the_bare_verdict(shop) -> None:
    lb, node = shop
    for path in ("/readyz", "//readyz", "/%72eadyz", "/readyz?full=1"):
        r = requests.get(lb + path, timeout=10, headers={"X-Flashdeal-Edge": ""})
        if r.status_code == 404:
            continue  # a path variant the node does not route
        assert r.status_code == 200 and r.json() == {"status": "ok"}, (path, r.text)
    # The node's own port (operators, health checks): every check.
    full = requests.get(node + "/readyz", timeout=10).json()
    assert full["status"] == "ok" and set(full["checks"]) == {"redis", "postgres"}


def test_public_answers_name_nothing_internal(shop) -> None:
    lb, _node = shop
    answers = [
        requests.get(lb + path, timeout=10)
        for path in ("/", "/login", "/api/deals", "/api/deals/999999", "/api/me", "/readyz", "/healthz", "/nope")
    ]
    answers += [
        requests.post(lb + "/api/auth/login", data="{", headers={"Content-Type": "application/json"}, timeout=10),
        requests.post(lb + "/api/auth/login", json={"email": "x@y.example", "password": "p" * 10}, timeout=10),
        requests.request("TRACE", lb + "/api/deals", timeout=10),
        requests.request("PATCH", lb + "/api/deals", timeout=10),
        requests.get(lb + "/metrics", timeout=10),
    ]
    for r in answers:
        where = f"{r.request.method} {r.request.path_url} -> {r.status_code}"
        assert r.status_code < 500, where
        server = r.headers.get("Server", "")
        assert server in ("", "nginx"), (where, server)  # no product version, no application server
        assert "X-Powered-By" not in r.headers, where
        headers = " ".join(f"{k}: {v}" for k, v in r.headers.items())
        assert not INTERNAL.search(headers), (where, headers)
        if r.request.path_url != "/openapi.json":
            assert not INTERNAL.search(r.text), (where, INTERNAL.search(r.text), r.text[:300])
