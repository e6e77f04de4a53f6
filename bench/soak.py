"""Soak: deals run through their whole life one after another; costs must stay flat and Redis memory come back.

Usage: .venv/bin/python -m bench.soak [--deals 300] [--stock 200] [--buyers 250] [--measure 20]

The whole stack on private ports (bench/stack.py: nginx, three granian web nodes, two Celery worker nodes,
beat) on a private redis-server (``INFO memory`` is server-wide: nothing else may share it) and a private
database. ``DEAL_RETIRE_AFTER_SECONDS=0``, so beat's tick retires a deal as soon as it is ended and drained.
Each deal in turn: created and loaded into the gate, sold out by ``--buyers`` logged-in buyers through the LB
(``--stock`` accepted, the rest ``sold_out``), closed by the admin action, then left to the workers: drained by
the kicks and beat's safety net, retired by beat. The next deal starts at once.

For the first and the last ``--measure`` deals, right after the close (the deal still live, its orders partly
in flight): the CPU time of the task functions ``flashdeal.drain_active`` and ``flashdeal.reconcile`` (called
in this process, ``time.thread_time``) and the latency of ``GET /api/orders`` for a buyer of that deal. Ratios
last/first are the result (target <= 1.1), with Redis ``used_memory`` at the start (after a warm-up deal) and
after the last deal retired (target within 10% of the start).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psutil
import redis

from bench.common import Context, save
from bench.httpclient import Conn
from bench.stack import Stack
from bench.users import login_all, make_users
from harness.redis_server import private_redis

DEADLINE_S = 120  # every wait gives up after this
KINDS = (
    ("deal gate keys", "{deal:"),
    ("sessions", "session:"),
    ("cache", "cache:"),
    ("celery results", "celery-task-meta"),
)
PROCESS_KINDS = (("web", "granian"), ("beat", " beat "), ("worker", " worker "))
WARM_UP = 3  # deals run (and measured) before the start is measured
SETTLE_S = 7.0  # longer than DEAL_CACHE_TTL (5 s) and every drain flag (at most DRAIN_BUDGET_SECONDS + 1 s)
ORDER_BODY = b'{"quantity": 1}'
CONNECTIONS = 32
ORDERS_GETS = 40  # GET /api/orders (and /healthz, alternating) per measured deal


async def _sell(host: str, port: int, deal_id: int, cookies: list[str]) -> dict[int, int]:
    """One order attempt per buyer over CONNECTIONS keep-alive connections; statuses counted."""
    conns = await asyncio.gather(*(Conn.open(host, port) for _ in range(CONNECTIONS)))
    statuses: dict[int, int] = {}
    queue = list(cookies)

    async def run(conn: Conn) -> None:
        while queue:
            cookie = queue.pop()
            status, _ = await conn.post_json(f"/api/deals/{deal_id}/orders", ORDER_BODY, f"flashdeal_session={cookie}")
            statuses[status] = statuses.get(status, 0) + 1

    try:
        await asyncio.gather(*(run(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return statuses


def _latencies_ms(port: int, paths: list[str], cookie: str, n: int) -> list[float]:
    """Median wall time of each path over n rounds of sequential GETs (the paths alternate) on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times: list[list[float]] = [[] for _ in paths]
    try:
        for _ in range(n):
            for i, path in enumerate(paths):
                t0 = time.perf_counter()
                conn.request("GET", path, headers={"Cookie": f"flashdeal_session={cookie}"})
                resp = conn.getresponse()
                body = resp.read()
                times[i].append((time.perf_counter() - t0) * 1000)
                assert resp.status == 200, (resp.status, body[:200])
    finally:
        conn.close()
    return [statistics.median(t) for t in times]


def _cpu_ms(fn: Any, n: int = 5) -> float:
    """Median CPU time (this thread) of n calls of fn, in ms."""
    spent = []
    for _ in range(n):
        t0 = time.thread_time()
        fn()
        spent.append((time.thread_time() - t0) * 1000)
    return statistics.median(spent)


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _keys(client: redis.Redis) -> set[str]:
    return set(client.scan_iter(count=1000))


def _by_kind(client: redis.Redis) -> dict[str, int]:
    """Bytes held by each kind of key (MEMORY USAGE), to tell what grew if anything did."""
    kinds: dict[str, int] = {}
    for key in client.scan_iter(count=1000):
        kind = next((k for k, marker in KINDS if marker in key), "other")
        kinds[kind] = kinds.get(kind, 0) + int(client.memory_usage(key, samples=0) or 0)
    return kinds


def _connections_by_process(port: int) -> dict[str, int]:
    """Open connections to the private Redis, per process kind (web, worker, beat, bench): who holds memory."""
    counts: dict[str, int] = {}
    for conn in psutil.net_connections("tcp"):
        if conn.raddr and conn.raddr.port == port and conn.pid:
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline())
            except psutil.Error:
                continue
            kind = next((k for k, marker in PROCESS_KINDS if marker in cmd), "bench")
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _memory(client: redis.Redis) -> dict[str, int]:
    """What Redis's memory is made of right now (INFO memory and clients)."""
    mem, clients = client.info("memory"), client.info("clients")
    return {
        "used_memory": int(mem["used_memory"]),
        "dataset": int(mem["used_memory_dataset"]),
        "clients_memory": int(mem.get("mem_clients_normal", 0)),
        "connected_clients": int(clients["connected_clients"]),
        **{
            f"connections: {k}": v
            for k, v in _connections_by_process(client.connection_pool.connection_kwargs["port"]).items()
        },
        **{f"keys: {k}": v for k, v in sorted(_by_kind(client).items())},
    }


def _used_memory(client: redis.Redis, settle_s: float) -> int:
    """INFO memory used_memory once short-lived keys expired: the lowest of five readings a second apart.

    ``settle_s`` lets the cache entries of the last changes (TTL ``DEAL_CACHE_TTL``) and the drain flags expire;
    client buffers come and go, hence the lowest reading.
    """
    time.sleep(settle_s)
    readings = []
    for _ in range(5):
        readings.append(int(client.info("memory")["used_memory"]))
        time.sleep(1)
    return min(readings)


def main() -> None:
    """Run the soak and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deals", type=int, default=300)
    ap.add_argument("--stock", type=int, default=200)
    ap.add_argument("--buyers", type=int, default=250)
    ap.add_argument("--measure", type=int, default=20)
    ap.add_argument(
        "--no-retire",
        action="store_true",
        help="the comparison: deals never retire (DEAL_RETIRE_AFTER_SECONDS huge), as before retirement existed",
    )
    args = ap.parse_args()
    measure = min(args.measure, args.deals // 2)
    with private_redis() as url:
        os.environ.update(REDIS_URL=url, CELERY_BROKER_URL=url)
        ctx = Context.create("flashdeal_bench_soak", fresh=True)
        ctx.env.update(DEAL_RETIRE_AFTER_SECONDS=str(10**9 if args.no_retire else 0), DEAL_CACHE_TTL="5")
        # The task functions run in this process too (for their CPU time): same settings as the workers.
        os.environ.update(ctx.env)
        from shared.deals import NewDeal, close_now, create_deal, load_deal
        from shared.models import Deal
        from worker.tasks import drain_active_task, reconcile_task

        rds = redis.Redis.from_url(url, decode_responses=True)
        with Stack(ctx.env) as stack:
            lb = stack.lb_port
            buyers = make_users(ctx.db, args.buyers + 2 * measure + WARM_UP)
            cookies = login_all(stack.base, [e for _, e in buyers])
            crowd, probes, warm = cookies[: args.buyers], cookies[args.buyers : -WARM_UP], cookies[-WARM_UP:]

            def one_deal(n: int, probe: str | None) -> dict[str, float] | None:
                now = datetime.now(UTC)
                spec = NewDeal(f"soak {n}", Decimal("9.99"), args.stock, 1, now, now + timedelta(hours=1))
                with ctx.db.transaction() as s:
                    deal = create_deal(s, spec)
                    deal.status = "open"
                with ctx.db.read() as s:
                    load_deal(s, ctx.gate, deal)
                sellers = ([probe] if probe else []) + crowd  # the probe buys first: its order is accepted
                statuses = asyncio.run(_sell("127.0.0.1", lb, deal.id, sellers))
                assert statuses.get(202, 0) == args.stock and set(statuses) <= {202, 409}, statuses
                row = None
                if probe is not None:
                    # Sold out, drained, still live (the close comes next), the deal before retired: the same
                    # moment of every measured deal, with the workers idle. Without retirement every deal
                    # before this one would still be live here, and each walk below would visit all of them.
                    outbox = ctx.gate.keys.deal(deal.id).outbox

                    def quiet() -> bool:
                        return rds.xlen(outbox) == 0 and (args.no_retire or ctx.gate.live_deal_ids() == [deal.id])

                    _wait(quiet, "a quiet moment")
                    orders_ms, healthz_ms = _latencies_ms(lb, ["/api/orders", "/healthz"], probe, ORDERS_GETS)
                    row = {
                        "deal": deal.id,
                        "live_deals": len(ctx.gate.live_deal_ids()),
                        "drain_active_cpu_ms": _cpu_ms(drain_active_task),
                        "reconcile_cpu_ms": _cpu_ms(reconcile_task, 3),
                        "orders_ms": orders_ms,
                        "healthz_ms": healthz_ms,
                    }
                close_now(ctx.db, ctx.gate, deal.id)
                return row

            def settled() -> bool:
                if args.no_retire:  # every outbox drained is all there is to wait for
                    return all(rds.xlen(ctx.gate.keys.deal(d).outbox) == 0 for d in ctx.gate.live_deal_ids())
                with ctx.db.read() as s:
                    left = s.query(Deal).filter(Deal.retired_at.is_(None)).count()
                return left == 0 and not ctx.gate.live_deal_ids()

            for n in range(WARM_UP):  # scripts loaded, every connection pool and thread in use, caches built
                one_deal(-1 - n, warm[n])
            _wait(settled, "the warm-up deals to retire")
            start_mem, start_keys, start_parts = _used_memory(rds, SETTLE_S), _keys(rds), _memory(rds)
            first, last, peak = [], [], start_mem
            t0 = time.monotonic()
            for n in range(args.deals):
                probe = None
                if n < measure:
                    probe = probes[n]
                elif n >= args.deals - measure:
                    probe = probes[measure + n - (args.deals - measure)]
                row = one_deal(n, probe)
                if row is not None:
                    (first if n < measure else last).append(row)
                if n % 25 == 0:
                    peak = max(peak, int(rds.info("memory")["used_memory"]))
                    print(f"[soak] deal {n + 1}/{args.deals}, live {len(ctx.gate.live_deal_ids())}", flush=True)
            sold_s = time.monotonic() - t0
            _wait(settled, "every deal to retire")
            retired_s = time.monotonic() - t0
            end_mem, end_keys, end_parts = _used_memory(rds, SETTLE_S), _keys(rds), _memory(rds)
            persisted = _persisted(ctx)  # nothing lost: every accepted order is in PostgreSQL
        ctx.cleanup()

    def med(rows: list[dict[str, float]], k: str) -> float:
        return statistics.median(r[k] for r in rows)

    rows = []
    for k, label in (
        ("orders_ms", "GET /api/orders latency, ms (median of medians)"),
        ("healthz_ms", "GET /healthz latency, ms (alternating with it: the machine's noise)"),
        ("drain_active_cpu_ms", "drain_active CPU per call, ms"),
        ("reconcile_cpu_ms", "reconcile CPU per call, ms"),
        ("live_deals", "live deals at the measurement"),
    ):
        a, b = med(first, k), med(last, k)
        rows.append(
            {
                "measure": label,
                f"first {measure}": round(a, 3),
                f"last {measure}": round(b, 3),
                "ratio": round(b / a, 3) if a else "",
            }
        )
    rows.append(
        {
            "measure": "Redis used_memory, bytes (start / after the last retired)",
            f"first {measure}": start_mem,
            f"last {measure}": end_mem,
            "ratio": round(end_mem / start_mem, 3),
        }
    )
    keys_row = {f"first {measure}": len(start_keys), f"last {measure}": len(end_keys)}
    rows.append({"measure": "Redis keys (start / end)", **keys_row})
    extra = {
        "deals": args.deals,
        "retire": not args.no_retire,
        "stock": args.stock,
        "buyers": args.buyers,
        "orders_accepted": (args.deals + WARM_UP) * args.stock,  # the warm-up deals' too
        "orders_persisted": persisted,
        "redis_peak_used_memory": peak,
        "sell_seconds": round(sold_s, 1),
        "all_retired_seconds": round(retired_s, 1),
        "memory_start": start_parts,
        "memory_end": end_parts,
        "keys_added": sorted(end_keys - start_keys)[:20],
        "keys_gone": sorted(start_keys - end_keys)[:20],
    }
    save("soak_no_retire" if args.no_retire else "soak", rows, extra)
    print(extra)


def _persisted(ctx: Context) -> int:
    from sqlalchemy import func, select

    from shared.models import Order

    with ctx.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Order).where(Order.status == "confirmed")) or 0)


if __name__ == "__main__":
    main()
