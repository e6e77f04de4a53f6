"""DirectCalls' route on a Redis Cluster: each command to the primary of its slot, every node's share at once.

Why by hand: RedisCluster.execute_command is the client layer DirectCalls skips (docs/topologies.md), and its
pipeline sends one node's commands after another's. Here every node's share goes out before any reply is
read, so a read across shards costs one round trip, not one per node. The slot map is redis-py's
(shared/redis/cluster_slots.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection
from redis.exceptions import AskError, ClusterDownError, MovedError, SlotNotCoveredError, TryAgainError

from shared.redis.cluster_slots import SlotMap
from shared.redis.errors import PrimaryUnavailable
from shared.redis.wire import KEYLESS_COMMANDS, command_name, read_reply, round_trip

# Rounds of MOVED/ASK/TRYAGAIN answered before a call gives up (PrimaryUnavailable), and the pause before
# sending a TRYAGAIN (a slot whose keys are half migrated) again.
CLUSTER_ROUNDS = 5
TRYAGAIN_PAUSE_S = 0.02


class ClusterRouter:
    """One connection per node and thread; redirects (MOVED, ASK, TRYAGAIN) followed as RedisCluster does."""

    one_server = False

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._slots = SlotMap(cluster)
        self._local = threading.local()

    def _node_conn(self, node: ClusterNode) -> Connection:
        conns: dict[str, Connection] | None = getattr(self._local, "conns", None)
        # A connection made before a fork belongs to the parent: never share its socket.
        if conns is None or self._local.pid != os.getpid():
            conns = self._local.conns = {}
            self._local.pid = os.getpid()
        conn = conns.get(node.name)
        if conn is None:
            pool = self._cluster.get_redis_connection(node).connection_pool
            conn = conns[node.name] = pool.connection_class(**pool.connection_kwargs)
        return conn

    def exchange(self, commands: list[tuple[Any, ...]], raw: bool, retry: bool) -> list[Any]:
        """Send each command to its slot's node, follow redirects; replies in order (errors as values)."""
        retried = False
        if commands and all(command_name(c) in KEYLESS_COMMANDS for c in commands[1:]):
            # The hot path (a script and its WAIT, one command): one node, no plan to make.
            fast, dropped = self._one_node(commands, raw, retry)
            if fast is not None:
                return fast
            retried = dropped  # a dropped connection was the first try; the long way below is the second
        anchors = _anchors(commands)
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        asked: dict[int, ClusterNode] = {}  # command index -> the node an ASK sent it to (for this round)
        for _ in range(CLUSTER_ROUNDS):
            plan = self._plan(commands, anchors, todo, asked)
            failed = self._send_and_read(plan, commands, anchors, asked, replies, raw)
            again: set[int] = set()
            if failed:
                # A node died or went away: ask the cluster who serves its slots now (a promoted replica,
                # once the failover is through). Sent again only when safe to repeat, and only once.
                self._slots.refresh()
                if not retry or retried:
                    raise next(iter(failed.values()))
                retried = True
                again |= {i for node, idxs in plan.items() if node.name in failed for i in idxs}
            next_asked: dict[int, ClusterNode] = {}
            pause = False
            for i in todo:
                if i in again:
                    continue
                reply = replies[i]
                if isinstance(reply, MovedError):
                    self._slots.moved(reply)
                    again.add(i)
                elif isinstance(reply, AskError):
                    # The slot is being migrated and this key is already on the target: ask it there, this once.
                    next_asked[i] = self._slots.node_at(reply.host, reply.port)
                    again.add(i)
                elif isinstance(reply, TryAgainError):
                    # Some of the keys are on the source and some on the target (mid-migration): nothing ran.
                    again.add(i)
                    pause = True
                elif isinstance(reply, ClusterDownError):
                    self._slots.refresh()
            if not again:
                return replies
            # A keyless command (WAIT) is sent again with the command it follows, to the same node.
            again |= {j for j in todo if anchors[j] in again}
            asked = {j: next_asked[anchors[j]] for j in again if anchors[j] in next_asked}
            todo = sorted(again)
            if pause:
                time.sleep(TRYAGAIN_PAUSE_S)
        # Still redirected after every round: the slot is moving right now. Nothing ran; the caller retries.
        raise PrimaryUnavailable("TRYAGAIN the slot is being moved between nodes")

    def _one_node(self, commands: list[tuple[Any, ...]], raw: bool, retry: bool) -> tuple[list[Any] | None, bool]:
        """Commands that all go to the node of the first one's slot: (replies, False); (None, dropped) when
        a redirect or a dropped connection (the map is refreshed then) must be handled the long way."""
        try:
            node = self._slots.node_of(self._slots.slot_of(commands[0]))
        except SlotNotCoveredError:
            return None, False
        try:
            # One try here (the connection is dropped on any failure); a second, if safe, goes the long way.
            replies = round_trip(self._node_conn(node), commands, raw, retry=False)
        except (redis.ConnectionError, redis.TimeoutError):
            self._slots.refresh()
            if not retry:
                raise
            return None, True
        # Only the keyed command can be redirected: if it was, it did not run (its WAIT, if any, is harmless).
        if isinstance(replies[0], MovedError):
            self._slots.moved(replies[0])  # the long way then goes straight to the new owner
        if isinstance(replies[0], (AskError, TryAgainError, ClusterDownError)):
            return None, False
        return replies, False

    def _plan(
        self,
        commands: list[tuple[Any, ...]],
        anchors: list[int],
        todo: list[int],
        asked: dict[int, ClusterNode],
    ) -> dict[ClusterNode, list[int]]:
        plan: dict[ClusterNode, list[int]] = defaultdict(list)
        slots: dict[int, ClusterNode] = {}
        for i in todo:
            a = anchors[i]
            node = asked.get(i)
            if node is None:
                node = slots.get(a)
                if node is None:
                    # A command across slots raises here (RedisClusterException): a bug to fix, not a 503.
                    slot = self._slots.slot_of(commands[a])
                    try:
                        node = slots[a] = self._slots.node_of(slot)
                    except SlotNotCoveredError as exc:  # no known owner: the map is refreshed, the buyer retries
                        self._slots.refresh()
                        raise PrimaryUnavailable(f"CLUSTERDOWN {exc}") from exc
            plan[node].append(i)
        return plan

    def _send_and_read(
        self,
        plan: dict[ClusterNode, list[int]],
        commands: list[tuple[Any, ...]],
        anchors: list[int],
        asked: dict[int, ClusterNode],
        replies: list[Any],
        raw: bool,
    ) -> dict[str, BaseException]:
        """Send every node its share, then read each node's replies into ``replies``; the nodes that failed."""
        failed: dict[str, BaseException] = {}
        sent: list[tuple[ClusterNode, Connection, list[int]]] = []
        # ASKING before each command an ASK sent here (not before its keyless follower: that one was not asked).
        asking = {i for i in asked if anchors[i] == i}
        try:
            for node, idxs in plan.items():
                conn = self._node_conn(node)
                wire: list[tuple[Any, ...]] = []
                for i in idxs:
                    wire += [("ASKING",), commands[i]] if i in asking else [commands[i]]
                try:
                    conn.connect()
                    conn.send_packed_command(conn.pack_commands(wire), check_health=False)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    conn.disconnect()
                    failed[node.name] = exc
                    continue
                sent.append((node, conn, idxs))
            for node, conn, idxs in sent:
                try:
                    for i in idxs:
                        if i in asking:
                            read_reply(conn, False)  # ASKING's OK
                        replies[i] = read_reply(conn, raw)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    conn.disconnect()
                    failed[node.name] = exc
        except BaseException:
            # Anything else may leave replies unread on a socket: start every connection clean next time.
            for _node, conn, _ in sent:
                conn.disconnect()
            raise
        return failed


def _anchors(commands: list[tuple[Any, ...]]) -> list[int]:
    """For each command, the index of the one whose node it goes to: itself, or for a keyless one the one before."""
    out: list[int] = []
    for i, command in enumerate(commands):
        if command_name(command) not in KEYLESS_COMMANDS:
            out.append(i)
        elif out:
            out.append(out[-1])
        else:
            raise ValueError(f"{command_name(command)} cannot come first: it goes where the command before it went")
    return out
