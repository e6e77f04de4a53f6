"""A network partition on one machine: the primary, one web node and one worker in a network namespace.

Two veth pairs join the namespace to the host: the Redis link (cut by the nemesis: ``ip link set … down``)
and the service link (kept: PostgreSQL and RabbitMQ, which listen on 127.0.0.1, reached through a TCP relay
on the host's end). So the cut leaves the primary with a web node and a worker that still reach the
database and the broker, and cuts it off from its replicas, the sentinels and the rest of the shop, as in
Jepsen's Redis Sentinel analysis. Why the cut-off side is a namespace: an address on a veth whose link is
down stays reachable from the host itself, so processes on the host cannot be cut off that way.
Needs root (CI's and this machine's); iptables and tc are not used.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from harness.waits import wait_for
from scripts.local_redis.cluster import ClusterTopology
from scripts.local_redis.sentinel import SentinelTopology


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _free_subnet() -> int:
    """A 10.231.N.0/24 pair (N, N+1) no interface on the machine uses yet."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for n in range(20 + os.getpid() % 100 * 2, 250, 2):
        if f"10.231.{n}." not in used and f"10.231.{n + 1}." not in used:
            return n
    raise RuntimeError("no free 10.231.N.0/24 subnet")


class Netns:
    """One namespace and its two links; ``cut``/``heal`` take the Redis link down and up; ``delete`` removes all."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 0xFFFF:04x}"
        self.name = f"fdfaults{tag}"
        n = _free_subnet()
        # Host end / namespace end of the Redis link (r) and of the service link (s).
        self.r_host, self.r_ns = f"10.231.{n}.1", f"10.231.{n}.2"
        self.s_host, self.s_ns = f"10.231.{n + 1}.1", f"10.231.{n + 1}.2"
        self.r_if, self.s_if = f"fr{tag}", f"fs{tag}"  # host ends (interface names: 15 characters at most)

    @property
    def launch(self) -> list[str]:
        """Prefix that starts a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> Netns:
        """The namespace, both veth pairs with their addresses, all links up."""
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        for host_if, host_ip, ns_ip in ((self.r_if, self.r_host, self.r_ns), (self.s_if, self.s_host, self.s_ns)):
            _ip("link", "add", host_if, "type", "veth", "peer", "name", host_if + "n", "netns", self.name)
            _ip("addr", "add", f"{host_ip}/24", "dev", host_if)
            _ip("link", "set", host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{ns_ip}/24", "dev", host_if + "n")
            _ip("-n", self.name, "link", "set", host_if + "n", "up")
        return self

    def cut(self) -> None:
        """Take the Redis link down: the namespace and the host no longer reach each other's Redis addresses."""
        _ip("link", "set", self.r_if, "down")

    def heal(self) -> None:
        """Bring the Redis link back up."""
        _ip("link", "set", self.r_if, "up")

    def delete(self) -> None:
        """Remove the namespace (its veth ends go with it, and so do their host peers)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "delete", self.name)


class PartitionedTopology(SentinelTopology):
    """The Sentinel topology with its first primary inside the namespace, everything else on the host's end."""

    def __init__(self, netns: Netns, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.netns = netns

    def host(self, port: int) -> str:
        """The namespace's address for the first primary, the host's end of the Redis link for the others."""
        return self.netns.r_ns if port == self.ports.data[0] else self.netns.r_host

    def launch(self, port: int) -> list[str]:
        """The first primary starts (and restarts) inside the namespace."""
        return self.netns.launch if port == self.ports.data[0] else []

    def data_args(self, port: int, replica_of: int | None) -> list[str]:
        """The usual command line, out of protected mode (it answers only the loopback otherwise)."""
        return [*super().data_args(port, replica_of), "--protected-mode", "no"]

    def _sentinel_conf(self, port: int) -> Path:
        conf = super()._sentinel_conf(port)
        with conf.open("a") as f:
            f.write("protected-mode no\n")
        return conf


class PartitionedCluster(ClusterTopology):
    """The cluster with its first node inside the namespace (made a shard's primary), the others on the host's end.

    Every node listens on and announces (``cluster-announce-ip``, the bus too) the address both sides reach
    while the link is up, so cutting the Redis link cuts that primary off from its replica and the other
    primaries: the majority fails its shard over, the minority's web node and worker still reach it.
    """

    def __init__(self, netns: Netns, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.netns = netns

    @property
    def inside(self) -> int:
        """Port of the node inside the namespace."""
        return self.ports.nodes[0]

    def host(self, port: int) -> str:
        """The namespace's address for the first node, the host's end of the Redis link for the others."""
        return self.netns.r_ns if port == self.inside else self.netns.r_host

    def launch(self, port: int) -> list[str]:
        """The first node starts (and restarts) inside the namespace."""
        return self.netns.launch if port == self.inside else []

    def node_args(self, port: int) -> list[str]:
        """The usual command line, out of protected mode (it answers only the loopback otherwise)."""
        return [*super().node_args(port), "--protected-mode", "no"]

    def start(self, timeout: float = 30.0) -> PartitionedCluster:
        """Form the cluster; if ``redis-cli`` made the namespace's node a replica (it spreads primaries over
        addresses), promote it with a coordinated ``CLUSTER FAILOVER``, so a shard's primary is inside."""
        super().start(timeout)
        if self.client(self.inside).info("replication")["role"] != "master":
            self.client(self.inside).execute_command("CLUSTER", "FAILOVER")
            wait_for(lambda: self.inside in self.primaries(), timeout, f"{self.inside} was not promoted")
            self.wait_healthy(timeout)
        return self
