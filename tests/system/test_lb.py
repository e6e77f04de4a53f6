"""The LB speaks the API's language: its errors on /api/ in the JSON shape; /metrics not public; real client IPs."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from harness.ports import free_port
from tests.environment import RUN_PREFIX
from tests.helpers import LoadBalancer


@pytest.fixture()
def lb(tmp_path: Path) -> Iterator[Callable[..., LoadBalancer]]:
    """Start load balancers with the shop's nginx config; all stopped at the end."""
    started: list[LoadBalancer] = []

    def start(upstreams: list[int], **kw: object) -> LoadBalancer:
        b = LoadBalancer(tmp_path / f"nginx{len(started)}", upstreams, **kw)  # type: ignore[arg-type]
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def _is_error_shape(r: requests.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:200])
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_lb_errors_are_json_with_allow_and_metrics_are_not_public(web_server, lb) -> None:
    node = web_server({"TRUSTED_PROXIES": "1"})
    b = lb([node.port])
    big = b"{" + b" " * (6 * 1024 * 1024) + b"}"
    r = requests.post(f"{b.url}/api/deals/1/orders", data=big, headers={"Content-Type": "application/json"}, timeout=30)
    _is_error_shape(r, 413, "payload_too_large")
    r = requests.post(f"{b.url}/api/auth/signup", data=big, headers={"Content-Type": "application/json"}, timeout=30)
    _is_error_shape(r, 413, "payload_too_large")
    for path, allowed in (("/api/deals", {"GET"}), ("/api/deals/1/orders", {"POST"}), ("/api/auth/logout", {"POST"})):
        r = requests.request("TRACE", b.url + path, timeout=10)
        _is_error_shape(r, 405, "method_not_allowed")
        assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}, (path, r.headers.get("Allow"))
    for path in ("/metrics", "/metrics?x=1", "//metrics", "/%6detrics"):
        r = requests.get(b.url + path, timeout=10)
        assert r.status_code == 404 and "flashdeal_http_requests_total" not in r.text, path
    assert (
        "flashdeal_http_requests_total" in requests.get(f"{node.url}/metrics", timeout=10).text
    )  # nodes still serve it
    assert requests.get(f"{b.url}/api/deals", timeout=10).status_code == 200


def test_lb_answers_502_in_the_json_shape_when_no_node_answers(lb) -> None:
    b = lb([free_port()])  # nothing listens there
    r = requests.get(f"{b.url}/api/deals", timeout=30)
    _is_error_shape(r, 502, "bad_gateway")
    assert r.headers["Retry-After"] == "1"
    r = requests.post(f"{b.url}/api/deals/1/orders", json={"quantity": 1}, headers={"Idempotency-Key": "k"}, timeout=30)
    _is_error_shape(r, 502, "bad_gateway")


def test_lb_answers_504_in_the_json_shape_when_a_node_hangs(lb) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])  # accepted, never answered
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        b = lb([silent.getsockname()[1]], read_timeout_s=1)
        r = requests.get(f"{b.url}/api/deals", timeout=30)
        _is_error_shape(r, 504, "gateway_timeout")
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        silent.close()


def test_a_forged_x_forwarded_for_does_not_move_the_rate_limit_key(web_server, lb, rds) -> None:
    """Through the real LB: the limit counts the real client address, whatever X-Forwarded-For the client sends."""
    node = web_server({"TRUSTED_PROXIES": "1", "RATELIMIT_ENABLED": "true", "RATELIMIT_LOGIN_IP": "3/minute"})
    b = lb([node.port])
    forged = [f"203.0.113.{i}" for i in range(1, 6)]
    statuses = []
    for ip in forged:
        body = {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "wrong-password-1"}
        r = requests.post(f"{b.url}/api/auth/login", json=body, headers={"X-Forwarded-For": ip}, timeout=10)
        statuses.append(r.status_code)
    # Five different forged addresses, one real client: its third attempt is the last one allowed.
    assert statuses == [401, 401, 401, 429, 429], statuses
    # "login-ip": the shared scope of the login windows (web/login_throttle.py)
    keys = [k for k in rds.scan_iter(match=f"LIMITS:LIMITER/{RUN_PREFIX}*", count=1000) if "/login-ip/" in k]
    assert any("127.0.0.1" in k for k in keys), keys
    assert not any(ip in k for k in keys for ip in forged), keys
