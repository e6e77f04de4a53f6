"""``cluster``: redis-py's ``RedisCluster`` on ``REDIS_CLUSTER_NODES``; every key of a deal in one slot.

DirectCalls sends each command to the primary of its key's slot, as that client's slot map says
(shared/redis/cluster_router.py).
"""

from __future__ import annotations

from typing import Any

from redis.cluster import PRIMARY, ClusterNode, RedisCluster

from shared.redis.base import Client, Node, RedisTopology, client_options, credentials
from shared.redis.cluster_router import ClusterRouter

# The nodes ``FLASHDEAL_REDIS_TOPOLOGY=cluster make up`` starts (scripts/local_redis/cluster.py); any one will do.
LOCAL_NODES = ",".join(f"127.0.0.1:{port}" for port in range(7001, 7007))


class ClusterRedis(RedisTopology):
    """Redis Cluster: deals sharded over primaries, each with its replica."""

    name = "cluster"
    replicated = True
    local_nodes = {"redis_cluster_nodes": LOCAL_NODES}

    def connect(self, **options: Any) -> Client:
        """A RedisCluster client; REDIS_URL gives the credentials only (a cluster has database 0 alone)."""
        options = client_options(**options)
        retry = options.pop("retry")
        options.pop("retry_on_timeout", None)  # deprecated for cluster nodes: their retry covers timeouts already
        # RedisCluster refuses a ``retry`` for its nodes' connections (it retries itself, on a refreshed slot
        # map): ours goes there.
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.settings.redis_cluster_nodes],
            **credentials(self.settings),
            retry=retry,
            # A shard without its primary (between a SIGKILL and its replica's promotion) must not stop
            # the client from starting or from serving the other shards.
            require_full_coverage=False,
            **options,
        )

    def limits_storage_uri(self) -> str:
        """``redis+cluster://h:p,h:p``."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.settings.redis_cluster_nodes)

    def limits_storage_options(self) -> dict[str, Any]:
        """Credentials as options, decoded (``limits`` would take a URI's ``%40`` as typed)."""
        auth = {k: v for k, v in credentials(self.settings).items() if v is not None}
        return {"socket_connect_timeout": 2, "require_full_coverage": False, **auth}

    def celery_result_backend(self) -> str:
        """``rpc://``: the replies travel back over the broker (RabbitMQ).

        Why: Celery's Redis backend cannot use a Redis Cluster. Only the reconcile task has a result
        anyway (``task_ignore_result`` for every other), and only its caller waits for it.
        """
        return "rpc://"

    @classmethod
    def owns(cls, client: Client) -> bool:
        """A RedisCluster client."""
        return isinstance(client, RedisCluster)

    @classmethod
    def route(cls, client: Client) -> ClusterRouter:
        """Per node and thread, by slot."""
        return ClusterRouter(client)  # type: ignore[arg-type]

    @classmethod
    def nodes(cls, client: Client) -> list[Node]:
        """Every node, replicas too (a replica becomes a primary in a failover); any may be down for a while."""
        return [
            Node(n.name, "primary" if n.server_type == PRIMARY else "replica", {"target_nodes": n}, may_be_down=True)
            for n in client.get_nodes()  # type: ignore[union-attr]
        ]
