"""Admission script cost with and without the buyers' in-flight index (one ZADD), measured in the same run.

Usage: .venv/bin/python -m bench.bench_admit [--orders 20000] [--rounds 3]

A private redis-server (nothing else runs on it): each round admits ``--orders`` orders of distinct order ids
through ``shared/lua/admit.lua`` as shipped, and through the same script without its ``ZADD`` line (the baseline),
in pipelines of 200 from one client, alternating the two. Nothing drains, so the index grows to ``--orders``
entries: the worst case (a sale with its workers down); in normal operation it holds only what is in flight.
Reported: Redis CPU per admission (``INFO commandstats``, usec_per_call of EVALSHA) and admissions/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from decimal import Decimal

import redis

from bench.common import save
from harness.redis_server import private_redis
from shared.clock import now_ms
from shared.gate import DealRules, Gate, lua_source
from shared.keys import Keys
from shared.order_ids import new_order_id

INDEX_LINE = "redis.call('ZADD', KEYS[8], user, order_id .. '|o')\n"
BATCH = 200


def variants() -> dict[str, str]:
    """The shipped script and the baseline without the index line."""
    shipped = lua_source("admit")
    if INDEX_LINE not in shipped:
        raise SystemExit("shared/lua/admit.lua has no in-flight index line: update bench/bench_admit.py")
    return {"with in-flight index (shipped)": shipped, "without (baseline)": shipped.replace(INDEX_LINE, "")}


def one_round(
    client: redis.Redis, gate: Gate, script: str, deal_id: int, orders: int, drained: bool
) -> tuple[float, float]:
    """Admit ``orders`` orders into a fresh deal; (µs of Redis CPU per admission, admissions/s).

    ``drained``: the index is emptied after each batch, as the drain keeps it (only what is in flight).
    """
    rules = DealRules(deal_id, "open", now_ms() - 1000, now_ms() + 3_600_000, 10**9, Decimal("9.99"), 10**9, "b")
    gate.load(rules, 10**9)
    keys = gate.keys.deal(deal_id).gate_keys()
    sha = client.script_load(script)
    client.config_resetstat()
    t0 = time.perf_counter()
    for start in range(0, orders, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(orders, start + BATCH)):
            pipe.evalsha(sha, len(keys), *keys, 1000 + i % 5000, 1, new_order_id(deal_id), "", 100)
        replies = pipe.execute()
        assert all(r[0] == "accepted" for r in replies), replies[:2]
        if drained:
            client.delete(gate.keys.deal(deal_id).inflight)
    seconds = time.perf_counter() - t0
    usec = float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    gate.unload(deal_id)
    return usec, orders / seconds


def main() -> None:
    """Run the rounds and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with private_redis() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        gate = Gate(client, Keys(f"bench{uuid.uuid4().hex[:6]}:"))
        scenarios = {"index grows (nothing drained)": False, "index <= 200 (drained as it goes)": True}
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        deal_id = 1
        for _ in range(args.rounds):
            for scenario, drained in scenarios.items():
                for name, script in variants().items():  # alternating: drift on the machine hits both alike
                    run = one_round(client, gate, script, deal_id, args.orders, drained)
                    results.setdefault((scenario, name), []).append(run)
                    deal_id += 1
    rows = []
    for (scenario, name), runs in results.items():
        base = results[(scenario, "without (baseline)")]
        us, base_us = statistics.median(u for u, _ in runs), statistics.median(u for u, _ in base)
        rows.append(
            {
                "scenario": scenario,
                "script": name,
                "Redis µs per admission (median)": round(us, 2),
                "admissions/s (median, 1 client, pipelined)": round(statistics.median(r for _, r in runs)),
                "ratio µs to baseline": round(us / base_us, 3),
                "rounds": len(runs),
            }
        )
    save("admit", rows, {"orders_per_round": args.orders})


if __name__ == "__main__":
    main()
