"""The Redis topology registry: one class per name, each implementing the whole interface (no processes)."""

from __future__ import annotations

import inspect

import redis

from shared.redis.base import RedisTopology
from shared.redis.registry import TOPOLOGIES, topology_for, topology_of
from shared.settings import TOPOLOGIES as NAMES
from shared.settings import Settings


def test_every_topology_name_has_one_class_and_back() -> None:
    assert set(TOPOLOGIES) == set(NAMES)
    for name, cls in TOPOLOGIES.items():
        assert cls.name == name and issubclass(cls, RedisTopology) and not inspect.isabstract(cls)


def test_the_settings_choose_the_class() -> None:
    env = {"REDIS_SENTINELS": "h1:26391", "REDIS_CLUSTER_NODES": "h1:7001"}
    for name, cls in TOPOLOGIES.items():
        topology = topology_for(Settings.from_env({**env, "FLASHDEAL_REDIS_TOPOLOGY": name}))
        assert type(topology) is cls
        assert topology.limits_storage_uri() and topology.celery_result_backend()


def test_a_single_client_is_served_as_one_server(settings) -> None:
    client = topology_for(settings).text_client()
    try:
        assert topology_of(client).route(client).one_server
        assert [n.name for n in topology_of(client).nodes(client)] == [""]
    finally:
        client.close()
    assert not any(cls.owns(object()) for cls in TOPOLOGIES.values())  # type: ignore[arg-type]
    assert topology_of(redis.Redis()).name == "single"
