"""Payment windows benchmark: what the due-time index costs an admission, and how fast an expiry storm clears.

Usage: .venv/bin/python -m bench.bench_payments [--orders 5000] [--rounds 10] [--storm 10000] [--http-seconds 6]

Runs on this machine only, against a private redis-server started for the run (on a free port of 127.0.0.1,
so that the Redis process's CPU time counts only this benchmark's calls on a shared machine), the bench
PostgreSQL database and key prefix, and real `celery -A worker` processes for the storm.
1. admission: the real admission script (shared/lua/admit.lua), pipelined 1000 at a time, alternately on a deal
   without a payment window and on one with a window (which adds the pay_by to the record and a ZADD to the
   due-time index), and a bench-only variant of the window script without its ZADD, ROUNDS interleaved
   rounds of ORDERS each, same run. Reported per admission: the Redis process's CPU time (INFO cpu, user +
   sys; unlike wall-clock timings it does not grow when a busy machine preempts Redis), median and best
   round, and client-side admissions/s. The due index's cost = (window - window without the ZADD) / plain
   on the medians, target < 0.10; the whole window's bookkeeping = (window - plain) / plain.
2. http: the whole admission, POST /api/deals/{id}/orders through one web node (granian, 2 workers) loaded
   by wrk (64 connections, 200 logged-in buyers), alternately on each deal kind; orders/s and the ratio.
3. storm: STORM orders admitted with the same one-second window and left unpaid; one worker node and beat
   (which sends the sweep every second, as in production). Reported: seconds from the last deadline until
   all their stock is back in the gate (target < 5 s), and until PostgreSQL holds every order as expired.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import redis
from sqlalchemy import text

from bench.bench_drain import make_users
from bench.common import Context, bench_env, save, wrk
from harness.celery import celery_command
from harness.granian import start_granian
from harness.ports import free_port
from harness.processes import spawn, stop_process
from harness.waits import wait_log
from shared.db import Database
from shared.deals import NewDeal, create_deal, load_deal
from shared.gate import Gate, lua_source
from shared.keys import Keys
from shared.migrations import upgrade
from shared.redis import text_client
from shared.settings import Settings

DEADLINE_S = 120  # every wait gives up after this
PIPELINE = 1000


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own (no persistence) on a free port; stopped and its directory removed after."""
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="fd-bench-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tmp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("private redis-server did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def context(redis_url: str) -> Context:
    """The bench database and a fresh key prefix, on the private Redis (gate and Celery broker)."""
    env = bench_env("flashdeal_bench")
    env.update(REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url)
    settings = Settings.from_env(env)
    upgrade(settings.database_url)
    return Context(env, settings, Database(settings), Gate(text_client(settings), Keys(settings.key_prefix)))


def open_deal(ctx: Context, stock: int, window_s: int) -> int:
    """An open deal with ample limits, loaded into the gate."""
    now = datetime.now(UTC)
    spec = NewDeal(f"pay bench {uuid.uuid4().hex[:6]}", Decimal("9.99"), stock, stock, now, now + timedelta(hours=1),
                   payment_window_seconds=window_s)  # fmt: skip
    with ctx.db.transaction() as s:
        deal = create_deal(s, spec)
        deal.status = "open"
        load_deal(s, ctx.gate, deal)
        return deal.id


def admit(ctx: Context, sha: str, deal_id: int, users: list[int], n: int) -> float:
    """Admit n orders through the admission script, pipelined; returns the seconds it took."""
    keys = ctx.gate.keys.deal(deal_id).gate_keys()
    t0 = time.perf_counter()
    for start in range(0, n, PIPELINE):
        pipe = ctx.gate.redis.pipeline(transaction=False)
        for i in range(start, min(n, start + PIPELINE)):
            pipe.evalsha(sha, len(keys), *keys, users[i % len(users)], 1, str(uuid.uuid4()), "", 100)
        replies = pipe.execute()
        assert all(r[0] == "accepted" for r in replies), replies[:2]
    return time.perf_counter() - t0


def redis_cpu_s(r: redis.Redis) -> float:
    """CPU seconds (user + sys) the Redis process has used so far."""
    cpu = r.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


# The admission script with its due-time index line taken out: a bench-only variant, so that the index's own
# cost (the ZADD) is measured apart from the rest of the window's bookkeeping (pay_by in the record and entry).
ZADD_LINE = "redis.call('ZADD', KEYS[8], pay_by, order_id)"
KINDS = (
    ("admission, no payment window", 0, False),
    ("admission, payment window 300 s", 300, False),
    ("admission, payment window 300 s, due index left out (bench only)", 300, True),
)


def bench_admission(ctx: Context, orders: int, rounds: int) -> list[dict[str, object]]:
    """Interleaved rounds of each kind; Redis CPU and client-side rate per admission."""
    users = make_users(ctx, 2000)
    source = lua_source("admit")
    assert source.count(ZADD_LINE) == 1, "admit.lua changed: update ZADD_LINE"
    r = ctx.gate.redis
    shas = {False: r.script_load(source), True: r.script_load(source.replace(ZADD_LINE, ""))}
    cpu_us: dict[str, list[float]] = {k[0]: [] for k in KINDS}  # Redis CPU µs per admission, one per round
    rate: dict[str, list[float]] = {k[0]: [] for k in KINDS}
    for _ in range(rounds):
        for name, window, no_index in KINDS:
            deal_id = open_deal(ctx, orders, window)
            before = redis_cpu_s(r)
            seconds = admit(ctx, shas[no_index], deal_id, users, orders)
            cpu_us[name].append((redis_cpu_s(r) - before) / orders * 1e6)
            rate[name].append(orders / seconds)
            ctx.gate.unload(deal_id)
    med = {name: statistics.median(v) for name, v in cpu_us.items()}
    rows = [
        {
            "scenario": name,
            "orders": orders * rounds,
            "redis_cpu_us_per_admission_median": round(med[name], 2),
            "redis_cpu_us_best_round": round(min(cpu_us[name]), 2),
            "admissions_per_s_client_median": round(statistics.median(rate[name])),
        }
        for name, _w, _n in KINDS
    ]
    plain, window, no_index = (med[k[0]] for k in KINDS)
    # The index's cost: what the ZADD adds to a window admission, as a share of a plain admission.
    rows[1]["due_index_cost"] = round((window - no_index) / plain, 3)
    rows[1]["target"] = "< 0.10"
    rows[1]["whole_window_cost"] = round((window - plain) / plain, 3)
    return rows


def bench_http_admission(ctx: Context, seconds: int, rounds: int, connections: int) -> list[dict[str, object]]:
    """Whole admissions (POST /api/deals/{id}/orders through a web node): window vs none, interleaved rounds."""
    from bench.bench_http import orders_lua
    from bench.users import login_all
    from bench.users import make_users as make_buyers

    port = free_port()
    proc = start_granian(ctx.env, port)
    try:
        base = f"http://127.0.0.1:{port}"
        cookies = login_all(base, [e for _i, e in make_buyers(ctx.db, 200)])
        deals = {0: open_deal(ctx, 10_000_000, 0), 300: open_deal(ctx, 10_000_000, 300)}
        got: dict[int, list[float]] = {0: [], 300: []}
        p99: dict[int, list[float]] = {0: [], 300: []}
        for _ in range(rounds):
            for window, deal_id in deals.items():
                res = wrk("orders", base, lua=orders_lua(cookies, deal_id), connections=connections, seconds=seconds)
                assert res.non_2xx == 0 and res.errors == 0, res
                got[window].append(res.requests_per_s)
                p99[window].append(res.p99_ms)
    finally:
        stop_process(proc)
    for deal_id in deals.values():
        ctx.gate.unload(deal_id)
    rows = [
        {
            "scenario": f"POST /api/deals/{{id}}/orders via a web node, {'window 300 s' if w else 'no window'}",
            "orders": "wrk",
            "orders_per_s_http_median": round(statistics.median(got[w])),
            "p99_ms_median": round(statistics.median(p99[w]), 1),
        }
        for w in (0, 300)
    ]
    rows[1]["whole_window_cost"] = round(1 - statistics.median(got[300]) / statistics.median(got[0]), 3)
    return rows


def celery(ctx: Context, args: list[str], log: str) -> subprocess.Popen:
    """One `celery -A worker` process of the storm, in its own process group."""
    return spawn(celery_command(*args, "--loglevel", "INFO", "-f", log), ctx.env)


def bench_storm(ctx: Context, storm: int) -> list[dict[str, object]]:
    """STORM unpaid orders with one deadline: seconds from it until the stock is back, and until PostgreSQL follows."""
    tmp = tempfile.mkdtemp(prefix="fd-bench-storm-")
    queue = ctx.env["CELERY_QUEUE"]
    procs = [
        celery(ctx, ["worker", "-n", f"storm@{uuid.uuid4().hex[:4]}", "-Q", queue, "--without-mingle",
                     "--without-gossip"], f"{tmp}/worker.log"),
        celery(ctx, ["beat", "-s", f"{tmp}/beat-schedule"], f"{tmp}/beat.log"),
    ]  # fmt: skip
    try:
        users = make_users(ctx, 2000)
        deal_id = open_deal(ctx, storm, 1)
        k = ctx.gate.keys.deal(deal_id)
        # The sweep must find a consumer from the first deadline.
        wait_log(Path(tmp) / "worker.log", "ready.", timeout=DEADLINE_S)
        sha = ctx.gate.redis.script_load(lua_source("admit"))
        admit(ctx, sha, deal_id, users, storm)
        last_deadline = float(ctx.gate.redis.zrange(k.due, -1, -1, withscores=True)[0][1]) / 1000
        deadline = time.monotonic() + DEADLINE_S
        while int(ctx.gate.redis.get(k.stock)) < storm:
            if time.monotonic() > deadline:
                raise TimeoutError("the storm's stock never came back")
            time.sleep(0.005)
        stock_back = time.time() - last_deadline

        def expired_rows() -> int:
            with ctx.db.read() as s:
                q = text("SELECT count(*) FROM orders WHERE deal_id = :d AND status = 'expired'")
                return int(s.execute(q, {"d": deal_id}).scalar() or 0)

        while expired_rows() < storm:
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL never caught up with the storm")
            time.sleep(0.05)
        persisted = time.time() - last_deadline
    finally:
        for p in procs:
            stop_process(p)
        shutil.rmtree(tmp, ignore_errors=True)
    return [{
        "scenario": f"expiry storm: {storm} unpaid orders, one deadline",
        "orders": storm,
        "stock_back_s_after_deadline": round(stock_back, 2),
        "target": "< 5",
        "all_expired_in_postgresql_s": round(persisted, 2),
    }]  # fmt: skip


def main() -> None:
    """Run both parts and save bench/results/payments.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=5_000, help="admissions per round and deal kind")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--storm", type=int, default=10_000, help="unpaid orders in the expiry storm")
    ap.add_argument("--http-seconds", type=int, default=6, help="wrk seconds per HTTP round (0 skips that part)")
    ap.add_argument("--http-rounds", type=int, default=3)
    a = ap.parse_args()
    with private_redis() as url:
        ctx = context(url)
        rows = bench_admission(ctx, a.orders, a.rounds)
        # The storm before the HTTP part: the web node's drain kicks for its outboxes would otherwise sit in the
        # queue ahead of the storm's sweeps.
        storm = bench_storm(ctx, a.storm)
        if a.http_seconds:
            rows += bench_http_admission(ctx, a.http_seconds, a.http_rounds, connections=64)
        rows += storm
    save("payments", rows, {"orders": a.orders, "rounds": a.rounds, "storm": a.storm, "http_seconds": a.http_seconds})


if __name__ == "__main__":
    main()
