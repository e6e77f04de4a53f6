"""The drain persists only what the replicas hold: lagging replicas (SIGSTOP), then the primary SIGKILLed and a
replica promoted (by real sentinels, or by the cluster itself); PostgreSQL must never hold more units than the stock."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis
from redis.crc import key_slot
from sqlalchemy import text

from harness.processes import paused
from harness.waits import wait_until
from scripts.local_redis.nodes import RedisNodes, ping
from shared.deals import HOLDING_STATUSES
from shared.gate import Admission, Gate
from shared.redis import text_client
from shared.settings import Settings
from tests.fixtures.topologies import ClusterSetup, SentinelSetup
from tests.helpers import make_deal, make_users, through_failover
from worker.dlq import drop_dead_letter, list_dead_letters
from worker.drain import DrainOptions, DrainResult, drain_deal

pytestmark = pytest.mark.slow

STOCK = 12


def _held_in_db(db, deal_id: int) -> int:  # type: ignore[no-untyped-def]
    with db.read() as s:
        q = text("SELECT coalesce(sum(quantity), 0) FROM orders WHERE deal_id = :d AND status = ANY(:st)")
        return int(s.execute(q, {"d": deal_id, "st": list(HOLDING_STATUSES)}).scalar())


def _rows(db, deal_id: int) -> int:  # type: ignore[no-untyped-def]
    with db.read() as s:
        return int(s.execute(text("SELECT count(*) FROM orders WHERE deal_id = :d"), {"d": deal_id}).scalar())


def _fill_replica_links(primary: int, beside: str) -> None:
    """Write filler until every replica link has data waiting in the primary's own output buffer.

    Why: a paused replica's socket still takes what the primary sends into the kernel's buffers (tens of MB
    on loopback), and the replica applies it once it runs again. What comes after the filler stays in the
    primary's memory, as on a slow link, and dies with it.
    """
    node = redis.Redis("127.0.0.1", primary, socket_timeout=5, decode_responses=True)
    chunk = "x" * (1 << 20)
    for i in range(256):
        links = node.client_list(_type="replica")
        # More than the last few writes waiting: the sockets are full, so the rest stays in the primary.
        if links and all(int(c["omem"]) > 4 * len(chunk) for c in links):
            return
        node.set(f"{beside}:filler:{i % 8}", chunk)  # the same hash tag: the same node on a cluster
    raise AssertionError("the replicas' links never backed up")


@dataclass
class Shard:
    """The primary that holds the deal's keys, its replicas, and how to find the one serving after a failover."""

    primary: int
    replicas: list[int]
    nodes: RedisNodes
    serving: Callable[[], int]


def _lag_then_failover(  # type: ignore[no-untyped-def]
    db, gate: Gate, settings: Settings, deal_id: int, shard: Callable[[], Shard], heal: Callable[[int], None]
) -> None:
    """The scenario: replicas lag, orders are admitted unconfirmed, the drain runs, the primary dies, ``heal``."""
    users = make_users(db, 4)
    opts = DrainOptions.from_settings(settings, budget_s=3.0)
    assert opts.replicas == 1

    def drain() -> DrainResult:
        return through_failover(lambda: drain_deal(db, gate.redis, gate.keys, deal_id, "t-lag", opts))

    # Healthy replicas: orders acknowledged by WAIT are drained at once.
    for i in range(3):
        assert gate.admit(deal_id, users[i % 4], 1, str(uuid.uuid4())).replicated
    assert drain().persisted == 3 and _held_in_db(db, deal_id) == 3

    sh = shard()
    pids = [sh.nodes.pid(p) for p in sh.replicas]
    assert all(pids)
    with paused(pids):  # type: ignore[arg-type]
        _fill_replica_links(sh.primary, gate.keys.deal(deal_id).outbox)
        # Admitted on the primary alone (WAIT times out: 202 with Flashdeal-Replication: unconfirmed), before
        # min-replicas-max-lag (Sentinel) makes it refuse writes.
        lost = [gate.admit(deal_id, users[i % 4], 1, str(uuid.uuid4())) for i in range(4)]
        assert all(r.outcome is Admission.ACCEPTED and not r.replicated for r in lost)
        res = drain()
        assert res.persisted == 0 and res.unreplicated == 4, res
        res = drain()  # a second look rereads its pending entries: still not held by any replica
        assert res.persisted == 0 and res.unreplicated == 4, res
        assert _rows(db, deal_id) == 3
        # The primary dies before any replica got the orders; the replicas run again once it is gone.
        sh.nodes.kill(sh.primary)
    assert wait_until(lambda: sh.serving() != sh.primary, 30, 0.1), "no failover"
    assert sh.serving() in sh.replicas
    heal(sh.primary)

    # The promoted replica never saw the 4 orders: it sells their units again. Sell everything it has.
    sold_after = 0
    deadline = time.monotonic() + 60
    while True:
        oid, user = str(uuid.uuid4()), users[sold_after % 4]
        r = through_failover(lambda oid=oid, user=user: gate.admit(deal_id, user, 1, oid))  # type: ignore[misc]
        if r.outcome is Admission.SOLD_OUT:
            break
        assert r.outcome is Admission.ACCEPTED, r
        sold_after += 1
        assert time.monotonic() < deadline
    assert sold_after == STOCK - 3

    assert wait_until(lambda: drain() is not None and _rows(db, deal_id) == STOCK, 60, 0.2), _rows(db, deal_id)
    held = _held_in_db(db, deal_id)
    remaining = int(through_failover(lambda: gate.redis.get(gate.keys.deal(deal_id).stock)))
    assert held <= STOCK
    assert remaining + held == STOCK, (remaining, held)


def test_sentinel_orders_the_replicas_never_had_are_not_persisted_and_nothing_is_sold_twice(db, sentinel_setup) -> None:
    setup: SentinelSetup = sentinel_setup
    topo = setup.topology
    gate = Gate.from_settings(text_client(setup.settings), setup.settings)
    deal = make_deal(db, gate, stock=STOCK, limit=STOCK)

    def shard() -> Shard:
        primary = topo.primary()
        return Shard(primary, [p for p in topo.ports.data if p != primary], topo, topo.primary)

    # The other replica still replicates the promoted one: nothing to heal.
    _lag_then_failover(db, gate, setup.settings, deal.id, shard, lambda _dead: None)


def test_cluster_orders_the_replica_never_had_are_not_persisted_and_nothing_is_sold_twice(db, cluster_setup) -> None:
    setup: ClusterSetup = cluster_setup
    topo = setup.topology
    client = text_client(setup.settings)
    gate = Gate.from_settings(client, setup.settings)
    deal = make_deal(db, gate, stock=STOCK, limit=STOCK)
    slot = key_slot(gate.keys.deal(deal.id).stock.encode())

    def shard() -> Shard:
        primary = topo.primary_of(slot)
        return Shard(primary, [topo.replica_of(primary)], topo, lambda: topo.primary_of(slot))

    def heal(dead: int) -> None:
        # The promoted replica has no replica of its own: until the dead node is back as one, WAIT 1 cannot be
        # met and the drain persists nothing of this shard (admissions are answered unconfirmed meanwhile).
        topo.restart(dead)
        topo.wait_healthy()

    victim = shard().primary
    try:
        _lag_then_failover(db, gate, setup.settings, deal.id, shard, heal)
    finally:
        # The cluster is the module's: the killed node comes back, as the replica of the promoted one.
        if not ping(victim):
            topo.restart(victim)
        topo.wait_healthy()
        client.close()


def test_sentinel_dlq_drop_keeps_the_letter_while_its_cancel_is_not_replicated(db, sentinel_setup) -> None:
    setup: SentinelSetup = sentinel_setup
    topo = setup.topology
    gate = Gate.from_settings(text_client(setup.settings), setup.settings)
    deal = make_deal(db, gate, stock=STOCK, limit=STOCK)
    ghost = 2_400_000_000 + int(uuid.uuid4().int % 1_000_000)  # no such user: PostgreSQL refuses the row
    oid = gate.admit(deal.id, ghost, 1, str(uuid.uuid4())).order_id
    drain_deal(db, gate.redis, gate.keys, deal.id, "t-drop", DrainOptions.from_settings(setup.settings, budget_s=5.0))
    assert [d.order_id for d in list_dead_letters(db, deal.id)] == [oid]
    primary = topo.primary()
    pids = [topo.pid(p) for p in topo.ports.data if p != primary]
    with paused(pids):  # type: ignore[arg-type]
        _fill_replica_links(primary, gate.keys.deal(deal.id).outbox)
        drop = drop_dead_letter(db, gate, oid)
        # Given back on the primary alone: a failover now would undo it, so the letter must stay.
        assert drop.found and not drop.dropped and "replicated" in drop.kept, drop
        assert [d.order_id for d in list_dead_letters(db, deal.id)] == [oid]
    assert wait_until(lambda: topo.replicas_online(primary) == 2, 30, 0.1)
    drop = drop_dead_letter(db, gate, oid)  # run again: the cancel is replicated now (already_canceled)
    assert drop.dropped and list_dead_letters(db, deal.id) == []
    assert int(gate.redis.get(gate.keys.deal(deal.id).stock)) == STOCK
