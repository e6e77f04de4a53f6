"""The Redis topologies by name (``FLASHDEAL_REDIS_TOPOLOGY``): adding one is a module and a line here."""

from __future__ import annotations

from shared.redis.base import Client, RedisTopology
from shared.redis.cluster import ClusterRedis
from shared.redis.sentinel import SentinelRedis
from shared.redis.single import SingleRedis
from shared.settings import Settings

# Client side, the first class that owns a client serves it: a subclass that behaves as its base there
# (sentinel: one server, as single) need not come first.
TOPOLOGIES: dict[str, type[RedisTopology]] = {t.name: t for t in (SingleRedis, SentinelRedis, ClusterRedis)}


def topology_for(settings: Settings) -> RedisTopology:
    """The configured topology."""
    return TOPOLOGIES[settings.redis_topology](settings)


def topology_of(client: Client) -> type[RedisTopology]:
    """The topology class that serves a client it made (its route and its nodes)."""
    for topology in TOPOLOGIES.values():
        if topology.owns(client):
            return topology
    raise TypeError(f"no Redis topology serves a {type(client).__name__}")


def is_replicated(name: str) -> bool:
    """True when the named topology has replicas (WAIT after an admission; RabbitMQ as the broker)."""
    return TOPOLOGIES[name].replicated
