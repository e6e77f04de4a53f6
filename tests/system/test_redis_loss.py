"""Redis data loss in the single topology, with real worker and beat processes: an empty restart, a deleted stock."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from harness.redis_server import PrivateRedis
from harness.waits import wait_until
from shared.gate import Admission, Gate
from shared.redis import text_client
from tests.environment import ROOT, base_env
from tests.helpers import CeleryProcs, make_deal, make_users
from worker.reconcile import reconcile_deal

pytestmark = pytest.mark.slow


def _persisted(db, deal_id: int) -> dict[str, int]:
    with db.read() as s:
        rows = s.execute(text("SELECT id, quantity FROM orders WHERE deal_id = :d"), {"d": deal_id}).all()
    return {str(r[0]): r[1] for r in rows}


def _admit(gate: Gate, deal_id: int, user: int, qty: int) -> str:
    r = gate.admit(deal_id, user, qty, str(uuid.uuid4()))
    assert r.outcome is Admission.ACCEPTED, r
    return r.order_id


def _procs(tmp_path: Path, server: PrivateRedis) -> tuple[CeleryProcs, dict[str, str]]:
    # The single topology: the one Redis is gate, outbox and broker.
    return CeleryProcs(tmp_path), {"REDIS_URL": server.url, "CELERY_BROKER_URL": server.url}


def test_redis_restarted_empty_deal_rebuilt_from_postgres_limits_hold_loss_reported(
    db,
    settings,
    private_redis,
    tmp_path,
) -> None:
    s = settings.with_(redis_url=private_redis.url)
    gate = Gate.from_settings(text_client(s), s)
    users = make_users(db, 6)
    deal = make_deal(db, gate, stock=50, limit=3)
    procs, env = _procs(tmp_path, private_redis)
    try:
        worker = procs.worker("w1", env)
        procs.beat(env)
        kept = {_admit(gate, deal.id, u, 3): 3 for u in users[:4]}  # users 0-3 reach their limit
        assert wait_until(lambda: _persisted(db, deal.id) == kept, 30), worker.text()[-2000:]
        worker.kill()  # nothing persists the next orders
        lost = _admit(gate, deal.id, users[4], 2)  # acknowledged, never persisted
        private_redis.restart_empty()
        worker = procs.worker("w2", env)
        k = gate.keys.deal(deal.id)
        # Beat's tick (run by the worker) rebuilds the deal from PostgreSQL, stock and buyers' totals.
        assert wait_until(lambda: gate.redis.get(k.stock) is not None, 30), worker.text()[-3000:]
        assert gate.redis.get(k.stock) == str(50 - 12)
        assert gate.redis.hgetall(k.buyers) == {str(u): "3" for u in users[:4]}
        for u in users[:4]:  # the per-user limit still holds for those who bought before the loss
            assert gate.admit(deal.id, u, 1, str(uuid.uuid4())).outcome is Admission.LIMIT_EXCEEDED
        again = _admit(gate, deal.id, users[4], 3)  # the lost order's buyer can buy again: nothing holds it
        assert wait_until(lambda: again in _persisted(db, deal.id), 30)
    finally:
        procs.close()
    rows = _persisted(db, deal.id)
    assert lost not in rows and rows == {**kept, again: 3}
    assert int(gate.redis.get(k.stock)) + sum(rows.values()) == 50  # nothing resold, nothing stranded
    r = reconcile_deal(db, gate.redis, gate.keys, deal.id)
    assert r is not None and r.ok and r.held_at_load == 12
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "flashdeal", "reconcile", str(deal.id)],
        cwd=ROOT, env={**base_env(), **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "rebuilt from PostgreSQL" in out.stdout and "lost with Redis" in out.stdout, out


def test_stock_deleted_while_orders_are_in_the_outbox_no_reload_drift_reported(
    db,
    settings,
    private_redis,
    tmp_path,
) -> None:
    s = settings.with_(redis_url=private_redis.url)
    gate = Gate.from_settings(text_client(s), s)
    users = make_users(db, 4)
    deal = make_deal(db, gate, stock=20, limit=5)
    procs, env = _procs(tmp_path, private_redis)
    try:
        held = {_admit(gate, deal.id, u, 2): 2 for u in users[:3]}  # in the outbox: no worker runs yet
        k = gate.keys.deal(deal.id)
        gate.redis.delete(k.stock)
        worker = procs.worker("w1", env)
        procs.beat(env)
        worker.wait_for(f"deal {deal.id}: its stock is missing from Redis", 30)
        assert wait_until(lambda: _persisted(db, deal.id) == held, 30)  # the outbox drains as always
        assert gate.redis.get(k.stock) is None  # never rebuilt to 20 - 6 while the orders were in Redis...
        assert gate.admit(deal.id, users[3], 1, str(uuid.uuid4())).outcome is Admission.SOLD_OUT  # ...nor resold
        out = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "flashdeal", "reconcile", str(deal.id), "--repair"],
            cwd=ROOT, env={**base_env(), **env}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0 and "STOCK MISSING" in out.stdout and "repaired" in out.stdout, out
        assert gate.redis.get(k.stock) == "14"
        _admit(gate, deal.id, users[3], 1)
    finally:
        procs.close()
    r = reconcile_deal(db, gate.redis, gate.keys, deal.id)
    assert r is not None and r.redis_remaining == 13
