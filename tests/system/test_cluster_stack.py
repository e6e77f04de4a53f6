"""The application on a real Redis Cluster: the order path through the LB for deals on every shard, sessions and
rate limits across web nodes, the deal list across shards, the workers' Redis use, and no cross-slot command.

A cross-slot command fails here in one of two ways: redis-py refuses it before sending (an error, a 500),
or a node refuses it with CROSSSLOT, which every node counts in ``INFO errorstats``: each test ends by
checking that no node counted one.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from redis.crc import key_slot
from sqlalchemy import text

from harness.waits import wait_until
from scripts.local_redis.cluster import ClusterTopology, node_client
from shared.cache import invalidate_deal, read_through
from shared.deals import close_now, deal_stats
from shared.gate import Admission, Gate, Settlement
from shared.redis import text_client
from shared.retire import retire_ended
from tests.environment import ROOT, base_env
from tests.fixtures.topologies import ClusterSetup
from tests.helpers import (
    PASSWORD,
    CeleryProcs,
    LoadBalancer,
    StormAnswers,
    email_of,
    login_over_http,
    make_deal,
    make_users,
    order_until_answered,
    set_payment_window_ms,
)
from worker.drain import DrainOptions, drain_deal, prune_consumers
from worker.expiry import sweep
from worker.metrics import LiveCollector
from worker.reconcile import reconcile

pytestmark = pytest.mark.slow


def cross_slot_errors(topology: ClusterTopology) -> dict[int, int]:
    """CROSSSLOT error replies each node has sent since it started (``INFO errorstats``), where any."""
    out: dict[int, int] = {}
    for port in topology.ports.nodes:
        count = int(node_client(port).info("errorstats").get("errorstat_CROSSSLOT", {}).get("count", 0))
        if count:
            out[port] = count
    return out


@pytest.fixture(autouse=True)
def clean_cluster(cluster_setup: ClusterSetup) -> None:
    """Each test starts on an empty cluster with its error counters at zero (the cluster is the module's)."""
    topology = cluster_setup.topology
    for port in topology.primaries():
        node_client(port).flushall()  # replicated: the replicas empty too
    for port in topology.ports.nodes:
        node_client(port).config_resetstat()


def shards_of(setup: ClusterSetup, gate: Gate, deal_ids: list[int]) -> Counter[int]:
    """How many of the deals each primary serves (by the slot of the deal's hash tag)."""
    topology = setup.topology
    return Counter(topology.primary_of(key_slot(gate.keys.deal(d).stock.encode())) for d in deal_ids)


def _db_orders(db, deal_ids: list[int]) -> dict[str, int]:
    with db.read() as s:
        rows = s.execute(text("SELECT id, quantity FROM orders WHERE deal_id = ANY(:d)"), {"d": list(deal_ids)}).all()
    return {str(r[0]): r[1] for r in rows}


@contextlib.contextmanager
def _workers(tmp_path: Path, setup: ClusterSetup) -> Iterator[tuple[CeleryProcs, dict[str, str]]]:
    """A worker node and beat on the cluster, their tasks on this test's queue of RabbitMQ."""
    procs = CeleryProcs(tmp_path)
    extra = {**setup.env, "DRAIN_CLAIM_IDLE_MS": "1000"}
    try:
        procs.worker("w1", extra)
        procs.beat(extra)
        yield procs, {**extra, "CELERY_QUEUE": procs.queue}
    finally:
        procs.close()
        from kombu import Connection

        with contextlib.suppress(Exception), Connection(setup.env["CELERY_BROKER_URL"], connect_timeout=2) as conn:
            conn.default_channel.queue_delete(procs.queue)


def test_orders_for_30_deals_on_every_shard_through_the_lb_each_sold_exactly_and_persisted_once(
    db,
    cluster_setup,
    web_server,
    tmp_path,
) -> None:
    setup = cluster_setup
    gate = Gate.from_settings(text_client(setup.settings), setup.settings)
    stock, limit, n_buyers = 6, 2, 8
    deals = [make_deal(db, gate, stock=stock, limit=limit).id for _ in range(30)]
    shards = shards_of(setup, gate, deals)
    assert len(shards) == 3, shards  # the deals' slots fall on all three primaries
    users = make_users(db, n_buyers)
    accepted: dict[str, tuple[int, int]] = {}  # order id -> (deal, quantity)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def count(status: int) -> None:
        with lock:
            statuses[status] += 1

    def buyer(s: requests.Session, n: int) -> None:
        order = deals * limit
        random.Random(n).shuffle(order)
        for i, deal_id in enumerate(order):
            r = order_until_answered(s, f"{lb.url}/api/deals/{deal_id}/orders", 1, f"b{n}-{i}", seen=count)
            assert r is not None
            if r.status_code in (200, 202):
                with lock:
                    assert accepted.setdefault(r.json()["order_id"], (deal_id, 1)) == (deal_id, 1)
            else:
                assert r.status_code == 409 and r.json()["error"]["code"] in ("sold_out", "limit_exceeded"), r.text

    with _workers(tmp_path, setup) as (procs, extra):
        nodes = [web_server(extra, workers=1) for _ in range(2)]
        lb = LoadBalancer(tmp_path / "lb", [n.port for n in nodes])
        try:
            # Logged in through the LB: the session is written by one node and read by both (round robin).
            sessions = [login_over_http(lb.url, email_of(db, u)) for u in users]
            threads = [threading.Thread(target=buyer, args=(s, n)) for n, s in enumerate(sessions)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads)
            persisted = wait_until(lambda: len(_db_orders(db, deals)) >= len(accepted), 60, 0.2)
            assert persisted, procs.started[0].text()[-3000:]
            # The deal list reads every deal's live stock across the shards (one round trip per node).
            page = requests.get(f"{lb.url}/api/deals", params={"per_page": 100}, timeout=10).json()
            listed = {i["id"]: i for i in page["items"]}
            assert set(deals) <= set(listed)
            assert all(listed[d]["remaining_stock"] == 0 and listed[d]["status"] == "sold_out" for d in deals)
            active = requests.get(f"{lb.url}/api/deals", params={"status": "active"}, timeout=10).json()
            assert not set(deals) & {i["id"] for i in active["items"]}  # sold out: none is open any more
            detail = requests.get(f"{lb.url}/api/deals/{deals[0]}", timeout=10).json()
            assert detail["remaining_stock"] == 0
            mine = sessions[0].get(f"{lb.url}/api/orders", timeout=10)
            assert mine.status_code == 200
            worker_log = procs.started[0].text()
            assert "drain_deal" in worker_log and "raised unexpected" not in worker_log, worker_log[-3000:]
        finally:
            lb.stop()
    rows = _db_orders(db, deals)
    assert rows == {oid: qty for oid, (_deal, qty) in accepted.items()}  # every 202 once, nothing else
    sold = Counter()
    for _oid, (deal_id, qty) in accepted.items():
        sold[deal_id] += qty
    assert all(sold[d] == stock for d in deals), sold  # each deal sold exactly: no oversell, none left
    for d in deals:
        stats = deal_stats(db, gate, d)  # one MULTI on the deal's slot, its server clock included
        assert (stats.remaining_stock, stats.accepted, stats.confirmed, stats.pending) == (0, stock, stock, 0)
    assert set(statuses) <= {200, 202, 409}, statuses  # no 500 (a refused cross-slot call), no 503
    # The sessions live on the cluster (Flask-Session's own Redis interface would have used localhost).
    assert len(list(gate.redis.scan_iter(match=f"{gate.keys.session_prefix}*"))) == n_buyers
    assert cross_slot_errors(setup.topology) == {}


def test_sessions_and_rate_limits_hold_across_web_nodes_on_a_cluster(db, cluster_setup, web_server) -> None:
    setup = cluster_setup
    gate = Gate.from_settings(text_client(setup.settings), setup.settings)
    deal = make_deal(db, gate, stock=100, limit=100)
    (buyer,) = make_users(db, 1)
    email = email_of(db, buyer)
    env = {**setup.env, "RATELIMIT_ENABLED": "true", "RATELIMIT_LOGIN": "3/minute", "RATELIMIT_ORDER": "4/minute",
           "RATELIMIT_SIGNUP_IP": "2/minute"}  # fmt: skip
    a, b = web_server(env), web_server(env)
    # Logged in on node A, known on node B: the session is on the cluster, not in either process.
    s = login_over_http(a.url, email)
    assert s.get(f"{b.url}/api/me", timeout=10).json()["id"] == buyer
    # The order limit (4 a minute, counted by the fast path) is one window for both nodes.
    placed = [s.post(f"{(a, b)[i % 2].url}/api/deals/{deal.id}/orders", json={"quantity": 1}, timeout=10)
              for i in range(6)]  # fmt: skip
    assert [r.status_code for r in placed] == [202, 202, 202, 202, 429, 429], [r.text for r in placed]
    # Logged out on B: A no longer knows the session either.
    assert s.post(f"{b.url}/api/auth/logout", headers={"X-Requested-With": "fetch"}, timeout=10).status_code in (
        200,
        204,
    )
    assert s.get(f"{a.url}/api/me", timeout=10).status_code == 401
    # The login limit of one account and address (3 failures a minute) counts failures on both nodes together;
    # the successful login above is not counted (web/login_throttle.py).
    tries = [requests.post(f"{(b, a)[i % 2].url}/api/auth/login", json={"email": email, "password": "wrong-password-1"},
                           timeout=10).status_code for i in range(4)]  # fmt: skip
    assert tries == [401, 401, 401, 429], tries
    # Signups per IP (2 a minute): one window for both nodes too.
    signups = [requests.post(f"{(a, b, a)[i].url}/api/auth/signup", timeout=10,
                             json={"email": f"s{i}-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD,
                                   "name": "S"}).status_code for i in range(3)]  # fmt: skip
    assert signups == [201, 201, 429], signups
    counters = list(gate.redis.scan_iter(match="LIMITS*"))
    assert counters and all(gate.keys.ratelimit_prefix in k for k in counters)  # the counters live on the cluster
    assert cross_slot_errors(setup.topology) == {}


def test_worker_side_redis_use_on_a_cluster_and_a_cross_slot_command_is_seen(db, cluster_setup) -> None:
    """Drain, expiry sweep, reconcile, stats, metrics, cache and retire for deals on every shard: no CROSSSLOT."""
    setup = cluster_setup
    rds = text_client(setup.settings)
    gate = Gate.from_settings(rds, setup.settings)
    deals = [make_deal(db, gate, stock=5, limit=5, payment_window=60).id for _ in range(9)]
    assert len(shards_of(setup, gate, deals)) == 3
    users = make_users(db, 3)
    for d in deals:
        set_payment_window_ms(gate, d, 1)  # every order is due for payment at once
        for u in users:
            assert gate.admit(d, u, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED
    assert {e.order.deal_id for e in gate.inflight_of(users[0], deals)} == set(deals)
    # A payment on one deal: the provider's record kept once (a MULTI on the deal's slot), then the decision.
    set_payment_window_ms(gate, deals[0], 60_000)  # this one is paid in time
    paid = gate.admit(deals[0], users[0], 1, str(uuid.uuid4())).order_id
    assert gate.record_payment(deals[0], paid, "dev|pi_1|") == "dev|pi_1|"
    assert gate.record_payment(deals[0], paid, "dev|pi_2|") == "dev|pi_1|"
    assert gate.settle(deals[0], "pay", paid, "evt_1", "pi_1").outcome is Settlement.PAID
    assert gate.payment_of(deals[0], paid)[0] == "dev|pi_1|"
    opts = DrainOptions(batch_size=100, budget_s=10.0)
    for d in deals:
        drain_deal(db, rds, gate.keys, d, "t-cluster", opts)
    time.sleep(0.01)
    assert sweep(gate).expired == dict.fromkeys(deals, len(users))  # every shard's due orders expire
    for d in deals:
        drain_deal(db, rds, gate.keys, d, "t-cluster", opts)
        assert prune_consumers(rds, gate.keys, d, idle_ms=0) == 1
    for repair in (False, True):  # a MULTI snapshot, then WATCH and MULTI
        report = reconcile(db, rds, gate.keys, repair=repair).deals
        assert len(report) == len(deals) and all(r.drift == 0 and not r.buyers_mismatched for r in report), report
    assert [(b, s) for b, _oldest, s in LiveCollector._read(rds, gate.keys, deals)] == [(0, 4)] + [(0, 5)] * 8
    stats = deal_stats(db, gate, deals[0])
    assert (stats.remaining_stock, stats.accepted, stats.expired, stats.paid, stats.pending) == (4, 4, 3, 1, 0)
    key = gate.keys.deal_cache(deals[0])
    assert read_through(rds, gate.keys, key, 5, lambda: {"built": 1}) == {"built": 1}
    invalidate_deal(rds, gate.keys, deals[0])
    assert rds.get(key) is None
    for d in deals:
        close_now(db, gate, d)
    assert sorted(retire_ended(db, gate, after_seconds=0).retired) == sorted(deals)
    assert gate.live_deal_ids() == []
    assert cross_slot_errors(setup.topology) == {}
    # The check sees a cross-slot command: two deals' stocks on one primary in one MGET are refused.
    stocks = [gate.keys.deal(d).stock for d in deals[:2]]
    assert key_slot(stocks[0].encode()) != key_slot(stocks[1].encode())
    port = setup.topology.primaries()[0]
    with pytest.raises(redis.ResponseError, match="same slot"):
        node_client(port).mget(*stocks)
    assert cross_slot_errors(setup.topology) == {port: 1}


def test_ensure_services_uses_the_cluster_it_is_given_and_names_one_that_does_not_answer(
    settings,
    cluster_setup,
) -> None:
    """``make up``'s service check with REDIS_CLUSTER_NODES set: that cluster, RabbitMQ, no node of its own started."""
    script = [sys.executable, str(ROOT / "scripts" / "ensure_services.py"), settings.database_url.rsplit("/", 1)[-1]]
    env = {**base_env(), **cluster_setup.env}
    env.pop("CELERY_BROKER_URL")
    r = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"Redis Cluster at {cluster_setup.topology.ports.nodes_setting}" in r.stderr
    assert "export CELERY_BROKER_URL=amqp://" in r.stdout  # kombu has no Redis Cluster transport
    assert "REDIS_CLUSTER_NODES" not in r.stdout  # given: used as it is, nothing started under var/
    env["REDIS_CLUSTER_NODES"] = "127.0.0.1:1"
    r = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "REDIS_CLUSTER_NODES: nothing answers at 127.0.0.1:1" in r.stderr


def test_a_primary_sigkilled_mid_storm_through_the_web_loses_no_202_and_the_other_shards_sell_on(
    db,
    cluster_setup,
    web_server,
    tmp_path,
) -> None:
    """The whole order path (web node, sessions, workers, PostgreSQL) through a shard's failover."""
    setup = cluster_setup
    topo = setup.topology
    gate = Gate.from_settings(text_client(setup.settings), setup.settings)
    total = 100_000
    deals: list[int] = []
    while len(deals) < 9 or len(shards_of(setup, gate, deals)) < 3:
        deals.append(make_deal(db, gate, stock=total, limit=total).id)
    slot_of = {d: key_slot(gate.keys.deal(d).stock.encode()) for d in deals}
    victim = topo.primary_of(slot_of[deals[0]])
    hit = {d for d in deals if topo.primary_of(slot_of[d]) == victim}
    users = make_users(db, 8)
    answers = StormAnswers()
    spared_at: list[float] = []  # when each order of a deal on another shard was accepted
    stop = threading.Event()

    def buyer(s: requests.Session, n: int) -> None:
        i = 0
        while not stop.is_set():
            deal_id, qty, key = deals[(n + i) % len(deals)], 1 + i % 2, f"k{n}-{i}"
            i += 1
            r = order_until_answered(s, f"{node.url}/api/deals/{deal_id}/orders", qty, key, stop=stop, seen=answers.saw)
            if r is None:
                break
            answers.record(r, deal_id, qty)
            if deal_id not in hit:
                spared_at.append(time.monotonic())

    with _workers(tmp_path, setup) as (procs, extra):
        node = web_server(extra, workers=2)
        sessions = [login_over_http(node.url, email_of(db, u)) for u in users]
        threads = [threading.Thread(target=buyer, args=(s, n)) for n, s in enumerate(sessions)]
        for t in threads:
            t.start()
        try:
            assert wait_until(lambda: len(answers) >= 300, 30, 0.02), answers.statuses
            assert "raised unexpected" not in procs.started[0].text(), procs.started[0].text()[-3000:]
            killed_at = time.monotonic()
            topo.kill(victim)  # SIGKILL mid-storm
            assert wait_until(lambda: topo.primary_of(slot_of[deals[0]]) != victim, 20, 0.05), "no promotion"
            promoted_at = time.monotonic()
            sold = len(answers)
            assert wait_until(lambda: len(answers) >= sold + 300, 30, 0.02), answers.statuses
            topo.restart(victim)  # back on its AOF, as the promoted node's replica
            topo.wait_healthy()
            back = len(answers)
            assert wait_until(lambda: len(answers) >= back + 100, 30, 0.02), answers.statuses
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads)
        # The other shards sold while the victim's slots had no primary (sessions on them answered 503).
        assert any(killed_at < t < promoted_at for t in spared_at), (killed_at, promoted_at, answers.statuses)

        persisted = wait_until(lambda: answers.settled(_db_orders(db, deals), gate.remaining(deals), total), 60, 0.2)
        assert persisted, f"{len(_db_orders(db, deals))} of {len(answers)}\n{procs.started[0].text()[-3000:]}"
    answers.check(_db_orders(db, deals))  # every confirmed 202 once, with its quantity; nothing else
    assert cross_slot_errors(topo) == {}
