"""Redis Sentinel: the cost of the durable acknowledgement, and the time a failover stops admissions.

Usage: .venv/bin/python -m bench.bench_sentinel [--seconds 8] [--connections 100] [--rounds 2]
A Sentinel topology of its own (primary, two replicas, three sentinels on free ports, from the local
redis-server), two granian instances on it (2 workers x 8 threads each): one with ORDER_ACK_REPLICAS=1,
one with 0. wrk loads them in turns, same run; then the primary is SIGKILLed under a steady stream of
orders and the time until the next order is admitted is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

from bench.bench_http import orders_lua
from bench.common import Context, open_sale, save, wrk
from bench.users import login_all, make_users
from harness.granian import start_granian
from harness.ports import free_port, free_ports
from harness.processes import stop_process
from scripts.local_redis.sentinel import MASTER_NAME, SentinelPorts, SentinelTopology
from shared.gate import Gate
from shared.redis import text_client
from shared.settings import Settings


def _failover(base: str, cookie: str, deal_id: int, topology: SentinelTopology, buyers: int = 4) -> dict[str, float]:
    """Orders from ``buyers`` threads; SIGKILL the primary; seconds until an order is admitted again."""
    admitted: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 60

    def buyer() -> None:
        s = requests.Session()
        s.cookies.set("flashdeal_session", cookie)
        while time.monotonic() < stop_at:
            key = uuid.uuid4().hex
            try:
                r = s.post(f"{base}/api/deals/{deal_id}/orders", json={"quantity": 1},
                           headers={"Idempotency-Key": key}, timeout=15)  # fmt: skip
            except requests.RequestException:
                continue
            if r.status_code == 202:
                with lock:
                    admitted.append(time.monotonic())
            else:
                time.sleep(0.01)

    threads = [threading.Thread(target=buyer, daemon=True) for _ in range(buyers)]
    for t in threads:
        t.start()
    time.sleep(2)
    old = topology.primary()
    killed = time.monotonic()
    topology.kill(old)
    promoted = None
    while time.monotonic() < stop_at:
        if promoted is None and topology.primary() != old:
            promoted = time.monotonic()
        with lock:
            after = [t for t in admitted if t > killed + 0.05]  # replies already in flight at the kill excluded
        if promoted is not None and after:
            break
        time.sleep(0.01)
    stop_at = time.monotonic()
    for t in threads:
        t.join(20)
    with lock:
        after = [t for t in admitted if t > killed + 0.05]
    return {
        "promoted_s": round((promoted or stop_at) - killed, 2),
        "admitting_again_s": round(after[0] - killed, 2) if after else float("nan"),
    }


def main() -> None:
    """Run both measurements and print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--users", type=int, default=200)
    # A database of its own: the shared bench database may be migrated by another branch's code.
    ap.add_argument("--database", default="flashdeal_bench_sentinel")
    args = ap.parse_args()

    base_ctx = Context.create(args.database)
    root = Path(tempfile.mkdtemp(prefix="flashdeal-sentinel-bench-"))
    ports = free_ports(6)
    topology = SentinelTopology(root, SentinelPorts(data=ports[:3], sentinels=ports[3:]))
    procs = []
    env: dict[str, str] = {}
    try:
        topology.start()
        sentinels = topology.ports.sentinels_setting
        env = {**base_ctx.env, "FLASHDEAL_REDIS_TOPOLOGY": "sentinel", "REDIS_SENTINELS": sentinels,
               "REDIS_SENTINEL_MASTER": MASTER_NAME}  # fmt: skip
        env.pop("CELERY_BROKER_URL", None)  # the topology's own broker (no worker runs here: kicks only queue)
        settings = Settings.from_env(env)
        env["CELERY_BROKER_URL"] = settings.celery_broker_url
        ctx = Context(env, settings, base_ctx.db, Gate.from_settings(text_client(settings), settings))
        deal_id = open_sale(ctx, "sentinel bench deal")
        emails = [email for _id, email in make_users(ctx.db, args.users)]
        nodes = {}
        for replicas in (1, 0):
            port = free_port()
            procs.append(start_granian({**env, "ORDER_ACK_REPLICAS": str(replicas)}, port))
            nodes[replicas] = f"http://127.0.0.1:{port}"
        cookies = login_all(nodes[0], emails)  # sessions live in Redis: valid on both nodes
        lua = orders_lua(cookies, deal_id)
        wrk("warmup", nodes[1], lua=lua, connections=50, seconds=2)
        runs: dict[int, list] = {1: [], 0: []}
        for i in range(args.rounds):
            for replicas in (0, 1) if i % 2 == 0 else (1, 0):
                name = f"POST orders, ORDER_ACK_REPLICAS={replicas}, round {i + 1}"
                runs[replicas].append(wrk(name, nodes[replicas], lua=lua, connections=args.connections,
                                          seconds=args.seconds))  # fmt: skip
        best = {r: max(rs, key=lambda x: x.requests_per_s) for r, rs in runs.items()}
        unreplicated = _scrape(nodes[1], "flashdeal_ack_unreplicated_total")
        failover = _failover(nodes[1], cookies[0], deal_id, topology)
    finally:
        for p in procs:
            stop_process(p)
        _drop_queue(env.get("CELERY_BROKER_URL", ""), base_ctx.env["CELERY_QUEUE"])
        topology.stop()
        shutil.rmtree(root, ignore_errors=True)
        base_ctx.cleanup()
    ratio = best[1].requests_per_s / best[0].requests_per_s
    rows = [r.row(best[0]) for rs in runs.values() for r in rs]
    save(
        "sentinel",
        rows,
        {
            "server": "granian wsgi, 2 workers, 8 blocking threads, one instance per setting",
            "topology": "primary + 2 replicas + 3 sentinels (AOF everysec, min-replicas-to-write 1)",
            "ack1_over_ack0": round(ratio, 3),
            "unreplicated_acks": unreplicated,
            **failover,
        },
    )
    print(
        f"\nORDER_ACK_REPLICAS=1: {best[1].requests_per_s:.0f} orders/s (p99 {best[1].p99_ms:.1f} ms) vs 0: "
        f"{best[0].requests_per_s:.0f}/s (p99 {best[0].p99_ms:.1f} ms): {ratio:.2f}x (target >= 0.6x); "
        f"{unreplicated:.0f} acknowledgements unreplicated\n"
        f"failover: primary SIGKILLed, replica promoted after {failover['promoted_s']} s, orders admitted again "
        f"after {failover['admitting_again_s']} s (target < 10 s)"
    )


def _drop_queue(broker: str, queue: str) -> None:
    """Delete this run's queue: no worker runs here, so the web nodes' drain kicks are left in it."""
    if not broker.startswith("amqp"):
        return  # a Redis broker's queue is a key in the topology, which goes with it
    from kombu import Connection

    with contextlib.suppress(Exception), Connection(broker, connect_timeout=2) as conn:
        conn.default_channel.queue_delete(queue)


def _scrape(base: str, name: str) -> float:
    """Sum of a counter's samples on a node's /metrics."""
    total = 0.0
    for line in requests.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


if __name__ == "__main__":
    main()
