"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from sqlalchemy import text

from shared.redis import readiness
from web.openapi import doc
from web.schemas import HealthOut
from web.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@doc("The process is up", responses={200: HealthOut})
def healthz() -> Any:
    """Answer 200 while the process runs; touches nothing else."""
    return jsonify(status="ok")


@bp.get("/readyz")
@doc("Redis and PostgreSQL are reachable", responses={200: HealthOut, 503: HealthOut})
def readyz() -> Any:
    """Answer 200 when Redis and PostgreSQL answer (a cluster: one primary at least), 503 otherwise."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        # A Redis that may evict keys can lose stock and orders on its own: not ready to sell. A cluster with
        # a shard failing over is "degraded" and still ready (shared/redis/health.py: readiness).
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
        return jsonify(status="unavailable", checks=checks), 503
    degraded = any(v.startswith("degraded") for v in checks.values())
    return jsonify(status="degraded" if degraded else "ok", checks=checks), 200
