"""The cluster's slot map as DirectCalls' router reads it: redis-py's own (``nodes_manager``), refreshed sparingly."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisClusterException

from shared.redis.wire import command_name

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 0.1  # the slot map is asked for again at most this often (SlotMap.refresh)


class SlotMap:
    """Which node serves which slot: redis-py's map of one RedisCluster client, shared with that client.

    Why redis-py's and not ours: the client and DirectCalls then agree on every node, and a MOVED that
    one of them sees serves the other too.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self._refreshed_at = 0.0  # when the slot map was last asked for

    def node_of(self, slot: int) -> ClusterNode:
        """The primary of ``slot`` (SlotNotCoveredError when the map knows none)."""
        return self.cluster.nodes_manager.get_node_from_slot(slot)

    def moved(self, reply: MovedError) -> None:
        """The slot has a new owner for good (migration done, failover): update the shared map."""
        self.cluster.nodes_manager.move_slot(reply)

    def node_at(self, host: str, port: int) -> ClusterNode:
        """The node at ``host:port`` (an ASK target), known to the map or not."""
        return self.cluster.get_node(host=host, port=port) or ClusterNode(host, port)

    def slot_of(self, command: tuple[Any, ...]) -> int:
        """The hash slot of a command's keys (a script's first key; the server refuses a script across slots)."""
        if command_name(command) in ("EVALSHA", "EVAL"):
            if int(command[2]) == 0:
                raise ValueError("a script without keys has no slot to run in")
            return key_slot(self.cluster.encoder.encode(command[3]))
        return self.cluster.determine_slot(*command)

    def refresh(self) -> None:
        """Ask the cluster for its slot map again, at most once per REFRESH_EVERY_S for this process's threads.

        Why at most that often: during a failover every request to the dead shard fails at once, and each
        refresh asks a node for CLUSTER SLOTS under redis-py's lock and resets the client's pools to every
        node. Why it never raises: with no node answering, redis-py raises RedisClusterException (not a
        RedisError); the caller's own error (a dropped connection: 503) is what the buyer must get.
        """
        now = time.monotonic()
        if now - self._refreshed_at < REFRESH_EVERY_S:
            return
        self._refreshed_at = now
        try:
            self.cluster.nodes_manager.initialize()
        except (RedisClusterException, redis.RedisError):
            log.warning("the cluster's slot map could not be refreshed; the next error tries again", exc_info=True)
