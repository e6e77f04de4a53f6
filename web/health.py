"""Liveness and readiness probes.

``/readyz`` has two audiences. Operators and the load balancer's health checks ask a web node on
its own port and get every check (which dependency failed, cluster nodes not answering). The
public reaches it only through the load balancer, which marks what it passes on with EDGE_HEADER
(deploy/nginx-proxy.conf): they get the bare verdict, and at most one real check per second per
process whatever the rate of requests, so the probe names no internal address or role and cannot
be used to make every Redis node and PostgreSQL do work.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy import text

from shared.redis import readiness
from web.openapi import doc
from web.schemas import HealthOut
from web.services import Services, services

bp = Blueprint("health", __name__)

EDGE_HEADER = "X-Flashdeal-Edge"  # set by the load balancer on every request it passes on
PUBLIC_CHECK_EVERY_S = 1.0
_public_lock = threading.Lock()
_public: dict[str, Any] = {"at": float("-inf"), "status": "ok", "code": 200}


@bp.get("/healthz")
@doc("The process is up", responses={200: HealthOut})
def healthz() -> Any:
    """Answer 200 while the process runs; touches nothing else."""
    return jsonify(status="ok")


def check(svc: Services) -> tuple[str, int, dict[str, str]]:
    """(status, HTTP code, checks): ready when Redis and PostgreSQL answer and Redis can take writes."""
    checks: dict[str, str] = {}
    try:
        # A Redis that may evict keys can lose stock and orders on its own: not ready to sell. A cluster with
        # a shard failing over is "degraded" and still ready (shared/redis/health.py: readiness). A full
        # Redis refuses every order: not ready either.
        checks["redis"] = readiness(svc.redis)
    except Exception as exc:  # any failure means not ready
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        with svc.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {type(exc).__name__}"
    if any(v.startswith("error") for v in checks.values()):
        return "unavailable", 503, checks
    degraded = any(v.startswith("degraded") for v in checks.values())
    return ("degraded" if degraded else "ok"), 200, checks


def _public_verdict(svc: Services) -> tuple[str, int]:
    """The bare verdict for the public, checked at most every PUBLIC_CHECK_EVERY_S in this process."""
    with _public_lock:
        if time.monotonic() - _public["at"] >= PUBLIC_CHECK_EVERY_S:
            status, code, _checks = check(svc)
            _public.update(at=time.monotonic(), status="ok" if code == 200 else "unavailable", code=code)
        return _public["status"], _public["code"]


@bp.get("/readyz")
@doc("Ready to sell: Redis (writable) and PostgreSQL answer", responses={200: HealthOut, 503: HealthOut})
def readyz() -> Any:
    """200 when ready, 503 otherwise; the checks only on the node's own port (see the module docstring)."""
    svc = services()
    if request.headers.get(EDGE_HEADER):
        status, code = _public_verdict(svc)
        return jsonify(status=status), code
    status, code, checks = check(svc)
    return jsonify(status=status, checks=checks), code
