"""Start and stop a Redis Sentinel topology from the local ``redis-server`` binary.

One primary, two replicas (AOF on, ``min-replicas-to-write 1``) and three sentinels watching
one master name. ``make up`` uses the fixed ports of ``SentinelPorts.default()``; the fault
tests pick free ports. Every process is started daemonized with a pid file under its own
directory, so ``stop`` ends exactly the processes ``start`` began.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis

from harness.waits import wait_for
from scripts.local_redis.nodes import HOST, RedisNodes, ping

MASTER_NAME = "flashdeal"
# Why 2 s: a failover within a few seconds, without a needless second one right after it. A sentinel that
# switches to a new primary reconnects to it on its 1 s reconnect period and counts down-after from the
# switch, so at 1 s its first PING could be due just as the time ran out: it judged the fresh primary down,
# the other sentinels' "down" votes of the failover just ended still counted for 5 s, and a second failover
# followed (in at least 4 of 19 runs of test_sentinel_faults.py's storm on a 2-core machine at 1 s, in 0 of 12
# at 2 s). Lower also makes a busy machine's pauses look like deaths.
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 3000
# A primary that has had no replica acknowledging for this long refuses writes (bounds a split brain).
MIN_REPLICAS_MAX_LAG_S = 5


@dataclass(frozen=True)
class SentinelPorts:
    """Ports of the data nodes (first is the initial primary) and of the sentinels."""

    data: tuple[int, ...]
    sentinels: tuple[int, ...]

    @classmethod
    def default(cls) -> SentinelPorts:
        """The ports ``FLASHDEAL_REDIS_TOPOLOGY=sentinel make up`` uses."""
        return cls(data=(6391, 6392, 6393), sentinels=(26391, 26392, 26393))

    @property
    def sentinels_setting(self) -> str:
        """The ``REDIS_SENTINELS`` value for these sentinels."""
        return ",".join(f"{HOST}:{p}" for p in self.sentinels)


class SentinelTopology(RedisNodes):
    """The processes of one topology under ``root``: start, kill one node, restart it, stop all."""

    def __init__(self, root: Path, ports: SentinelPorts, binary: str | None = None) -> None:
        super().__init__(root, binary)
        self.ports = ports

    def host(self, port: int) -> str:
        """The address the node on ``port`` listens on and announces (a fault test may spread them)."""
        return HOST

    def launch(self, port: int) -> list[str]:
        """What the node on ``port`` is started through (a fault test may start it in a network namespace)."""
        return []

    def data_args(self, port: int, replica_of: int | None) -> list[str]:
        """Command line of one data node (AOF, no eviction, min-replicas-to-write 1)."""
        d = self._dir(port)
        args = [
            *self.launch(port), self.binary, "--port", str(port), "--bind", self.host(port), "--daemonize", "yes",
            "--dir", str(d),
            "--pidfile", str(self._pidfile(port)), "--logfile", str(d / "redis.log"),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction",
            "--min-replicas-to-write", "1", "--min-replicas-max-lag", str(MIN_REPLICAS_MAX_LAG_S),
            "--replica-announce-ip", self.host(port),
        ]  # fmt: skip
        if replica_of is not None:
            args += ["--replicaof", self.host(replica_of), str(replica_of)]
        return args

    def _sentinel_conf(self, port: int) -> Path:
        """Write a fresh sentinel config (sentinel rewrites it as it learns the topology)."""
        d = self._dir(port)
        conf = d / "sentinel.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {self.host(port)}",
                    "daemonize yes",
                    f"dir {d}",
                    f"pidfile {self._pidfile(port)}",
                    f"logfile {d / 'sentinel.log'}",
                    f"sentinel announce-ip {self.host(port)}",
                    f"sentinel monitor {MASTER_NAME} {self.host(self.ports.data[0])} {self.ports.data[0]} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 2",
                    "",
                ]
            )
        )
        return conf

    def running(self) -> bool:
        """True when every data node and sentinel answers PING."""
        return all(ping(p, self.host(p)) for p in (*self.ports.data, *self.ports.sentinels))

    def start(self, timeout: float = 20.0) -> SentinelTopology:
        """Start every process (fresh data) and wait until the sentinels agree on the primary."""
        primary, *replicas = self.ports.data
        for port in (*self.ports.data, *self.ports.sentinels):
            shutil.rmtree(self._dir(port), ignore_errors=True)
            self._dir(port).mkdir(parents=True)
        subprocess.run(self.data_args(primary, None), check=True)
        for port in replicas:
            subprocess.run(self.data_args(port, primary), check=True)
        for port in self.ports.sentinels:
            subprocess.run([*self.launch(port), self.binary, str(self._sentinel_conf(port)), "--sentinel"], check=True)
        wait_for(self.running, timeout, "the Redis nodes and sentinels did not answer")
        wait_for(lambda: self.replicas_online(primary) == len(replicas), timeout, "the replicas did not sync")
        wait_for(self._sentinels_ready, timeout, "the sentinels did not see each other and the replicas")
        return self

    def ensure(self, timeout: float = 30.0) -> str:
        """Use what runs, start what is missing on the data it left, or start afresh; says which it did.

        A node killed in a demo (or a machine restart) must not cost the orders on the others' AOF:
        only a topology with no data on disk at all is started fresh.
        """
        if self.running():
            return "reused"
        if not any((self._dir(p) / "sentinel.conf").exists() for p in self.ports.sentinels):
            self.start(timeout)
            return "started"
        for port in self.ports.sentinels:
            if not ping(port, self.host(port)):
                # Its own rewritten config: it remembers the primary it last saw and its peers.
                subprocess.run([self.binary, str(self._dir(port) / "sentinel.conf"), "--sentinel"], check=True)
        wait_for(
            lambda: all(ping(p, self.host(p)) for p in self.ports.sentinels), timeout, "the sentinels did not start"
        )
        primary = self.primary()
        if not ping(primary, self.host(primary)):
            # Every data node was down: the one the sentinels last named primary comes back as primary on its AOF.
            subprocess.run(self.data_args(primary, None), check=True)
            wait_for(lambda: ping(primary, self.host(primary)), timeout, f"redis on {primary} did not come back")
        for port in self.ports.data:
            if not ping(port, self.host(port)):
                self.restart(port)
        wait_for(
            lambda: self.replicas_online(self.primary()) == len(self.ports.data) - 1, timeout, "replicas not in sync"
        )
        return "revived"

    def replicas_online(self, port: int) -> int:
        """How many replicas the node on ``port`` reports online (0 if it does not answer)."""
        try:
            info = redis.Redis(self.host(port), port, socket_timeout=1).info("replication")
        except redis.RedisError:
            return 0
        links = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return sum(1 for v in links if v.get("state") == "online")

    def _sentinels_ready(self) -> bool:
        for port in self.ports.sentinels:
            try:
                s = redis.Redis(self.host(port), port, socket_timeout=1, decode_responses=True)
                m = s.sentinel_master(MASTER_NAME)
            except redis.RedisError:
                return False
            peers, replicas = int(m["num-other-sentinels"]), int(m["num-slaves"])
            if peers < len(self.ports.sentinels) - 1 or replicas < len(self.ports.data) - 1:
                return False
        return True

    def primary(self) -> int:
        """Port of the primary as the sentinels report it (the first one that answers)."""
        for port in self.ports.sentinels:
            with contextlib.suppress(redis.RedisError):
                s = redis.Redis(self.host(port), port, socket_timeout=1)
                _host, p = s.sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(p)
        raise RuntimeError("no sentinel answers")

    def restart(self, port: int) -> None:
        """Start a killed data node again on its old data; it comes back as the replica of whoever is primary now."""
        self._dir(port).mkdir(parents=True, exist_ok=True)
        # Started as a replica of the current primary, as sentinel would reconfigure it anyway: it
        # never serves as a second primary in between (and min-replicas-to-write would refuse its writes).
        subprocess.run(self.data_args(port, self.primary()), check=True)
        wait_for(lambda: ping(port, self.host(port)), 10, f"redis on {port} did not come back")

    def stop(self, graceful: bool = False) -> None:
        """Stop every process this topology started (by pid file) and wait until each is gone.

        ``graceful``: SIGTERM, so each data node writes its AOF out before it exits (``make up``'s Ctrl-C);
        otherwise SIGKILL (tests, which throw the data away).
        """
        for port in (*self.ports.sentinels, *self.ports.data):
            self.kill(port, signal.SIGTERM if graceful else signal.SIGKILL)
