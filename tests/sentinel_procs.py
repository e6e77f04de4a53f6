"""A real Redis Sentinel topology (primary, two replicas, three sentinels) on free ports, for fault tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.sentinel_topology import MASTER_NAME, SentinelPorts, SentinelTopology
from shared.redis_client import text_client
from shared.settings import Settings
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
        }
        s = settings.with_(
            redis_topology="sentinel",
            redis_sentinels=tuple(("127.0.0.1", p) for p in topology.ports.sentinels),
            redis_sentinel_master=MASTER_NAME,
            order_ack_replicas=1,
        )
        yield SentinelSetup(topology, s, env)
    finally:
        topology.stop()
        shutil.rmtree(root, ignore_errors=True)


def sentinel_client(setup: SentinelSetup):  # type: ignore[no-untyped-def]
    """A text client that follows the primary (as every flashdeal process builds it)."""
    return text_client(setup.settings)
