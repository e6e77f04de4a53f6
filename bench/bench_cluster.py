"""Redis Cluster: admissions through the gate on a six-node cluster against one Redis, same run.

Usage: .venv/bin/python -m bench.bench_cluster [--seconds 4] [--procs 2] [--threads 8] [--deals 300] [--rounds 2]

Started from the local redis-server, on free ports, AOF on everywhere: a cluster of three primaries and
three replicas (scripts/local_redis/cluster.py), and one Redis with one replica (the single topology with
the same durability). Nothing else: no web node, no PostgreSQL, no worker; ``Gate.admit`` is called by
``--procs`` processes of ``--threads`` threads each, so what is measured is the gate and its Redis.

1. One order at a time, one thread: µs per admission (wall and client CPU) through DirectCalls on one
   Redis, DirectCalls on the cluster, and redis-py's RedisCluster client (``Script`` → ``evalsha``).
2. Many deals (``--deals``, spread over the three shards), ORDER_ACK_REPLICAS 0 and 1: admissions/s on
   the cluster and on one Redis, alternating, best round of each; the ratio (target >= 0.7x).
3. One deal on the cluster (one slot, one primary): admissions/s, and that primary's Redis CPU per
   admission (INFO commandstats), whose inverse is what one shard can admit for one deal.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import redis
from redis.crc import key_slot

from bench.common import save
from harness.redis_server import PrivateRedis
from harness.waits import wait_for
from scripts.local_redis.cluster import ClusterPorts, ClusterTopology, free_cluster_ports, node_client
from shared.clock import now_ms
from shared.gate import Admission, DealRules, Gate
from shared.keys import Keys
from shared.order_ids import new_order_id
from shared.redis import text_client
from shared.settings import Settings

STOCK = 10**9


class ReplicatedRedis:
    """One redis-server and one replica of it (AOF on both), the single topology's counterpart of a shard."""

    def __init__(self, root: Path) -> None:
        aof = ("--appendonly", "yes", "--appendfsync", "everysec")
        self.primary = PrivateRedis(root / "primary", aof)
        self.replica = PrivateRedis(root / "replica", (*aof, "--replicaof", "127.0.0.1", str(self.primary.port)))
        self.ports = (self.primary.port, self.replica.port)

    def start(self) -> ReplicatedRedis:
        """Start both and wait until the replica is in sync."""
        self.primary.start()
        self.replica.start()
        wait_for(self._in_sync, 20, "the replica did not sync")
        return self

    def _in_sync(self) -> bool:
        try:
            return node_client(self.ports[1]).info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Stop both (only the processes this object started)."""
        self.replica.stop()
        self.primary.stop()


def _rules(deal_id: int) -> DealRules:
    return DealRules(deal_id, "open", now_ms() - 1000, now_ms() + 3_600_000, STOCK, Decimal("9.99"), STOCK, "bench")


def _load(settings: Settings, deal_ids: list[int]) -> None:
    client = text_client(settings)
    gate = Gate.from_settings(client, settings)
    for d in deal_ids:
        gate.load(_rules(d), STOCK)
    client.close()


def _buyer_proc(settings: Settings, deal_ids: list[int], threads: int, start_at: float, seconds: float, out) -> None:  # type: ignore[no-untyped-def]
    """One load process: ``threads`` threads admitting orders into random deals between start_at and its end."""
    gate = Gate.from_settings(text_client(settings), settings)
    counts = [0] * threads

    def buyer(i: int) -> None:
        rnd = random.Random(i)
        end = start_at + seconds
        while time.time() < start_at:
            time.sleep(0.001)
        n = 0
        while time.time() < end:
            d = rnd.choice(deal_ids)
            r = gate.admit(d, rnd.randrange(1, 10**6), 1, new_order_id(d))
            assert r.outcome == Admission.ACCEPTED, r
            n += 1
        counts[i] = n

    ts = [threading.Thread(target=buyer, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    for t in ts:
        t.join()
    out.put((sum(counts), time.process_time() - cpu0))


@dataclass(frozen=True)
class Run:
    """One load run: admissions/s, and the CPU each admission cost the clients and the Redis servers."""

    rate: float
    client_cpu_us: float
    redis_cpu_us: float  # every node of the topology, replicas included (they apply the same writes)


def _redis_cpu_s(ports: tuple[int, ...]) -> float:
    total = 0.0
    for port in ports:
        cpu = node_client(port).info("cpu")
        total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return total


def _throughput(
    settings: Settings, ports: tuple[int, ...], deal_ids: list[int], procs: int, threads: int, seconds: float
) -> Run:
    """``procs`` x ``threads`` buyers for ``seconds`` (all start together) on the nodes ``ports``."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 1.5  # every process connected and ready
    ps = [ctx.Process(target=_buyer_proc, args=(settings, deal_ids, threads, start_at, seconds, out))
          for _ in range(procs)]  # fmt: skip
    for p in ps:
        p.start()
    time.sleep(max(0.0, start_at - time.time()))
    redis0 = _redis_cpu_s(ports)
    replies = [out.get(timeout=seconds + 60) for _ in ps]
    redis_cpu = _redis_cpu_s(ports) - redis0
    for p in ps:
        p.join(30)
    n = sum(count for count, _ in replies)
    return Run(n / seconds, sum(cpu for _, cpu in replies) / n * 1e6, redis_cpu / n * 1e6)


def _one_at_a_time(
    settings: Settings, deal_ids: list[int], n: int, through_client: bool = False
) -> tuple[float, float]:
    """(wall µs, client CPU µs) per admission, one thread; ``through_client``: RedisCluster's evalsha instead."""
    client = text_client(settings)
    gate = Gate.from_settings(client, settings)
    rnd = random.Random(1)
    keys = {d: gate.keys.deal(d).gate_keys() for d in deal_ids}

    def admit(d: int) -> None:
        args = [rnd.randrange(1, 10**6), 1, new_order_id(d), "", 100]
        if through_client:
            assert gate._admit(keys=keys[d], args=args)[0] == "accepted"
        else:
            assert gate.admit(d, args[0], 1, str(args[2])).outcome == Admission.ACCEPTED

    for _ in range(200):
        admit(rnd.choice(deal_ids))
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        admit(rnd.choice(deal_ids))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    client.close()
    return wall / n * 1e6, cpu / n * 1e6


def _row(measure: str, run: Run) -> dict[str, object]:
    return {"measure": measure, "value": round(run.rate), "unit": "admissions/s",
            "client_cpu_us": round(run.client_cpu_us, 1), "redis_cpu_us": round(run.redis_cpu_us, 1)}  # fmt: skip


def _evalsha_usec(port: int) -> float:
    stats = node_client(port).info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


def main() -> None:
    """Run the three measurements and print the table and the ratio."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--deals", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sequential", type=int, default=3000, help="admissions of the one-at-a-time measurement")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="flashdeal-cluster-bench-"))
    cluster = ClusterTopology(root / "cluster", ClusterPorts(free_cluster_ports(6)))
    single = ReplicatedRedis(root / "single")
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    rows: list[dict[str, object]] = []
    try:
        cluster.start()
        single.start()
        # From these variables alone (not the caller's environment): the two differ only in their topology.
        on = {
            "cluster": Settings.from_env({"FLASHDEAL_REDIS_TOPOLOGY": "cluster", "FLASHDEAL_KEY_PREFIX": prefix,
                                          "REDIS_CLUSTER_NODES": cluster.ports.nodes_setting}),
            "one Redis": Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{single.ports[0]}/0",
                                            "FLASHDEAL_KEY_PREFIX": prefix}),
        }  # fmt: skip
        deal_ids = list(range(1, args.deals + 1))
        hot = [args.deals + 1]
        for s in on.values():
            _load(s, deal_ids + hot)

        # 1. One at a time: what each client path costs per admission.
        seq = {
            "DirectCalls, one Redis": _one_at_a_time(on["one Redis"], deal_ids, args.sequential),
            "DirectCalls, cluster": _one_at_a_time(on["cluster"], deal_ids, args.sequential),
            "RedisCluster client (evalsha), cluster": _one_at_a_time(on["cluster"], deal_ids, args.sequential, True),
        }
        for name, (wall, cpu) in seq.items():
            rows.append({"measure": f"one at a time, ack 0: {name}", "value": round(wall, 1), "unit": "µs/admission",
                         "client_cpu_us": round(cpu, 1), "redis_cpu_us": ""})  # fmt: skip

        # 2. Many deals, both topologies, alternating, ack 0 and 1.
        nodes = {"cluster": cluster.ports.nodes, "one Redis": single.ports}
        best: dict[tuple[str, int], Run] = {}
        for ack in (0, 1):
            for i in range(args.rounds):
                for name in ("one Redis", "cluster") if i % 2 == 0 else ("cluster", "one Redis"):
                    s = on[name].with_(order_ack_replicas=ack)
                    run = _throughput(s, nodes[name], deal_ids, args.procs, args.threads, args.seconds)
                    if (name, ack) not in best or run.rate > best[(name, ack)].rate:
                        best[(name, ack)] = run
                    rows.append(_row(f"{args.deals} deals, ack {ack}, {name}, round {i + 1}", run))

        # 3. One deal on the cluster: one slot, one primary.
        shard = cluster.primary_of(key_slot(Keys(prefix).deal(hot[0]).stock.encode()))
        node_client(shard).config_resetstat()
        one_deal = {ack: _throughput(on["cluster"].with_(order_ack_replicas=ack), cluster.ports.nodes, hot,
                                     args.procs, args.threads, args.seconds) for ack in (1, 0)}  # fmt: skip
        usec = _evalsha_usec(shard)
        for ack, run in one_deal.items():
            rows.append(_row(f"one deal on the cluster (its shard {shard}), ack {ack}", run))
    finally:
        cluster.stop()
        single.stop()
        shutil.rmtree(root, ignore_errors=True)
    ratios = {ack: best[("cluster", ack)].rate / best[("one Redis", ack)].rate for ack in (0, 1)}
    save(
        "cluster",
        rows,
        {
            "load": f"{args.procs} processes x {args.threads} threads calling Gate.admit, {args.seconds} s per run",
            "cluster": "3 primaries + 3 replicas, AOF everysec; one Redis: 1 primary + 1 replica, AOF everysec",
            "cluster_over_one_redis_ack0": round(ratios[0], 3),
            "cluster_over_one_redis_ack1": round(ratios[1], 3),
            "hot_shard_evalsha_usec_per_call": usec,
            "hot_shard_ceiling_per_s": round(1e6 / usec) if usec else None,
        },
    )
    d, c, rc = (seq[k] for k in seq)
    cl, one = {a: best[("cluster", a)] for a in (0, 1)}, {a: best[("one Redis", a)] for a in (0, 1)}
    print(
        f"\none at a time: DirectCalls {d[0]:.0f} µs on one Redis, {c[0]:.0f} µs on the cluster; RedisCluster's "
        f"client {rc[0]:.0f} µs (client CPU {d[1]:.0f} / {c[1]:.0f} / {rc[1]:.0f} µs)\n"
        f"{args.deals} deals: cluster {cl[0].rate:.0f}/s vs one Redis {one[0].rate:.0f}/s at ack 0: {ratios[0]:.2f}x; "
        f"at ack 1 {cl[1].rate:.0f}/s vs {one[1].rate:.0f}/s: {ratios[1]:.2f}x (target >= 0.7x)\n"
        f"Redis CPU per admission (all nodes), ack 1: cluster {cl[1].redis_cpu_us:.0f} µs, one Redis "
        f"{one[1].redis_cpu_us:.0f} µs\n"
        f"one deal on one shard: {one_deal[1].rate:.0f}/s at ack 1, {one_deal[0].rate:.0f}/s at ack 0; that primary "
        f"spent {usec:.1f} µs of CPU per admission: one shard's ceiling for one deal ~{1e6 / usec if usec else 0:.0f}/s"
    )


if __name__ == "__main__":
    main()
