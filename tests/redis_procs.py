"""Redis servers of our own on free ports for fault tests: a single throwaway one, a Sentinel topology, a Cluster."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from scripts.local_redis.cluster import ClusterPorts, ClusterTopology, free_cluster_ports
from scripts.local_redis.sentinel import MASTER_NAME, SentinelPorts, SentinelTopology
from shared.redis import text_client
from shared.settings import DEFAULT_AMQP_URL, Settings
from tests.conftest import free_port


@dataclass
class SentinelSetup:
    """The running topology and the settings/environment that point flashdeal at it."""

    topology: SentinelTopology
    settings: Settings
    env: dict[str, str]  # what a web node or worker process needs on top of base_env()


def _free_ports(n: int) -> tuple[int, ...]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return tuple(sorted(ports))


@pytest.fixture()
def sentinel_setup(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """Start the topology from the local redis-server; every process it started is killed at the end."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    ports = _free_ports(6)
    root: Path = tmp_path_factory.mktemp("sentinel")
    topology = SentinelTopology(root, SentinelPorts(data=ports[:3], sentinels=ports[3:]))
    try:
        topology.start()
        env = {
            "FLASHDEAL_REDIS_TOPOLOGY": "sentinel",
            "REDIS_SENTINELS": topology.ports.sentinels_setting,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "REDIS_URL": "redis://127.0.0.1:6379/0",  # with Sentinel only its database number is used
            "CELERY_BROKER_URL": DEFAULT_AMQP_URL,  # the Sentinel topology's broker
        }
        s = settings.with_(
            redis_topology="sentinel",
            redis_sentinels=tuple(("127.0.0.1", p) for p in topology.ports.sentinels),
            redis_sentinel_master=MASTER_NAME,
            order_ack_replicas=1,
            celery_broker_url=DEFAULT_AMQP_URL,
        )
        yield SentinelSetup(topology, s, env)
    finally:
        topology.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class ClusterSetup:
    """The running cluster and the settings/environment that point flashdeal at it."""

    topology: ClusterTopology
    settings: Settings
    env: dict[str, str]  # what a web node or worker process needs on top of base_env()


@pytest.fixture(scope="module")
def cluster_setup(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """A six-node cluster from the local redis-server, one per test module (forming it takes seconds).

    Every node it started is killed at the end. A test that kills or moves things leaves the cluster
    whole again (the killed node restarted), but roles and slots may have moved: ask the topology.
    """
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are not installed (apt-get install redis-server)")
    root: Path = tmp_path_factory.mktemp("cluster")
    topology = ClusterTopology(root, ClusterPorts(nodes=free_cluster_ports(6)))
    try:
        topology.start()
        env = {
            "FLASHDEAL_REDIS_TOPOLOGY": "cluster",
            "REDIS_CLUSTER_NODES": topology.ports.nodes_setting,
            "REDIS_URL": "redis://127.0.0.1:6379/0",  # with a cluster only its credentials are used
            "CELERY_BROKER_URL": DEFAULT_AMQP_URL,  # kombu has no Redis Cluster transport
        }
        s = settings.with_(
            redis_topology="cluster",
            redis_cluster_nodes=tuple(("127.0.0.1", p) for p in topology.ports.nodes),
            order_ack_replicas=1,
            celery_broker_url=DEFAULT_AMQP_URL,
        )
        yield ClusterSetup(topology, s, env)
    finally:
        topology.stop()
        shutil.rmtree(root, ignore_errors=True)


def sentinel_client(setup: SentinelSetup):  # type: ignore[no-untyped-def]
    """A text client that follows the primary (as every flashdeal process builds it)."""
    return text_client(setup.settings)


class PrivateRedis:
    """One redis-server of our own (no persistence) on a free port; ``restart_empty`` is a crash that loses all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        """Start the server and wait until it answers."""
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (only the one this object started)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart_empty(self) -> None:
        """A crash and a restart without persistence: every key is gone."""
        self.kill()
        self.start()


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A throwaway redis-server on a free port (its policy and data may be changed without touching the shared one)."""
    server = PrivateRedis(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()
