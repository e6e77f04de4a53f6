"""Start and stop a Redis Cluster from the local ``redis-server`` binary.

Six nodes: three primaries and three replicas (``redis-cli --cluster create --cluster-replicas 1``),
AOF on, no eviction. ``make up`` uses the fixed ports of ``ClusterPorts.default()``; the tests pick
free ports (a node also listens on its port + 10000, the cluster bus). Every node is started
daemonized with a pid file under its own directory, so ``stop`` ends exactly the processes
``start`` began.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis

from harness.waits import wait_for
from scripts.local_redis.nodes import HOST, RedisNodes, ping

# Why 1.5 s: a primary's death is noticed and its replica promoted within a few seconds;
# lower makes a busy machine's pauses look like deaths.
NODE_TIMEOUT_MS = 1500
SLOTS = 16384
BUS_OFFSET = 10000  # a cluster node's bus port is its port + 10000


@dataclass(frozen=True)
class ClusterPorts:
    """Ports of the six nodes; ``redis-cli --cluster create`` makes the first three the primaries."""

    nodes: tuple[int, ...]

    @classmethod
    def default(cls) -> ClusterPorts:
        """The ports ``FLASHDEAL_REDIS_TOPOLOGY=cluster make up`` uses."""
        return cls(nodes=tuple(range(7001, 7007)))

    @property
    def nodes_setting(self) -> str:
        """The ``REDIS_CLUSTER_NODES`` value for these nodes."""
        return ",".join(f"{HOST}:{p}" for p in self.nodes)


def node_client(port: int, host: str = HOST) -> redis.Redis:
    """A plain connection to one node (the topology's own checks, tests that talk to one node)."""
    return redis.Redis(host, port, socket_connect_timeout=1, socket_timeout=2, decode_responses=True)


class ClusterTopology(RedisNodes):
    """The nodes of one cluster under ``root``: start, kill one node, restart it, stop all."""

    def __init__(self, root: Path, ports: ClusterPorts, binary: str | None = None) -> None:
        super().__init__(root, binary)
        self.ports = ports
        self.cli = shutil.which("redis-cli") or "redis-cli"

    def host(self, port: int) -> str:
        """The address the node on ``port`` listens on and announces (a fault test may spread them)."""
        return HOST

    def launch(self, port: int) -> list[str]:
        """What the node on ``port`` is started through (a fault test may start it in a network namespace)."""
        return []

    def client(self, port: int) -> redis.Redis:
        """A plain connection to the node on ``port``, at its address."""
        return node_client(port, self.host(port))

    @property
    def nodes_setting(self) -> str:
        """The ``REDIS_CLUSTER_NODES`` value for these nodes, at their addresses."""
        return ",".join(f"{self.host(p)}:{p}" for p in self.ports.nodes)

    def node_args(self, port: int) -> list[str]:
        """Command line of one node (cluster mode, AOF, no eviction; its nodes.conf in its own directory)."""
        d = self._dir(port)
        return [
            *self.launch(port), self.binary, "--port", str(port), "--bind", self.host(port), "--daemonize", "yes",
            "--dir", str(d),
            "--pidfile", str(self._pidfile(port)), "--logfile", str(d / "redis.log"),
            "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # The other shards keep selling while one shard has no primary (between a death and a promotion).
            "--cluster-require-full-coverage", "no",
            "--cluster-announce-ip", self.host(port),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip

    def running(self) -> bool:
        """True when every node answers PING."""
        return all(ping(p, self.host(p)) for p in self.ports.nodes)

    def start(self, timeout: float = 30.0) -> ClusterTopology:
        """Start every node (fresh data), form the cluster and wait until every node reports it whole."""
        for port in self.ports.nodes:
            shutil.rmtree(self._dir(port), ignore_errors=True)
            self._dir(port).mkdir(parents=True)
            subprocess.run(self.node_args(port), check=True)
        wait_for(self.running, timeout, "the Redis nodes did not answer")
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"{self.host(p)}:{p}" for p in self.ports.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, timeout=timeout,
        )  # fmt: skip
        self.wait_healthy(timeout)
        return self

    def ensure(self, timeout: float = 30.0) -> str:
        """Use what runs, start killed nodes again on their data, or start afresh; says which it did."""
        if self.running():
            return "reused"
        if not any((self._dir(p) / "nodes.conf").exists() for p in self.ports.nodes):
            self.start(timeout)
            return "started"
        for port in self.ports.nodes:
            if not ping(port, self.host(port)):
                self.restart(port)
        self.wait_healthy(timeout)
        return "revived"

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every node says ``cluster_state:ok``, all slots are served and each primary has a replica."""
        wait_for(self._healthy, timeout, "the cluster did not become whole (cluster_state ok, every slot, replicas)")

    def _healthy(self) -> bool:
        try:
            for port in self.ports.nodes:
                raw = self.client(port).execute_command("CLUSTER", "INFO")
                info = dict(line.split(":", 1) for line in raw.split() if ":" in line)
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != SLOTS:
                    return False
            return len(self.primaries()) * 2 == len(self.ports.nodes) and all(
                self.replicas_online(p) >= 1 for p in self.primaries()
            )
        except (redis.RedisError, KeyError):
            return False

    def primaries(self) -> list[int]:
        """Ports of the primaries that serve slots, as the first node answering sees them."""
        for port in self.ports.nodes:
            with contextlib.suppress(redis.RedisError):
                shards = self.client(port).execute_command("CLUSTER", "SLOTS")
                return sorted({int(shard[2][1]) for shard in shards})
        raise RuntimeError("no cluster node answers")

    def primary_of(self, slot: int) -> int:
        """Port of the primary serving ``slot`` now (as the first node answering sees it)."""
        for port in self.ports.nodes:
            with contextlib.suppress(redis.RedisError):
                for start, end, primary, *_replicas in self.client(port).execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(primary[1])
        raise RuntimeError(f"no node serves slot {slot}")

    def replica_of(self, primary: int) -> int:
        """Port of a replica of the primary on ``primary``."""
        node_id = self.client(primary).execute_command("CLUSTER", "MYID")
        for line in self.client(primary).execute_command("CLUSTER", "REPLICAS", node_id):
            return int(line.split()[1].split("@")[0].rsplit(":", 1)[1])
        raise RuntimeError(f"{primary} has no replica")

    def replicas_online(self, port: int) -> int:
        """How many replicas the node on ``port`` reports online (0 if it does not answer)."""
        try:
            info = self.client(port).info("replication")
        except redis.RedisError:
            return 0
        links = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return sum(1 for v in links if v.get("state") == "online")

    def restart(self, port: int) -> None:
        """Start a killed node again on its data (its nodes.conf): it rejoins, as a replica if it was replaced."""
        self._dir(port).mkdir(parents=True, exist_ok=True)
        subprocess.run(self.node_args(port), check=True)
        wait_for(lambda: ping(port, self.host(port)), 10, f"redis on {port} did not come back")

    def stop(self, graceful: bool = False) -> None:
        """Stop every node this topology started (by pid file); ``graceful``: SIGTERM, each writes its AOF out."""
        for port in self.ports.nodes:
            self.kill(port, signal.SIGTERM if graceful else signal.SIGKILL)


def free_cluster_ports(n: int, taken: set[int] | None = None) -> tuple[int, ...]:
    """``n`` ports free for a node each, with the bus port (port + 10000) free too and below 65536."""
    out: list[int] = []
    seen = set(taken or ())
    while len(out) < n:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port in seen or port + BUS_OFFSET >= 65536 or port + BUS_OFFSET in seen:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((HOST, port + BUS_OFFSET))
            except OSError:
                continue
        seen |= {port, port + BUS_OFFSET}
        out.append(port)
    return tuple(sorted(out))
