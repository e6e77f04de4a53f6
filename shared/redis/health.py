"""Health of the configured Redis: eviction policy, readiness, the start-up check; every topology's nodes."""

from __future__ import annotations

from typing import Any

import redis

from shared.redis.base import Client
from shared.redis.memory import is_full
from shared.redis.registry import topology_for, topology_of
from shared.settings import ConfigError, Settings


def server_policy(client: Client, node: Any = None) -> dict[str, str]:
    """The server's persistence and eviction settings (``CONFIG GET``; empty where CONFIG is not allowed).

    On a cluster: those of ``node`` (a ``ClusterNode``), or of the client's default node when None
    (``eviction_problem`` asks every node).
    """
    target = {} if node is None else {"target_nodes": node}
    return _policy(client, target)


def _policy(client: Client, target: dict[str, Any]) -> dict[str, str]:
    try:
        got = client.config_get("maxmemory-policy", **target)
        got |= client.config_get("appendonly", **target)
        got |= client.config_get("save", **target)
    except redis.ResponseError:  # CONFIG disabled or renamed (managed Redis): nothing to report
        return {}
    return {_text(k): _text(v) for k, v in got.items()}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def eviction_problem(client: Client, skip: frozenset[str] = frozenset()) -> str | None:
    """Why this Redis could lose gate keys on its own (``maxmemory-policy`` not ``noeviction``), or None.

    On a cluster every node is asked, replicas too (a replica becomes a primary in a failover): one
    evicting shard loses its deals' orders as surely as one evicting Redis. Nodes named in ``skip``
    (known down) and nodes that may be down and do not answer are left for the next check.
    """
    for node in topology_of(client).nodes(client):
        if node.name and node.name in skip:
            continue
        try:
            policy = _policy(client, node.options).get("maxmemory-policy")
        except (redis.ConnectionError, redis.TimeoutError):
            if not node.may_be_down:
                raise
            continue  # a cluster node that is down or unreachable (a shard failing over)
        if policy is not None and policy != "noeviction":
            where = f" on {node.name}" if node.name else ""
            return (
                f"Redis maxmemory-policy is {policy!r}{where}: it may evict stock and order keys; "
                "set it to 'noeviction'"
            )
    return None


def readiness(client: Client) -> str:
    """The Redis check of ``/readyz``: ``ok``, ``degraded: …`` (still ready) or ``error: …``.

    On a cluster, nodes that do not answer make it ``degraded`` as long as one primary answers. Why not
    an error: every web node sees the same cluster, so failing the probe would take all of them out of
    rotation for one shard's failover and stop the other shards' sales too (the shard's own requests
    get 503 + Retry-After meanwhile, as on one Redis). An evicting node, or a full primary, is an error anywhere.
    """
    down: dict[str, str] = {}  # node name -> its role
    primaries_up = 0
    for node in topology_of(client).nodes(client):
        try:
            client.ping(**node.options)
            primaries_up += node.role == "primary"
        except redis.RedisError:
            if not node.may_be_down:
                raise
            down[node.name] = node.role
    if not primaries_up:
        return "error: no cluster primary answers"
    problem = eviction_problem(client, skip=frozenset(down)) or full_problem(client, skip=frozenset(down))
    if problem:
        return f"error: {problem}"
    return f"degraded: {', '.join(f'{n} ({r})' for n, r in down.items())} not answering" if down else "ok"


def full_problem(client: Client, skip: frozenset[str] = frozenset()) -> str | None:
    """Why this Redis refuses writes for memory (``full: …``), or None: any primary that reached maxmemory.

    Nodes named in ``skip`` (known down) and nodes that may be down and do not answer are left out.
    """
    full = []
    for node in topology_of(client).nodes(client):
        if node.role != "primary" or (node.name and node.name in skip):
            continue
        try:
            info = client.info("memory", **node.options)
        except (redis.ConnectionError, redis.TimeoutError):
            if not node.may_be_down:
                raise
            continue
        if is_full(info):
            full.append(node.name or "redis")
    return f"full on {', '.join(full)}: writes refused (maxmemory reached)" if full else None


def refuse_evicting_redis(settings: Settings) -> None:
    """Start-up check of web nodes and workers: raise ConfigError for a Redis that may evict gate keys.

    A Redis that does not answer yet is let through (it is checked again by /readyz, and a
    process must be able to start before its Redis does). Not so a cluster none of whose nodes
    answers: RedisCluster reads the slot map when it is made, and raises (docs/topologies.md).
    """
    client = topology_for(settings).text_client()
    try:
        problem = eviction_problem(client)
    except redis.RedisError:
        return
    finally:
        client.close()
    if problem:
        raise ConfigError(problem)
