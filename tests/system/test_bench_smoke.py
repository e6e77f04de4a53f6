"""The benchmark's four strategies at tiny scale: each sells exactly its stock, never more (keeps baselines honest)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from sqlalchemy import insert, select
from werkzeug.test import Client

from bench.strategies import STRATEGIES, Deps, Strategy
from bench.strategies.app import create_app
from bench.strategies.base import new_deal
from bench.strategies.lua_celery import LuaCelery, persist_order
from bench.strategies.lua_outbox import LuaOutbox
from bench.strategies.pessimistic import Pessimistic
from bench.strategies.redis_lock import RedisLock
from shared.db import Database
from shared.gate import Gate
from shared.keys import Keys
from shared.models import User
from shared.settings import Settings
from worker.drain import DrainOptions, drain_deal

pytestmark = pytest.mark.shared_state  # module-scoped fixtures build the state its tests share

STOCK = 25
THREADS = 12
ATTEMPTS = 6  # per thread: 72 attempts for 25 units, all at once


@pytest.fixture(scope="module")
def deps(settings: Settings, db: Database, rds: redis.Redis) -> Deps:
    """Database and gate of the test run."""
    return Deps(db, Gate(rds, Keys(settings.key_prefix)))


@pytest.fixture(scope="module")
def user_ids(db: Database) -> list[int]:
    """A few buyers."""
    tag = uuid.uuid4().hex[:8]
    rows = [{"email": f"smoke{i}-{tag}@example.com", "password_hash": "x", "name": "s"} for i in range(4)]
    with db.transaction() as s:
        s.execute(insert(User), rows)
        return list(s.scalars(select(User.id).where(User.email.like(f"%-{tag}@example.com"))))


def _strategy(key: str, deps: Deps, deal_id: int) -> Strategy:
    if key == LuaCelery.key:  # the task body, called in-process instead of through a worker
        return LuaCelery(deps, deal_id, publish=lambda d, o: persist_order(deps.db, d, o))
    if key == LuaOutbox.key:  # no kick: drained below by the same function the task runs
        return LuaOutbox(deps, deal_id, kick=lambda _d: None)
    return STRATEGIES[key](deps, deal_id)


@pytest.mark.parametrize("key", list(STRATEGIES))
def test_strategy_sells_exactly_the_stock(key: str, deps: Deps, user_ids: list[int]) -> None:
    """Many threads race for a small stock: accepted == persisted == stock, remaining 0, nothing negative."""
    deal_id = new_deal(deps, STOCK)
    strategy = _strategy(key, deps, deal_id)

    def buyer(i: int) -> int:
        return sum(strategy.order(user_ids[(i + n) % len(user_ids)]) for n in range(ATTEMPTS))

    with ThreadPoolExecutor(THREADS) as pool:
        won = sum(pool.map(buyer, range(THREADS)))
    if key == LuaOutbox.key:
        drain_deal(deps.db, deps.gate.redis, deps.gate.keys, deal_id, "smoke", DrainOptions())
    check = strategy.check(STOCK)
    assert won == STOCK
    assert check.accepted == STOCK
    assert check.persisted == STOCK
    assert check.remaining == 0
    assert check.ok


# The DB baselines only: the Lua ones would publish real Celery messages from the app.
@pytest.mark.parametrize("key", [Pessimistic.key, RedisLock.key])
def test_strategy_app_answers_202_then_409(key: str, settings: Settings, deps: Deps, user_ids: list[int]) -> None:
    """The tiny per-strategy web app: 202 while stock lasts, then 409 sold_out."""
    deal_id = new_deal(deps, 2)
    client = Client(create_app(key, settings))
    codes = [client.post(f"/deals/{deal_id}/orders/{user_ids[0]}", json={"quantity": 1}).status_code for _ in range(3)]
    assert codes == [202, 202, 409]


def test_baselines_stay_out_of_the_product_path() -> None:
    """No product package imports the benchmark's code (the baselines live in bench/ only)."""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for pkg in ("web", "worker", "shared")
        for path in (root / pkg).rglob("*.py")
        if re.search(r"^\s*(from|import)\s+bench\b", path.read_text(), re.M)
    ]
    assert offenders == []


BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize(
    "module",
    sorted(
        ".".join(p.relative_to(BENCH.parent).with_suffix("").parts)
        for p in BENCH.rglob("*.py")
        if p.name != "__init__.py"
    ),
)
def test_every_benchmark_module_imports(module: str) -> None:
    """A benchmark that no longer imports (a name moved in the product) fails here, not when someone runs it."""
    if module == "bench.locustfile":
        # Importing locust monkey-patches the whole process with gevent: only in a process of its own.
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=BENCH.parent, check=True, capture_output=True)
        return
    importlib.import_module(module)
