"""Nemeses: faults on real processes, each bounded in time and healed before it returns.

Each one runs while the buyers load the shop, and leaves the topology whole again: every data node up,
one primary with its replicas online (roles may have moved). What it did is returned as one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from harness.processes import paused
from harness.waits import wait_for
from scripts.local_redis.cluster import ClusterTopology
from scripts.local_redis.sentinel import DOWN_AFTER_MS, SentinelTopology
from shared.outbox_entry import EXPIRED, PAID

if TYPE_CHECKING:
    from faults.matrix import FaultStack

FAILOVER_S = 30.0  # a failover on a busy 2-core machine, with margin
# Paused replicas: under min-replicas-max-lag (5 s), so the primary keeps admitting (answered "unconfirmed").
LAG_S = 3.0
# A paused primary: past the sentinels' down-after, long enough for the failover to finish while it sleeps.
ZOMBIE_S = DOWN_AFTER_MS / 1000 + 4.0

# Each gets the running stack (topology, workers, PostgreSQL) and returns what it did, healed.
Nemesis = Callable[["FaultStack"], str]
WORKER_KILLS = 3  # worker nodes SIGKILLed this many times, each while expiries are due
PG_CRASHES = 2
FRESH_MS = 50  # an outbox entry read this recently is in a live worker's hands
# Pending entries looked at per deal, oldest first: a killed node's leave hundreds until they are claimed again.
PENDING_SCAN = 2000
IN_FLIGHT_WAIT_S = 60.0
PARTITION_S = 8.0  # past the failover and past min-replicas-max-lag (5 s) on the minority side


def role(t: SentinelTopology | ClusterTopology, port: int) -> str:
    """The node's role (master / slave), '' when it does not answer."""
    try:
        return str(redis.Redis(t.host(port), port, socket_timeout=1).info("replication")["role"])
    except redis.RedisError:
        return ""


def healed(t: SentinelTopology | ClusterTopology) -> int:
    """Wait until one primary has every other data node online as its replica; its port.

    On a cluster: until every node says the cluster is whole and each primary has a replica; 0.
    """
    if isinstance(t, ClusterTopology):
        t.wait_healthy(FAILOVER_S)
        return 0
    want = len(t.ports.data) - 1
    wait_for(lambda: t.replicas_online(t.primary()) == want, FAILOVER_S, "the topology did not heal")
    return t.primary()


def _failover_from(t: SentinelTopology, old: int) -> int:
    wait_for(lambda: t.primary() != old and role(t, t.primary()) == "master", FAILOVER_S, "no failover")
    return t.primary()


def _stopped(t: SentinelTopology, ports: list[int]) -> contextlib.AbstractContextManager[None]:
    """SIGSTOP the nodes on ports; SIGCONT them on the way out, whatever happens in between."""
    return paused([p for p in (t.pid(port) for port in ports) if p is not None])


def none(stack: FaultStack) -> str:
    """No fault: the baseline row."""
    return "no fault"


def kill_primary(stack: FaultStack) -> str:
    """SIGKILL the primary; the sentinels promote a replica; the old one restarts on its AOF as a replica."""
    t = stack.topology
    old = healed(t)
    t.kill(old)
    new = _failover_from(t, old)
    t.restart(old)
    healed(t)
    return f"SIGKILL {old}, {new} promoted, {old} back as replica"


def pause_primary(stack: FaultStack) -> str:
    """SIGSTOP the primary past down-after: a replica is promoted while it sleeps; SIGCONT: the zombie wakes."""
    t = stack.topology
    old = healed(t)
    t0 = time.monotonic()
    with _stopped(t, [old]):
        new = _failover_from(t, old)
        time.sleep(max(1.0, ZOMBIE_S - (time.monotonic() - t0)))  # the new primary serves while the old one sleeps
        slept = time.monotonic() - t0
    # The zombie wakes believing it is primary until the sentinels demote it.
    wait_for(lambda: role(t, old) == "slave", FAILOVER_S, f"the zombie {old} was not demoted")
    healed(t)
    return f"SIGSTOP {old} {slept:.1f}s, {new} promoted, {old} demoted after SIGCONT"


def lag_then_kill(stack: FaultStack) -> str:
    """Replicas paused (behind) while the primary admits; the primary dies; a lagging replica is promoted."""
    t = stack.topology
    old = healed(t)
    replicas = [p for p in t.ports.data if p != old]
    with _stopped(t, replicas):
        time.sleep(LAG_S)  # admitted on the primary only: answered "unconfirmed", drained by the workers
        t.kill(old)
    new = _failover_from(t, old)
    t.restart(old)
    healed(t)
    return f"SIGSTOP replicas {replicas} {LAG_S:.0f}s, SIGKILL {old}, {new} promoted"


def kill_workers(stack: FaultStack) -> str:
    """SIGKILL every worker node while expiries are due (a sweep and the drains of payment decisions under
    way), start fresh ones; the entries they held stay pending and are claimed again."""
    for _ in range(WORKER_KILLS):
        wait_for(stack.expiries_due, 15, "no expiry came due")
        time.sleep(0.2)  # the sweep (beat every second, and every drain) is at work on them
        stack.restart_workers()
        time.sleep(1.0)
    return f"SIGKILL every worker node {WORKER_KILLS}x while expiries were due, restarted"


def _in_flight(stack: FaultStack, kind: str) -> tuple[int, str, int, str] | None:
    """An outbox entry of ``kind`` that a live worker has read and not yet acknowledged (its drain is between
    XREADGROUP and the XACK after the PostgreSQL commit): its deal, id, how many ms ago it was read, consumer."""
    rds, group = stack.gate.redis, stack.gate.keys.drain_group
    streams = [(d, stack.gate.keys.deal(d).outbox) for d in stack.deals]
    try:
        pipe = rds.pipeline(transaction=False)  # one round trip for every deal: the window is milliseconds
        for _d, stream in streams:
            pipe.xpending_range(stream, group, "-", "+", PENDING_SCAN)
        for (deal_id, stream), pending in zip(streams, pipe.execute(), strict=True):
            # Read moments ago: a live worker holds it (a killed one's stay pending until claimed again).
            for p in pending:
                if p["time_since_delivered"] <= FRESH_MS:
                    entry = rds.xrange(stream, p["message_id"], p["message_id"])
                    if entry and entry[0][1].get("t") == kind:
                        return deal_id, p["message_id"], p["time_since_delivered"], p["consumer"]
    except redis.RedisError:
        pass
    return None


def _pending(stack: FaultStack, deal_id: int, entry_id: str) -> bool:
    """True while the entry is read and not acknowledged."""
    stream = stack.gate.keys.deal(deal_id).outbox
    return bool(stack.gate.redis.xpending_range(stream, stack.gate.keys.drain_group, entry_id, entry_id, 1))


def _kill_consumer(stack: FaultStack, consumer: str) -> bool:
    """SIGKILL the pool process that holds the entry first (the consumer name ends in its pid, worker/tasks.py),
    if it belongs to a worker node of this run: the whole nodes' kills take milliseconds more."""
    with contextlib.suppress(ValueError, ProcessLookupError):
        pid = int(consumer.rsplit(":", 1)[1])
        if os.getpgid(pid) in {w.proc.pid for w in stack.workers}:
            os.kill(pid, signal.SIGKILL)
            return True
    return False


def kill_workers_holding(kind: str, what: str) -> Nemesis:
    """SIGKILL every worker node the moment one holds an entry of ``kind`` between its read and its ack."""

    def nemesis(stack: FaultStack) -> str:
        inside = kills = 0
        for _ in range(WORKER_KILLS):
            deadline, found = time.monotonic() + IN_FLIGHT_WAIT_S, None
            while found is None and time.monotonic() < deadline:
                found = _in_flight(stack, kind)
            if found is None:  # reported in the row's fault line, not raised: the other rows still run
                print(f"[faults]   {what}: none in flight within {IN_FLIGHT_WAIT_S:.0f} s", flush=True)
                continue
            deal_id, entry_id, ms, consumer = found
            first = _kill_consumer(stack, consumer)
            kills += 1
            stack.kill_workers()
            # Still pending once every worker is dead: the kill landed between that entry's read and its ack.
            landed = _pending(stack, deal_id, entry_id)
            inside += landed
            print(
                f"[faults]   SIGKILL {ms} ms after entry {entry_id} was read (its process first: {first}); "
                f"unacknowledged: {landed}",
                flush=True,
            )
            stack.start_workers()
            time.sleep(1.5)  # the killed node's entries are claimed again (DRAIN_CLAIM_IDLE_MS) by the fresh ones
        return f"SIGKILL every worker node {kills}x inside {what}, {inside} before its XACK; restarted"

    nemesis.__doc__ = f"SIGKILL every worker node while one persists {what} (read, not yet acknowledged)."
    return nemesis


def crash_postgres(stack: FaultStack) -> str:
    """Crash PostgreSQL (immediate stop: every connection cut, no checkpoint) mid-drain, twice, and start it."""
    if stack.postgres is None:
        raise RuntimeError("pg-crash needs the matrix's private PostgreSQL (--private-pg)")
    took = []
    for _ in range(PG_CRASHES):
        t0 = time.monotonic()
        stack.postgres.crash_restart()
        took.append(time.monotonic() - t0)
        time.sleep(1.5)
    return f"PostgreSQL crashed and restarted {PG_CRASHES}x ({', '.join(f'{s:.1f}' for s in took)} s down)"


def partition_primary(stack: FaultStack) -> str:
    """Cut the primary (in its namespace, with a web node and a worker that still reach PostgreSQL and the
    broker) off from its replicas and the sentinels; the majority promotes a replica; heal: the old one is demoted."""
    t, ns = stack.topology, stack.netns
    if ns is None:
        raise RuntimeError("partition needs the namespace layout")
    old = healed(t)
    if t.launch(old) != ns.launch:
        raise RuntimeError(f"the primary {old} is not the one inside the namespace")
    t0 = time.monotonic()
    ns.cut()
    try:
        new = _failover_from(t, old)
        time.sleep(PARTITION_S)  # the minority admits until min-replicas-max-lag makes its primary refuse
    finally:
        ns.heal()
        stack.cut = (t0, time.monotonic())
        cut = stack.cut[1] - t0
    wait_for(lambda: role(t, old) == "slave", FAILOVER_S, f"the old primary {old} was not demoted")
    healed(t)
    return f"Redis link of {old} (+1 web node, 1 worker) cut {cut:.0f}s, {new} promoted, {old} demoted on heal"


def partition_shard(stack: FaultStack) -> str:
    """Cut one shard's primary (in its namespace, with a web node ordering by token and a worker that still reach
    PostgreSQL and the broker) off from its replica and the other primaries; the majority fails the shard over;
    heal: the old primary rejoins as the new one's replica."""
    from faults.partition import PartitionedCluster

    t, ns = stack.topology, stack.netns
    if ns is None or not isinstance(t, PartitionedCluster):
        raise RuntimeError("cluster-partition needs the cluster's namespace layout")
    healed(t)
    old = t.inside
    if old not in t.primaries():
        raise RuntimeError(f"the node {old} inside the namespace is not a primary")
    replica = t.replica_of(old)
    t0 = time.monotonic()
    ns.cut()
    try:
        # The majority's view (the first node that answers is on the host's side now).
        wait_for(lambda: old not in t.primaries() and role(t, replica) == "master", FAILOVER_S, "no failover")
        time.sleep(PARTITION_S)  # the minority admits on the old primary until it sees itself cut off
    finally:
        ns.heal()
        stack.cut = (t0, time.monotonic())
        cut = stack.cut[1] - t0
    wait_for(lambda: role(t, old) == "slave", FAILOVER_S, f"the old primary {old} did not rejoin as a replica")
    healed(t)
    return f"shard primary {old} (+1 web node, 1 worker) cut {cut:.0f}s, {replica} promoted, {old} back as replica"


SENTINEL_NEMESES: dict[str, Nemesis] = {
    "none": none,
    "kill-primary": kill_primary,
    "pause-primary": pause_primary,
    "lag": lag_then_kill,
    "kill-workers": kill_workers,
    "kill-mid-expiry": kill_workers_holding(EXPIRED, "an expiry's persistence"),
    "kill-mid-payment": kill_workers_holding(PAID, "a payment decision's persistence"),
    "pg-crash": crash_postgres,
    "partition": partition_primary,
}
# On a Redis Cluster stack (FLASHDEAL_REDIS_TOPOLOGY=cluster, RabbitMQ broker), each on a stack of its own.
CLUSTER_NEMESES: dict[str, Nemesis] = {"cluster-partition": partition_shard}
# Scenarios that need the namespace layout (faults/partition.py): run on a stack of their own.
PARTITIONED = ("partition", "cluster-partition")
