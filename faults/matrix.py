"""The fault matrix: every nemesis under load on a Sentinel or Cluster stack, judged by the history checker.

``make faults`` runs it all (``python -m faults.matrix``); tests/system/test_fault_matrix.py runs a slice.
Exits 1 when any scenario lost an acknowledged order, held one twice or oversold a unit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from redis.crc import key_slot
from sqlalchemy.engine import make_url

from faults.checker import FATAL, Report, check, read_state
from faults.client import Buyer, login
from faults.history import History
from faults.nemesis import CLUSTER_NEMESES, PARTITIONED, SENTINEL_NEMESES, Nemesis, healed
from faults.partition import Netns, PartitionedCluster, PartitionedTopology
from faults.postgres import PrivatePostgres
from harness.celery import CeleryProc
from harness.ports import free_port
from harness.processes import ROOT, stop_process
from harness.tcp_proxy import TcpProxy
from harness.waits import wait_http
from scripts.local_redis.cluster import ClusterPorts, ClusterTopology, free_cluster_ports
from scripts.local_redis.sentinel import MASTER_NAME, SentinelPorts, SentinelTopology
from shared.clock import now_ms
from shared.db import Database
from shared.gate import Gate
from shared.migrations import upgrade
from shared.redis import text_client
from shared.settings import DEFAULT_AMQP_URL, Settings
from tests.environment import RUN_PREFIX, base_env
from tests.helpers import PASSWORD, CeleryProcs, email_of, make_deal, make_users


class Server:
    """A web node this run started (granian on the host or inside the partition's namespace)."""

    def __init__(self, port: int, proc: subprocess.Popen) -> None:
        self.port = port
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop the process (SIGTERM, SIGKILL if it lingers)."""
        stop_process(self.proc)


BUYERS = 16
# Two deals a scenario: one that never sells out (volume: what a failover can lose) and one that hovers at
# sold out as expiries and cancels put units back (where a unit sold twice shows as oversold).
BIG_STOCK, SMALL_STOCK, SMALL_LIMIT = 100_000, 40, 4
PAYMENT_WINDOW_S = 2  # short, so unpaid orders expire during the run
ACK_TIMEOUT_MS = 100  # ORDER_ACK_TIMEOUT_MS: how long a 202 waits for a replica before it says "unconfirmed"
DRAIN_TIMEOUT_S = 90.0
# Worker node names are broker-wide (each has an exclusive pidbox queue): two runs at once on one broker must differ.
RUN_TAG = f"{os.getpid()}"
NEMESES: dict[str, Nemesis] = {**SENTINEL_NEMESES, **CLUSTER_NEMESES}  # the whole matrix, in order


@dataclass
class Result:
    """One scenario's outcome: what the nemesis did, the history's counts and the checker's verdict."""

    scenario: str
    fault: str
    report: Report
    drained: bool
    seconds: float
    history: History = field(repr=False, default_factory=History)


class FaultStack:
    """A Sentinel topology (or a Redis Cluster), web nodes and Celery workers (and beat) on it; logged-in buyers.
    ``close`` ends all."""

    def __init__(
        self,
        settings: Settings,
        root: Path,
        web_nodes: int = 2,
        workers: int = 2,
        buyers: int = BUYERS,
        private_pg: bool = False,
        partition: bool = False,
        cluster: bool = False,
    ) -> None:
        self.root, self.n_web, self.n_workers, self.n_buyers = root, web_nodes, workers, buyers
        self.postgres = PrivatePostgres(root, free_port()) if private_pg else None
        if self.postgres is not None:
            settings = settings.with_(database_url=self.postgres.url)
        self.deals: list[int] = []  # the running scenario's
        self.workers: list[CeleryProc] = []
        self._spawned = 0
        # partition: the first primary, one web node and one worker in a network namespace (faults/partition.py)
        self.netns = Netns() if partition else None
        self.relays: list[TcpProxy] = []
        if cluster:
            cluster_ports = ClusterPorts(nodes=free_cluster_ports(6))
            self.topology: SentinelTopology | ClusterTopology = (
                PartitionedCluster(self.netns, root / "redis", cluster_ports)
                if self.netns is not None
                else ClusterTopology(root / "redis", cluster_ports)
            )
            redis_env = {
                "FLASHDEAL_REDIS_TOPOLOGY": "cluster",
                "REDIS_CLUSTER_NODES": self.topology.nodes_setting,
            }
            settings = settings.with_(
                redis_topology="cluster",
                redis_cluster_nodes=tuple((self.topology.host(p), p) for p in cluster_ports.nodes),
            )
        else:
            ports = sorted({free_port() for _ in range(12)})[:6]
            sentinel_ports = SentinelPorts(data=tuple(ports[:3]), sentinels=tuple(ports[3:]))
            self.topology = (
                PartitionedTopology(self.netns, root / "redis", sentinel_ports)
                if self.netns is not None
                else SentinelTopology(root / "redis", sentinel_ports)
            )
            sentinels = tuple((self.topology.host(p), p) for p in sentinel_ports.sentinels)
            redis_env = {
                "FLASHDEAL_REDIS_TOPOLOGY": "sentinel",
                "REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in sentinels),
                "REDIS_SENTINEL_MASTER": MASTER_NAME,
            }
            settings = settings.with_(
                redis_topology="sentinel", redis_sentinels=sentinels, redis_sentinel_master=MASTER_NAME
            )
        self.env = {
            **redis_env,
            "CELERY_BROKER_URL": DEFAULT_AMQP_URL,  # kombu has no Redis Cluster transport
            "ORDER_ACK_REPLICAS": "1",
            "ORDER_ACK_TIMEOUT_MS": str(ACK_TIMEOUT_MS),
            "RATELIMIT_ENABLED": "false",
            "DRAIN_CLAIM_IDLE_MS": "1000",
            "DATABASE_URL": settings.database_url,
        }
        self.settings = settings.with_(order_ack_replicas=1, celery_broker_url=DEFAULT_AMQP_URL)
        self.db = Database(self.settings)
        self.procs = CeleryProcs(root)
        self.web: list[Server] = []
        self.minority_url = ""  # the web node inside the namespace, if any
        self.cut: tuple[float, float] | None = None  # when a partition nemesis cut the Redis link (monotonic)
        self.sessions: list[tuple[int, object]] = []

    def start(self) -> FaultStack:
        """Start everything, log the buyers in; the gate follows the primary through the sentinels."""
        if self.netns is not None:
            self.netns.create()
        if self.postgres is not None:
            self.postgres.start()
        upgrade(self.settings.database_url)
        self.topology.start()
        self.gate = Gate.from_settings(text_client(self.settings), self.settings)
        env = {**self.env, "CELERY_QUEUE": self.procs.queue}
        self.start_workers()
        self.procs.beat(env)
        for i in range(self.n_web):
            port = free_port()
            cmd = [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port)]
            cmd += ["--workers", "1", "--blocking-threads", "8", "web.wsgi:app"]
            log = (self.root / f"web{i + 1}.log").open("ab")
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**base_env(), **env}, stdout=log, stderr=subprocess.STDOUT)
            self.web.append(Server(port, proc))
            wait_http(f"{self.web[-1].url}/healthz", 60)
        if self.netns is not None:
            self._start_minority(env)
        users = make_users(self.db, self.n_buyers)
        self.sessions = [(u, login(self.web[0].url, email_of(self.db, u), PASSWORD)) for u in users]
        return self

    def _start_minority(self, env: dict[str, str]) -> None:
        """A worker and a web node inside the namespace; PostgreSQL and RabbitMQ through relays on its service link."""
        ns = self.netns
        assert ns is not None
        db = make_url(self.settings.database_url)
        pg = TcpProxy((db.host or "127.0.0.1", db.port or 5432), host=ns.s_host)
        amqp = TcpProxy(("127.0.0.1", 5672), host=ns.s_host)
        self.relays += [pg, amqp]
        ns_env = {
            **env,
            "DATABASE_URL": db.set(host=ns.s_host, port=pg.port).render_as_string(hide_password=False),
            "CELERY_BROKER_URL": f"amqp://guest:guest@{ns.s_host}:{amqp.port}//",
        }
        self.procs.worker(f"minority-{RUN_TAG}", ns_env, launch=ns.launch)
        port = free_port()
        cmd = [*ns.launch, sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "0.0.0.0"]
        cmd += ["--port", str(port), "--workers", "1", "--blocking-threads", "8", "web.wsgi:app"]
        log = (self.root / "web-minority.log").open("ab")
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**base_env(), **ns_env}, stdout=log, stderr=subprocess.STDOUT)
        server = Server(port, proc)
        server.url = self.minority_url = f"http://{ns.s_ns}:{port}"
        self.web.append(server)
        wait_http(f"{server.url}/healthz", 60)

    def start_workers(self) -> None:
        """Start the worker nodes (fresh names, so a restarted node is told apart in the logs)."""
        env = {**self.env, "CELERY_QUEUE": self.procs.queue}
        for _ in range(self.n_workers):
            self._spawned += 1
            self.workers.append(self.procs.worker(f"faults{self._spawned}-{RUN_TAG}", env))

    def kill_workers(self) -> None:
        """SIGKILL every worker node (whole process group, mid-task)."""
        for w in self.workers:
            w.kill()
        self.workers.clear()

    def restart_workers(self) -> None:
        """SIGKILL every worker node, then start as many again."""
        self.kill_workers()
        self.start_workers()

    def make_deal(self, stock: int, limit: int) -> int:
        """A deal loaded into the gate; on a partitioned cluster, one whose shard's primary is inside the namespace.

        Why deals are made until one lands there: a deal's shard is its id's hash slot, known only once made;
        the others stay open and unused (about two of three are).
        """
        for _ in range(50):
            deal = make_deal(self.db, self.gate, stock=stock, limit=limit, payment_window=PAYMENT_WINDOW_S).id
            t = self.topology
            if not isinstance(t, PartitionedCluster):
                return deal
            if t.primary_of(key_slot(self.gate.keys.deal(deal).stock.encode())) == t.inside:
                return deal
        raise RuntimeError("no deal landed on the partitioned shard")

    def expiries_due(self) -> bool:
        """True when an unpaid order of the running scenario is past its pay_by (the sweep has work)."""
        now = now_ms()
        try:
            return any(self.gate.redis.zcount(self.gate.keys.deal(d).due, "-inf", now) for d in self.deals)
        except Exception:  # noqa: BLE001 - a failover settling: nothing due as far as we know
            return False

    def close(self) -> None:
        """Stop every process started here, drop the test queue."""
        for s in self.web:
            s.stop()
        self.procs.close()
        from kombu import Connection

        with contextlib.suppress(Exception), Connection(DEFAULT_AMQP_URL, connect_timeout=2) as conn:
            conn.default_channel.queue_delete(self.procs.queue)
        for r in self.relays:
            r.close()
        self.topology.stop()
        if self.netns is not None:
            self.netns.delete()
        if self.postgres is not None:
            self.postgres.stop()

    def drained(self, deal_ids: list[int]) -> bool:
        """Wait until no deal has an entry to persist or an order left to expire, twice in a row 1 s apart."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        calm = 0
        while time.monotonic() < deadline:
            try:
                busy = any(
                    self.gate.redis.zcard(self.gate.keys.deal(d).inflight)
                    or self.gate.redis.zcard(self.gate.keys.deal(d).due)
                    for d in deal_ids
                )
            except Exception:  # noqa: BLE001 - a failover still settling: look again
                busy = True
            calm = 0 if busy else calm + 1
            if calm >= 2:
                return True
            time.sleep(1.0)
        return False


def run_scenario(stack: FaultStack, name: str, nemesis: Nemesis, warmup: float, after: float) -> Result:
    """Load the shop, apply the nemesis (bounded, healed), load on, stop, drain, check."""
    t0 = time.monotonic()
    healed(stack.topology)
    deals = [stack.make_deal(BIG_STOCK, BIG_STOCK), stack.make_deal(SMALL_STOCK, SMALL_LIMIT)]
    stack.deals = deals
    history, stop = History(), threading.Event()
    nodes = [s.url for s in stack.web]
    buyers = [
        Buyer(f"{name}-b{i}", session, user, nodes, deals, history, stop, seed=i)  # type: ignore[arg-type]
        for i, (user, session) in enumerate(stack.sessions)
    ]
    for b in buyers:
        b.start()
    try:
        time.sleep(warmup)
        fault = nemesis(stack)
        time.sleep(after)
    finally:
        stop.set()
        for b in buyers:
            b.join(30)
    drained = stack.drained(deals)
    report = check(history, read_state(stack.db, stack.gate, deals))
    return Result(name, fault, report, drained, time.monotonic() - t0, history)


def _minority_orders(history: History, url: str, cut: tuple[float, float]) -> str:
    """What the minority's web node answered to orders sent while its Redis link was cut (it admits until its
    primary sees itself cut off)."""
    ops = [o for o in history if o.kind == "order" and o.node == url and cut[0] <= o.invoked_at <= cut[1]]
    ok = [o for o in ops if o.outcome == "ok"]
    n = Counter(o.outcome for o in ops)
    return (
        f"during the cut ({cut[1] - cut[0]:.0f} s), the minority's node: {len(ok)} orders ok "
        f"({sum(o.unconfirmed for o in ok)} unconfirmed), {n['fail']} refused, {n['info']} unknown"
    )


def _ofi(r: Report, kind: str) -> str:
    return "/".join(str(r.ops[(kind, o)]) for o in ("ok", "fail", "info"))


def table(results: list[Result]) -> str:
    """The matrix as a Markdown table: fault x operations x ok/fail/unknown x lost/duplicated/oversold/..."""
    head = (
        "| fault | orders ok/fail/unknown | cancels ok/fail/unknown | payments ok/fail/unknown | unconfirmed "
        "| lost | duplicated | oversold | unconfirmed-and-lost | other violations | verdict |"
    )
    lines = [head, "|" + "---|" * 11]
    for res in results:
        r = res.report
        others = sorted({v.kind for v in r.violations} - set(FATAL))
        verdict = "FAIL" if r.fatal else ("violations" if not r.ok else ("ok" if res.drained else "not drained"))
        lines.append(
            f"| {res.scenario} | {_ofi(r, 'order')} | {_ofi(r, 'cancel')} | {_ofi(r, 'pay')} | {r.unconfirmed} "
            f"| {r.count('lost')} | {r.count('duplicated')} | {r.count('oversold')} | {r.unconfirmed_lost} "
            f"| {', '.join(f'{k} {r.count(k)}' for k in others) or '-'} | {verdict} |"
        )
    return "\n".join(lines)


def run(
    settings: Settings,
    scenarios: list[str],
    warmup: float,
    after: float,
    keep: Path | None = None,
    size: tuple[int, int, int] = (2, 2, BUYERS),
    private_pg: bool = False,
) -> list[Result]:
    """Run the scenarios on one stack (web nodes, workers, buyers), in order; print each row as it goes."""
    results: list[Result] = []
    unknown = set(scenarios) - set(NEMESES)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))} (known: {', '.join(NEMESES)})")
    plain = [n for n in scenarios if n not in PARTITIONED]
    cut = [n for n in scenarios if n in PARTITIONED and n in SENTINEL_NEMESES]
    cluster_cut = [n for n in scenarios if n in PARTITIONED and n in CLUSTER_NEMESES]
    for names, partition, cluster in ((plain, False, False), (cut, True, False), (cluster_cut, True, True)):
        if names:
            results += _run_on_stack(settings, names, warmup, after, keep, size, private_pg, partition, cluster)
    return results


def _run_on_stack(
    settings: Settings,
    scenarios: list[str],
    warmup: float,
    after: float,
    keep: Path | None,
    size: tuple[int, int, int],
    private_pg: bool,
    partition: bool,
    cluster: bool,
) -> list[Result]:
    root = Path(tempfile.mkdtemp(prefix="flashdeal-faults-"))
    # The namespace layout: one web node and one worker on each side.
    stack = FaultStack(settings, root, *((1, 1, size[2]) if partition else size), private_pg, partition, cluster)
    results = []
    try:
        stack.start()
        for name in scenarios:
            res = run_scenario(stack, name, NEMESES[name], warmup, after)
            results.append(res)
            nodes = Counter(op.node.split("//")[-1] for op in res.history if op.outcome == "ok")
            print(
                f"[faults] {name}: {res.fault}; {len(res.history)} ops, {res.seconds:.0f} s; ok by node {dict(nodes)}"
            )
            if stack.cut is not None:
                print(f"[faults]   {_minority_orders(res.history, stack.minority_url, stack.cut)}")
                stack.cut = None
            for v in res.report.violations[:10]:
                print(f"[faults]   {v.kind}: deal {v.deal_id}: {v.detail}", flush=True)
            if keep is not None and not res.report.ok:
                keep.mkdir(parents=True, exist_ok=True)
                res.history.dump(keep / f"{name}.history.jsonl")
    finally:
        stack.close()
        if keep is not None and any(not r.report.ok for r in results):
            shutil.copytree(root, keep / "logs", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.aof*", "*.rdb"))
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m faults.matrix [--scenarios a,b] [--warmup S] [--after S]``: prints the table; 1 on a fatal row."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenarios", default=",".join(NEMESES), help="comma-separated, in order")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of load before the fault")
    p.add_argument("--after", type=float, default=5.0, help="seconds of load after the fault healed")
    p.add_argument("--keep", type=Path, default=ROOT / "var" / "faults", help="histories and logs of failed rows")
    args = p.parse_args(argv)
    settings = Settings.from_env().with_(env="test", key_prefix=RUN_PREFIX)
    t0 = time.monotonic()
    results = run(settings, args.scenarios.split(","), args.warmup, args.after, args.keep, private_pg=True)
    print()
    print(table(results))
    print(f"\n{len(results)} scenarios in {time.monotonic() - t0:.0f} s")
    return 1 if any(r.report.fatal for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
