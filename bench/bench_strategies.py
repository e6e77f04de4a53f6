"""Four admission strategies, one run, same machine, same HTTP load; ratios against (1).

Usage: .venv/bin/python -m bench.bench_strategies [--seconds 8] [--connections 100]
Each strategy is served by the same tiny WSGI app (bench/strategies/app.py) under granian (2 workers,
8 threads); wrk posts orders with rotating buyer ids. Two Celery worker nodes (the product's worker app plus
bench/strategies/celery_tasks.py) persist (3) and (4). Per strategy: a throughput phase on a deal with ample
stock, then a sell-out phase (stock 500, same load) whose every unit must be persisted once and only once.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import redis

from bench.common import Context, WrkResult, save, wrk
from bench.strategies import STRATEGIES, Deps
from bench.strategies.base import Check, new_deal, persisted_quantity
from bench.strategies.direct import run_direct
from bench.users import make_users
from harness.celery import start_worker
from harness.granian import start_granian
from harness.ports import free_port
from harness.processes import stop_process
from harness.waits import wait_log

BIG_STOCK = 10_000_000
SELLOUT_STOCK = 500
SELLOUT_MAX_S = 15
DIRECT_PROCESSES = 2
DIRECT_THREADS = 16
PERSIST_TIMEOUT_S = 60.0
SERVER_THREADS = int(os.environ.get("BENCH_SERVER_THREADS", "8"))  # granian blocking threads per worker

# Formatted once per wrk thread (init): the load generator shares the cores with the servers.
ORDER_LUA = """
local users = {%s}
local reqs = {}
local n = 0
init = function(args)
  for i, u in ipairs(users) do
    reqs[i] = wrk.format("POST", "/deals/%d/orders/" .. u, {["Content-Type"] = "application/json"}, '{"quantity": 1}')
  end
end
request = function()
  n = n + 1
  return reqs[(n %% #reqs) + 1]
end
"""


HEALTH_LUA = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/healthz?n=" .. n)
end
"""


def order_lua(deal_id: int, user_ids: list[int]) -> str:
    """wrk script: POST an order for the deal, rotating over the buyers."""
    return ORDER_LUA % (", ".join(str(u) for u in user_ids), deal_id)


def wait_persisted(deps: Deps, deal_id: int, accepted: int, timeout: float) -> float | None:
    """Seconds until PostgreSQL holds every accepted unit, or None if it did not within timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if persisted_quantity(deps.db, deal_id) >= accepted:
            return round(time.monotonic() - t0, 2)
        time.sleep(0.1)
    return None


def run_one(ctx: Context, deps: Deps, key: str, user_ids: list[int], seconds: int, connections: int) -> dict:
    """Serve one strategy, load it, wait for persistence, check for oversell; returns the result row."""
    cls = STRATEGIES[key]
    port = free_port()
    proc = start_granian({**ctx.env, "BENCH_STRATEGY": key}, port, 2, SERVER_THREADS, "bench.strategies.app:app")
    base = f"http://127.0.0.1:{port}"
    try:
        wrk("warmup", base, connections=20, seconds=1, lua=order_lua(new_deal(deps, BIG_STOCK), user_ids))
        main = new_deal(deps, BIG_STOCK)
        res = wrk(cls.label, base, connections=connections, seconds=seconds, lua=order_lua(main, user_ids))
        # Long enough to sell the stock out twice over at the rate just measured (bounded).
        accepted_rate = cls(deps, main).accepted() / seconds
        sell_s = min(SELLOUT_MAX_S, max(2, math.ceil(2 * SELLOUT_STOCK / max(accepted_rate, 1))))
        sell = new_deal(deps, SELLOUT_STOCK)
        sold = wrk("sell-out", base, connections=connections, seconds=sell_s, lua=order_lua(sell, user_ids))
    finally:
        stop_process(proc)
    strategy = cls(deps, main)
    accepted = strategy.accepted()
    lag = wait_persisted(deps, main, accepted, PERSIST_TIMEOUT_S)
    if lag is None:
        _purge_queue(ctx)  # a backlog left behind would slow the next strategy down
    check = strategy.check(BIG_STOCK)
    sell_strategy = cls(deps, sell)
    wait_persisted(deps, sell, min(sell_strategy.accepted(), SELLOUT_STOCK), 30)
    sell_check = sell_strategy.check(SELLOUT_STOCK)
    return _row(key, res, accepted, seconds, lag, check, sold, sell_check)


def _purge_queue(ctx: Context) -> None:
    """Drop the bench queue's waiting messages (Celery's Redis transport keeps a queue as a list)."""
    redis.Redis.from_url(ctx.settings.celery_broker_url).delete(ctx.env["CELERY_QUEUE"])


def _row(
    key: str, res: WrkResult, accepted: int, seconds: int, lag: float | None, check: Check, sold: WrkResult, sc: Check
) -> dict:
    return {
        "strategy": STRATEGIES[key].label,
        "key": key,
        "orders/s": round(accepted / seconds),
        "p50 ms": round(res.p50_ms, 2),
        "p99 ms": round(res.p99_ms, 2),
        "requests": res.requests,
        "errors": res.non_2xx + res.errors,
        "persisted after (s)": lag if lag is not None else f">{PERSIST_TIMEOUT_S:.0f}",
        "oversold": max(0, sc.accepted - sc.stock) + max(0, -sc.remaining) + max(0, check.accepted - check.stock),
        "sell-out: accepted/persisted/remaining of 500": f"{sc.accepted}/{sc.persisted}/{sc.remaining}",
        "sell-out ok": sc.ok and sc.accepted == sc.stock,
        "lost": max(0, check.accepted - check.persisted),
    }


def with_ratios(rows: list[dict]) -> list[dict]:
    """Add orders/s and p99 ratios against strategy (1)."""
    base = rows[0]
    for r in rows:
        r["orders/s vs (1)"] = round(r["orders/s"] / max(base["orders/s"], 1), 2)
        r["p99 vs (1)"] = round(r["p99 ms"] / max(base["p99 ms"], 0.001), 3)
    return rows


def http_ceiling(ctx: Context, seconds: int, connections: int) -> float:
    """Same-run ceiling of the HTTP setup: the tiny app's GET /healthz (no strategy work) under the same load."""
    port = free_port()
    proc = start_granian(
        {**ctx.env, "BENCH_STRATEGY": "lua_outbox"}, port, 2, SERVER_THREADS, "bench.strategies.app:app"
    )
    try:
        # Through a Lua request() too, so the generator pays the same per-request cost as for the orders.
        res = wrk("GET /healthz", f"http://127.0.0.1:{port}", connections=connections, seconds=seconds, lua=HEALTH_LUA)
        return res.requests_per_s
    finally:
        stop_process(proc)


def run_direct_one(ctx: Context, deps: Deps, key: str, user_ids: list[int], seconds: float) -> dict:
    """The strategy's function called by DIRECT_PROCESSES x DIRECT_THREADS clients, no HTTP; returns the row."""
    deal = new_deal(deps, BIG_STOCK)
    res = run_direct(key, ctx.env, deal, user_ids, seconds, DIRECT_PROCESSES, DIRECT_THREADS)
    strategy = STRATEGIES[key](deps, deal)
    accepted = strategy.accepted()
    lag = wait_persisted(deps, deal, accepted, PERSIST_TIMEOUT_S)
    if lag is None:
        _purge_queue(ctx)
    check = strategy.check(BIG_STOCK)
    lat = sorted(res["latencies"]) or [0.0]
    return {
        "strategy": STRATEGIES[key].label,
        "key": key,
        "orders/s": round(res["accepted"] / seconds),
        "p50 ms": round(lat[len(lat) // 2] * 1000, 2),
        "p99 ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
        "calls": len(res["latencies"]),
        "errors": res["errors"],
        "persisted after (s)": lag if lag is not None else f">{PERSIST_TIMEOUT_S:.0f}",
        "oversold": max(0, check.accepted - check.stock) + max(0, -check.remaining),
        "lost": max(0, check.accepted - check.persisted),
    }


def run(
    seconds: int = 8, connections: int = 100, users: int = 200, keys: list[str] | None = None, direct_s: float = 5
) -> dict[str, list[dict]]:
    """Run every strategy in turn with the same load and workers, over HTTP then direct; returns both tables."""
    ctx = Context.create("flashdeal_bench_strategies", fresh=True)
    deps = Deps(ctx.db, ctx.gate)
    user_ids = [uid for uid, _ in make_users(ctx.db, users)]
    logdir = Path(tempfile.mkdtemp(prefix="flashdeal-strategies-"))
    workers = [start_worker(ctx.env, f"stratworker{i}", logdir, "bench.strategies.celery_tasks") for i in (1, 2)]
    rows: list[dict] = []
    direct: list[dict] = []
    try:
        for i, w in enumerate(workers, 1):
            wait_log(logdir / f"stratworker{i}.log", "ready.", w)
        ceiling = http_ceiling(ctx, seconds, connections)
        for key in keys or list(STRATEGIES):
            rows.append(run_one(ctx, deps, key, user_ids, seconds, connections))
            print(rows[-1], flush=True)
        if direct_s:
            for key in keys or list(STRATEGIES):
                direct.append(run_direct_one(ctx, deps, key, user_ids, direct_s))
                print(direct[-1], flush=True)
    finally:
        for w in workers:
            stop_process(w)
        ctx.cleanup()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(logdir, ignore_errors=True)
    rows = with_ratios(rows)
    save(
        "strategies",
        rows,
        {
            "server": f"tiny WSGI app per strategy, granian wsgi 2 workers x {SERVER_THREADS} threads",
            "load": f"wrk 2 threads, {connections} connections, {seconds} s per strategy, {users} buyers",
            "workers": "2 celery nodes, default concurrency",
            "http_ceiling_rps": round(ceiling),
        },
    )
    if direct:
        direct = with_ratios(direct)
        save(
            "strategies_direct",
            direct,
            {"load": f"{DIRECT_PROCESSES} processes x {DIRECT_THREADS} threads calling order(), {direct_s} s each"},
        )
    return {"http": rows, "direct": direct}


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--direct-seconds", type=float, default=5, help="0 skips the direct-call comparison")
    ap.add_argument("--only", nargs="*", choices=list(STRATEGIES))
    args = ap.parse_args()
    run(args.seconds, args.connections, keys=args.only, direct_s=args.direct_seconds)


if __name__ == "__main__":
    main()
