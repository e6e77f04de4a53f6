"""The gate on a real six-node Redis Cluster: every operation routed by slot, storms over three shards, a
primary SIGKILLed mid-storm, a live deal's slot migrated to another node. Run under ``flock /tmp/fd-stack.lock``."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator

import pytest
import redis
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from redis.cluster import RedisCluster
from redis.connection import Connection
from redis.crc import key_slot
from redis.exceptions import RedisClusterException
from sqlalchemy import text

from harness.waits import wait_until
from scripts.local_redis.cluster import node_client
from shared.db import Database
from shared.deals import deal_stats
from shared.gate import Admission, Cancellation, Gate
from shared.redis import (
    PrimaryUnavailable,
    bytes_client,
    eviction_problem,
    limits_storage_options,
    limits_storage_uri,
    text_client,
)
from tests.fixtures.topologies import ClusterSetup
from tests.helpers import make_deal, make_users
from worker.drain import Drainer, DrainOptions

pytestmark = pytest.mark.slow


@pytest.fixture()
def gate(cluster_setup: ClusterSetup) -> Iterator[Gate]:
    """A gate on the cluster, as every flashdeal process builds it (WAIT 1 after each admission)."""
    client = text_client(cluster_setup.settings)
    yield Gate.from_settings(client, cluster_setup.settings)
    client.close()


def _slot(gate: Gate, deal_id: int) -> int:
    return key_slot(gate.keys.deal(deal_id).stock.encode())


def _deals_on_every_shard(db: Database, gate: Gate, setup: ClusterSetup, n: int, **kw: int) -> list[int]:
    """``n`` deals (more if needed) whose slots are on every primary."""
    ids = [make_deal(db, gate, **kw).id for _ in range(n)]  # type: ignore[arg-type]
    while {setup.topology.primary_of(_slot(gate, d)) for d in ids} != set(setup.topology.primaries()):
        ids.append(make_deal(db, gate, **kw).id)  # type: ignore[arg-type]
    return ids


def _orders(gate: Gate, deal_id: int) -> dict[str, str]:
    return gate.redis.hgetall(gate.keys.deal(deal_id).orders)


def _persist(db: Database, gate: Gate, deal_id: int) -> None:
    """Drain the deal's outbox into PostgreSQL in-process (the worker's Drainer, on the cluster client)."""
    opts = DrainOptions(batch_size=500, budget_s=30)
    while gate.redis.xlen(gate.keys.deal(deal_id).outbox):
        Drainer(db, gate.redis, gate.keys, deal_id, "test", opts).run()


def _db_orders(db: Database, deal_id: int) -> list[str]:
    with db.read() as s:
        return [str(r[0]) for r in s.execute(text("SELECT id FROM orders WHERE deal_id = :d"), {"d": deal_id})]


def test_every_gate_operation_runs_on_the_cluster_without_a_cross_slot_error(db, gate, cluster_setup) -> None:
    assert isinstance(gate.redis, RedisCluster)
    ids = _deals_on_every_shard(db, gate, cluster_setup, 12, stock=5, limit=2)
    (user,) = make_users(db, 1)
    oids = {}
    for d in ids:
        r = gate.admit(d, user, 2, str(uuid.uuid4()), idem_key=f"k{d}")
        assert r.outcome == Admission.ACCEPTED and r.replicated and r.remaining == 3
        oids[d] = r.order_id
        assert gate.admit(d, user, 2, str(uuid.uuid4()), idem_key=f"k{d}").outcome == Admission.REPLAY
    assert gate.remaining(ids) == dict.fromkeys(ids, 3)
    assert gate.remaining([*ids, 10**9])[10**9] is None
    for d in ids:  # the deal page's read: its cache key (in the deal's slot) beside its live state, one pipeline
        k = gate.keys.deal(d)
        cached, state, stock = gate.direct.pipeline(("GET", gate.keys.deal_cache(d)), ("HMGET", k.state, "status"),
                                                    ("GET", k.stock))  # fmt: skip
        assert state == ["open"] and stock == "3"
    assert set(gate.live_deal_ids()) >= set(ids)
    assert {e.order.order_id for e in gate.inflight_of(user, ids)} == set(oids.values())
    for d in ids:
        assert gate.find_order(oids[d], d).quantity == 2
        assert gate.live(d).remaining == 3
        assert gate.record_payment(d, oids[d], "dev|p1|url") == "dev|p1|url"
        assert gate.payment_of(d, oids[d]) == ("dev|p1|url", None)
        assert deal_stats(db, gate, d).accepted == 1
    c = gate.cancel(ids[0], oids[ids[0]], user)
    assert c.outcome == Cancellation.CANCELED and c.remaining == 5 and c.replicated
    gate.set_window(ids[1], status="ended")
    assert gate.admit(ids[1], user, 1, str(uuid.uuid4())).outcome == Admission.DEAL_NOT_OPEN
    assert gate.expire_due(ids[2]).expired == 0
    for d in ids:
        _persist(db, gate, d)
    assert gate.retire(ids[1], delete=False).outcome in ("open", "ready")
    gate.unload(ids[3])
    assert gate.live(ids[3]) is None and ids[3] not in gate.live_deal_ids()


def test_a_cross_slot_command_fails_loudly_not_silently(gate, cluster_setup) -> None:
    a, b = gate.keys.deal(1), gate.keys.deal(2)
    assert key_slot(a.stock.encode()) != key_slot(b.stock.encode())
    # The client refuses a command whose keys span slots before sending it...
    with pytest.raises(redis.RedisClusterException, match="same key slot"):
        gate.direct.call("MGET", a.stock, b.stock)
    with pytest.raises(redis.RedisClusterException):
        pipe = gate.redis.pipeline(transaction=True)
        pipe.get(a.stock)
        pipe.get(b.stock)
        pipe.execute()
    # ...and the server refuses a script given keys of two deals (what a wrong KEYS list would do).
    with pytest.raises(redis.ResponseError, match="same slot"):
        gate.direct.scripts((gate._admit, [a.state, b.stock, *a.gate_keys()[2:]], [1, 1, "x", "", 100]))


def test_reads_across_deals_take_one_round_trip_per_node(db, gate, cluster_setup, monkeypatch) -> None:
    ids = _deals_on_every_shard(db, gate, cluster_setup, 30, stock=3)
    gate.remaining(ids)  # connections open
    gate.inflight_of(1, ids)
    sends: Counter[int] = Counter()
    original = Connection.send_packed_command

    def counting(self: Connection, command: object, check_health: bool = True) -> None:
        sends[self.port] += 1
        original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    assert gate.remaining(ids) == dict.fromkeys(ids, 3)
    assert sorted(sends.values()) == [1, 1, 1] and set(sends) == set(cluster_setup.topology.primaries())
    sends.clear()
    gate.inflight_of(1, ids)  # no entries for this buyer: one pipeline, each node once
    assert sorted(sends.values()) == [1, 1, 1]


def test_storms_on_thirty_deals_over_three_shards_sell_each_exactly_and_persist_each_order_once(
    db,
    gate,
    cluster_setup,
) -> None:
    stock, limit = 20, 2
    ids = _deals_on_every_shard(db, gate, cluster_setup, 30, stock=stock, limit=limit)
    users = make_users(db, 40)
    attempts = [(d, u) for d in ids for u in users for _ in range(limit + 1)]  # 3600 attempts for 600 units
    random.Random(7).shuffle(attempts)
    accepted: list[tuple[int, int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def buyer(share: list[tuple[int, int]]) -> None:
        try:
            for d, u in share:
                r = gate.admit(d, u, 1, str(uuid.uuid4()))
                if r.outcome == Admission.ACCEPTED:
                    assert r.replicated
                    with lock:
                        accepted.append((d, u, r.order_id))
                else:
                    assert r.outcome in (Admission.SOLD_OUT, Admission.LIMIT_EXCEEDED), r
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=buyer, args=(attempts[i::12],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    per_deal = Counter(d for d, _, _ in accepted)
    assert per_deal == dict.fromkeys(ids, stock)  # each sold exactly
    assert len({oid for _, _, oid in accepted}) == len(accepted)  # no order id twice
    assert max(Counter((d, u) for d, u, _ in accepted).values()) <= limit  # every buyer's limit held
    assert gate.remaining(ids) == dict.fromkeys(ids, 0)
    for d in ids:
        _persist(db, gate, d)
        assert sorted(_db_orders(db, d)) == sorted(oid for dd, _, oid in accepted if dd == d)  # each once


def _admit_retrying(gate: Gate, deal_id: int, user: int, deadline: float, failures: Counter) -> tuple[str, bool]:
    """One order, retried with the same order id through a failover or a migration (as a buyer's retry would)."""
    oid = str(uuid.uuid4())
    while True:
        try:
            r = gate.admit(deal_id, user, 1, oid)
            return (r.order_id if r.outcome in (Admission.ACCEPTED, Admission.REPLAY) else ""), r.replicated
        except redis.ConnectionError:  # PrimaryUnavailable is one: 503, Retry-After
            failures[deal_id] += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_sigkill_of_a_primary_mid_storm_promotes_its_replica_and_loses_nothing_acknowledged(
    db,
    gate,
    cluster_setup,
) -> None:
    topo = cluster_setup.topology
    ids = _deals_on_every_shard(db, gate, cluster_setup, 9, stock=100_000, limit=100_000)
    users = make_users(db, 9)
    victim = topo.primary_of(_slot(gate, ids[0]))
    hit = [d for d in ids if topo.primary_of(_slot(gate, d)) == victim]
    spared = [d for d in ids if d not in hit]
    stop = threading.Event()
    acked: dict[int, list[str]] = defaultdict(list)  # replicated admissions: must survive the failover
    unconfirmed: Counter[int] = Counter()
    failures: Counter[int] = Counter()
    errors: list[BaseException] = []

    def buyer(deal_id: int, user: int) -> None:
        try:
            while not stop.is_set():
                oid, replicated = _admit_retrying(gate, deal_id, user, time.monotonic() + 30, failures)
                assert oid
                if replicated:
                    acked[deal_id].append(oid)
                else:
                    unconfirmed[deal_id] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=buyer, args=(d, u)) for d, u in zip(ids, users, strict=True)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        before = {d: len(acked[d]) for d in spared}
        topo.kill(victim)
        # A read across deals on the live shards goes on; one that needs the dead shard is a 503, never wrong.
        assert set(gate.remaining(spared).values()) <= set(range(100_000))
        with contextlib.suppress(redis.ConnectionError):  # PrimaryUnavailable is one: the 503
            assert len(gate.remaining(ids)) == len(ids)  # the replica may already be promoted
        deadline = time.monotonic() + 20
        while topo.primary_of(_slot(gate, hit[0])) == victim:
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.05)
        promoted = topo.primary_of(_slot(gate, hit[0]))
        during = {d: len(acked[d]) - before[d] for d in spared}
        # The promoted replica sells again (its WAIT 1 has no replica to wait for until the old primary is back).
        sold = sum(len(acked[d]) + unconfirmed[d] for d in hit)
        while sum(len(acked[d]) + unconfirmed[d] for d in hit) < sold + 20:
            assert time.monotonic() < deadline + 20, f"shard {promoted} does not sell after its promotion"
            time.sleep(0.05)
        topo.restart(victim)  # back as the replica of the promoted node
        topo.wait_healthy()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert all(during[d] > 0 for d in spared), during  # the other shards sold through the failover...
    assert not any(failures[d] for d in spared), failures  # ...without one error
    assert any(failures[d] for d in hit)  # the killed shard's buyers were told to retry, and did
    assert topo.primary_of(_slot(gate, hit[0])) == promoted
    for d in ids:
        held = _orders(gate, d)  # read from the promoted node for the hit deals
        missing = [oid for oid in acked[d] if oid not in held]
        assert not missing, f"deal {d}: {len(missing)} acknowledged orders lost"
        # No unit sold twice: what is left plus what the records hold is the stock.
        assert int(gate.redis.get(gate.keys.deal(d).stock)) + len(held) == 100_000


def _node_id(port: int) -> str:
    return str(node_client(port).execute_command("CLUSTER", "MYID"))


def _migrate_slot(setup: ClusterSetup, slot: int, source: int, target: int, before_owner_change=None) -> None:  # type: ignore[no-untyped-def]
    """Move one slot and its keys as ``redis-cli --cluster reshard`` does: IMPORTING, MIGRATING, MIGRATE, NODE."""
    src, tgt = node_client(source), node_client(target)
    tgt.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(source))
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(target))
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    if before_owner_change is not None:
        before_owner_change()
    for port in (target, source, *(p for p in setup.topology.primaries() if p not in (source, target))):
        node_client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", _node_id(target))


def test_mid_migration_a_key_is_asked_on_the_target_and_an_admission_is_a_retry_then_moved(
    db,
    gate,
    cluster_setup,
) -> None:
    deal = make_deal(db, gate, stock=10, limit=10).id
    (user,) = make_users(db, 1)
    slot = _slot(gate, deal)
    source = cluster_setup.topology.primary_of(slot)
    target = next(p for p in cluster_setup.topology.primaries() if p != source)
    assert gate.admit(deal, user, 1, str(uuid.uuid4())).outcome == Admission.ACCEPTED
    seen: dict[str, object] = {}

    def while_migrating() -> None:
        # The keys are on the target, the slot still the source's: the source answers ASK.
        seen["stock"] = gate.direct.call("GET", gate.keys.deal(deal).stock)
        # The script's keys are there but not all of them (the kick flag is not): TRYAGAIN, retried, then 503.
        with pytest.raises(PrimaryUnavailable):
            gate.admit(deal, user, 1, str(uuid.uuid4()))

    _migrate_slot(cluster_setup, slot, source, target, while_migrating)
    assert seen["stock"] == "9"
    r = gate.admit(deal, user, 1, str(uuid.uuid4()))  # MOVED: the slot map learns the new owner
    assert r.outcome == Admission.ACCEPTED and r.remaining == 8 and r.replicated
    assert gate.redis.nodes_manager.get_node_from_slot(slot).port == target


def test_moving_a_live_deal_slot_while_it_sells_loses_nothing_and_oversells_nothing(
    db,
    gate,
    cluster_setup,
) -> None:
    stock = 1_000_000  # never sold out here: the buyers stop when told
    deal = make_deal(db, gate, stock=stock, limit=stock).id
    users = make_users(db, 6)
    slot = _slot(gate, deal)
    source = cluster_setup.topology.primary_of(slot)
    target = next(p for p in cluster_setup.topology.primaries() if p != source)
    stop = threading.Event()
    accepted: list[str] = []
    failures: Counter[int] = Counter()
    errors: list[BaseException] = []

    def buyer(user: int) -> None:
        try:
            while not stop.is_set():
                oid, _ = _admit_retrying(gate, deal, user, time.monotonic() + 30, failures)
                if not oid:
                    return  # sold out
                accepted.append(oid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=buyer, args=(u,)) for u in users]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        sold_before = len(accepted)
        _migrate_slot(cluster_setup, slot, source, target)
        time.sleep(0.5)
        assert len(accepted) > sold_before  # still selling, now on the target
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert cluster_setup.topology.primary_of(slot) == target
    held = _orders(gate, deal)
    assert len(set(accepted)) == len(accepted) and set(accepted) <= set(held)  # nothing lost, nothing twice
    assert int(gate.redis.get(gate.keys.deal(deal).stock)) + len(held) == stock  # no unit sold twice
    _persist(db, gate, deal)
    assert sorted(_db_orders(db, deal)) == sorted(held)


def test_the_rate_limit_storage_uri_and_the_bytes_client_reach_the_cluster(cluster_setup) -> None:
    s = cluster_setup.settings
    storage = storage_from_string(limits_storage_uri(s), **limits_storage_options(s))  # limits' RedisClusterStorage
    limiter = MovingWindowRateLimiter(storage)
    key = f"{s.key_prefix}rl-test-{uuid.uuid4()}"
    assert [limiter.hit(parse("3/minute"), key) for _ in range(4)] == [True, True, True, False]
    raw = bytes_client(s)  # Flask-Session's client: bytes in, bytes out
    raw.set(f"{s.key_prefix}blob", b"\x00\xff")
    assert raw.get(f"{s.key_prefix}blob") == b"\x00\xff"


def test_an_evicting_node_anywhere_in_the_cluster_is_reported(gate, cluster_setup) -> None:
    assert eviction_problem(gate.redis) is None
    replica = cluster_setup.topology.replica_of(cluster_setup.topology.primaries()[-1])
    node_client(replica).config_set("maxmemory-policy", "allkeys-lru")  # a replica: CONFIG GET's default never asks it
    try:
        assert f"'allkeys-lru' on 127.0.0.1:{replica}" in (eviction_problem(gate.redis) or "")
    finally:
        node_client(replica).config_set("maxmemory-policy", "noeviction")


def test_readiness_stays_up_while_one_shard_fails_over(cluster_setup) -> None:
    """A dead primary makes /readyz 'degraded', not 503: failing it would pull every web node for one shard."""
    from web import create_app

    topo = cluster_setup.topology
    client = create_app(cluster_setup.settings).test_client()
    r = client.get("/readyz")
    assert (r.status_code, r.json["status"], r.json["checks"]["redis"]) == (200, "ok", "ok"), r.json
    victim = topo.primaries()[0]
    topo.kill(victim)
    try:
        r = client.get("/readyz")  # before the promotion: that shard's slots have no primary at all
        assert r.status_code == 200 and r.json["status"] == "degraded", r.json
        assert f"127.0.0.1:{victim}" in r.json["checks"]["redis"], r.json
    finally:
        topo.restart(victim)
        topo.wait_healthy()
    assert wait_until(lambda: client.get("/readyz").json["status"] == "ok", 10, 0.2)


def test_a_cluster_that_stops_answering_is_a_connection_error_not_a_crash(gate, cluster_setup, monkeypatch) -> None:
    """No node answers (the web node lost its network): the caller gets a ConnectionError (503), not a 500."""
    key = gate.keys.deal(1).stock
    assert gate.direct.call("SET", key, "1") == "OK"
    cluster = gate.redis

    def nobody_answers(*_a, **_k):  # what redis-py raises when no startup node answers
        raise RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node")

    def dropped(*_a, **_k):
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(cluster.nodes_manager, "initialize", nobody_answers)
    monkeypatch.setattr(Connection, "send_packed_command", dropped)
    with pytest.raises(redis.ConnectionError):
        gate.direct.call("GET", key)
    with pytest.raises(redis.ConnectionError):
        gate.direct.pipeline(("GET", key), ("GET", gate.keys.deal(2).stock))
