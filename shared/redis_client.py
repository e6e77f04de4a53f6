"""Every Redis client of flashdeal, built from settings for the configured topology.

``single``: one Redis at ``REDIS_URL``. ``sentinel``: the primary that Redis Sentinel names for
``REDIS_SENTINEL_MASTER``; redis-py's ``SentinelConnectionPool`` asks the sentinels on every
(re)connect, so each client, and each ``DirectCalls`` connection made from its pool, follows
the primary through a failover. ``cluster``: redis-py's ``RedisCluster`` on ``REDIS_CLUSTER_NODES``;
``DirectCalls`` sends each command to the primary of its key's slot, as that client's slot map says.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from typing import Any, TypeAlias
from urllib.parse import unquote, urlparse

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import PRIMARY, ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Connection
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry
from redis.sentinel import Sentinel

from shared.settings import ConfigError, Settings

log = logging.getLogger(__name__)

# Error replies that mean "this node cannot take writes now", not "this command is wrong": a
# primary without enough replicas (min-replicas-to-write), a replica (a demoted primary), a
# primary that lost its master link. Answered like a dropped connection: 503, try again.
# On a cluster: a slot whose keys are being migrated (TRYAGAIN), a cluster that lost a slot's
# primary and has not promoted its replica yet (CLUSTERDOWN).
UNAVAILABLE_REPLIES = ("NOREPLICAS", "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN")

# What every client is: one Redis (single, sentinel) or a cluster client (cluster).
Client: TypeAlias = "redis.Redis | RedisCluster"


class PrimaryUnavailable(redis.ConnectionError):
    """The node refused a write because it is not (or not yet) a primary that may take it."""


def is_unavailable_reply(exc: BaseException) -> bool:
    """True for an error reply that a failover or a missing replica explains (see UNAVAILABLE_REPLIES)."""
    # redis-py strips the code of the replies it has a class for (READONLY, LOADING, TRYAGAIN, ...) from
    # the message and keeps it in status_code; NOREPLICAS has no class and keeps it in the message.
    if not isinstance(exc, redis.ResponseError):
        return False
    return (exc.status_code or str(exc).partition(" ")[0]) in UNAVAILABLE_REPLIES


def _connect(settings: Settings, **options: Any) -> Client:
    """The one place a Redis client is made: the topology decides how it finds its server."""
    options = {
        "health_check_interval": 30,
        "socket_keepalive": True,
        "socket_connect_timeout": 2,
        # Why a read timeout: without one a frozen node (a partition, a host that stopped answering) holds
        # every thread that asked it until TCP gives up (hours), and a web node runs out of threads for the
        # healthy shards too. 5 s is far above any command of ours (WAIT is bounded by ORDER_ACK_TIMEOUT_MS).
        "socket_timeout": 5,
        # Why short: redis-py's default (3 tries, backoff from 1 s up to 10 s) holds a buyer's request
        # for up to 7 s while a primary is down; 3 tries within ~0.4 s ride over a dropped connection, and
        # during a failover the buyer gets a quick 503 + Retry-After instead (workers retry their tasks).
        "retry": Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.05), 3),
        **options,
    }
    if settings.redis_topology == "sentinel":
        url = urlparse(settings.redis_url)
        # sentinel_kwargs: timeouts for asking the sentinels only (given as plain kwargs they would apply
        # to the primary's connections too, and cut a WAIT or a slow command short).
        sentinel = Sentinel(
            list(settings.redis_sentinels), sentinel_kwargs={"socket_connect_timeout": 1, "socket_timeout": 1}
        )
        # REDIS_URL still gives the database and the credentials of the primary.
        return sentinel.master_for(
            settings.redis_sentinel_master, db=int(url.path.lstrip("/") or 0), **credentials(settings), **options
        )
    if settings.redis_topology == "cluster":
        retry = options.pop("retry")
        options.pop("retry_on_timeout", None)  # deprecated for cluster nodes: their retry covers timeouts already
        # REDIS_URL gives the credentials only (a cluster has database 0 alone). RedisCluster refuses a
        # ``retry`` for its nodes' connections (it retries itself, on a refreshed slot map): ours goes there.
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in settings.redis_cluster_nodes],
            **credentials(settings),
            retry=retry,
            # A shard without its primary (between a SIGKILL and its replica's promotion) must not stop
            # the client from starting or from serving the other shards.
            require_full_coverage=False,
            **options,
        )
    return redis.Redis.from_url(settings.redis_url, **options)


def text_client(settings: Settings, **options: Any) -> Client:
    """Client that decodes replies to str: gate, cache, outbox (``options`` are redis-py's)."""
    return _connect(settings, decode_responses=True, retry_on_timeout=True, **options)


def bytes_client(settings: Settings) -> Client:
    """Client that returns bytes: Flask-Session stores msgpack blobs."""
    return _connect(settings)


def credentials(settings: Settings) -> dict[str, str | None]:
    """REDIS_URL's ACL user and password (decoded), for the clients that do not take the URL itself."""
    url = urlparse(settings.redis_url)
    return {
        "username": unquote(url.username) if url.username else None,
        "password": unquote(url.password) if url.password else None,
    }


def limits_storage_uri(settings: Settings) -> str:
    """Flask-Limiter's storage URI (the ``limits`` library) for the same Redis; credentials go in the options."""
    if settings.redis_topology == "sentinel":
        hosts = ",".join(f"{h}:{p}" for h, p in settings.redis_sentinels)
        return f"redis+sentinel://{hosts}/{settings.redis_sentinel_master}"
    if settings.redis_topology == "cluster":
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in settings.redis_cluster_nodes)
    return settings.redis_url


def limits_storage_options(settings: Settings) -> dict[str, Any]:
    """Options of that storage: with Sentinel, counters are read from the primary, as they are written.

    Why the credentials here and not in the URI: ``limits`` reads a URI's user and password without
    decoding them (a ``%40`` stays three characters), and with Sentinel it would also send them to the
    sentinels, which _connect never does (``sentinel_kwargs`` clears them for the sentinels).
    """
    auth = {k: v for k, v in credentials(settings).items() if v is not None}
    if settings.redis_topology == "sentinel":
        db = int(urlparse(settings.redis_url).path.lstrip("/") or 0)
        sentinels = {"username": None, "password": None, "socket_connect_timeout": 1, "socket_timeout": 1}
        return {"use_replicas": False, "db": db, "socket_connect_timeout": 2, "sentinel_kwargs": sentinels, **auth}
    if settings.redis_topology == "cluster":
        return {"socket_connect_timeout": 2, "require_full_coverage": False, **auth}
    return {}


def celery_result_backend(settings: Settings) -> str:
    """Celery's result backend: the flashdeal Redis (through the sentinels in that topology).

    On a cluster: ``rpc://``, the replies travel back over the broker (RabbitMQ), because Celery's
    Redis backend cannot use a Redis Cluster. Only the reconcile task has a result anyway
    (``task_ignore_result`` for every other), and only its caller waits for it.
    """
    if settings.redis_topology == "cluster":
        return "rpc://"
    if settings.redis_topology == "sentinel":
        db = urlparse(settings.redis_url).path.lstrip("/") or "0"
        return ";".join(f"sentinel://{h}:{p}/{db}" for h, p in settings.redis_sentinels)
    # With a Redis broker the results share it; any other broker keeps them in the flashdeal Redis.
    return settings.celery_broker_url if settings.celery_broker_url.startswith("redis") else settings.redis_url


def celery_result_backend_options(settings: Settings) -> dict[str, Any]:
    """Transport options of that backend (the master name with Sentinel)."""
    return {"master_name": settings.redis_sentinel_master} if settings.redis_topology == "sentinel" else {}


def server_policy(client: Client, node: ClusterNode | None = None) -> dict[str, str]:
    """The server's persistence and eviction settings (``CONFIG GET``; empty where CONFIG is not allowed).

    On a cluster: those of ``node``, or of the client's default node when None (``eviction_problem``
    asks every node).
    """
    target = {} if node is None else {"target_nodes": node}
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
    (known down) and nodes that do not answer are left for the next check.
    """
    nodes: list[ClusterNode | None] = client.get_nodes() if isinstance(client, RedisCluster) else [None]
    for node in nodes:
        if node is not None and node.name in skip:
            continue
        try:
            policy = server_policy(client, node).get("maxmemory-policy")
        except (redis.ConnectionError, redis.TimeoutError):
            if node is None:
                raise
            continue  # a cluster node that is down or unreachable (a shard failing over)
        if policy is not None and policy != "noeviction":
            where = f" on {node.name}" if node is not None else ""
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
    get 503 + Retry-After meanwhile, as on one Redis). An evicting node is an error anywhere.
    """
    down: dict[str, str] = {}  # node name -> its role
    if isinstance(client, RedisCluster):
        primaries_up = 0
        for node in client.get_nodes():
            try:
                client.ping(target_nodes=node)
                primaries_up += node.server_type == PRIMARY
            except redis.RedisError:
                down[node.name] = str(node.server_type)
        if not primaries_up:
            return "error: no cluster primary answers"
    else:
        client.ping()
    problem = eviction_problem(client, skip=frozenset(down))
    if problem:
        return f"error: {problem}"
    return f"degraded: {', '.join(f'{n} ({r})' for n, r in down.items())} not answering" if down else "ok"


def refuse_evicting_redis(settings: Settings) -> None:
    """Start-up check of web nodes and workers: raise ConfigError for a Redis that may evict gate keys.

    A Redis that does not answer yet is let through (it is checked again by /readyz, and a
    process must be able to start before its Redis does). Not so a cluster none of whose nodes
    answers: RedisCluster reads the slot map when it is made, and raises (README, "Scale-out").
    """
    client = text_client(settings)
    try:
        problem = eviction_problem(client)
    except redis.RedisError:
        return
    finally:
        client.close()
    if problem:
        raise ConfigError(problem)


# Commands without a key go where the command before them went: WAIT must ask the node that took the write.
KEYLESS_COMMANDS = frozenset({"WAIT", "PING", "TIME"})
# On a cluster: rounds of MOVED/ASK/TRYAGAIN answered before a call gives up (PrimaryUnavailable), and
# the pause before sending a TRYAGAIN (a slot whose keys are half migrated) again.
CLUSTER_ROUNDS = 5
TRYAGAIN_PAUSE_S = 0.02
REFRESH_EVERY_S = 0.1  # the slot map is asked for again at most this often (DirectCalls._refresh_map)


class DirectCalls:
    """One redis-py ``Connection`` per thread (per node and thread on a cluster), without the client layer.

    Why not ``client.execute_command``: on this VM redis-py's client layer (pool checkout and
    release, retry wrapper, observability hooks) costs 50-80 µs of CPU per command on top of
    the ~25 µs the connection itself needs (README, "Fast path"); RedisCluster adds its slot
    lookup and redirect loop on top of that (README, "Scale-out").
    The order path makes two commands per order, so it uses this. AUTH, SELECT, TLS and the
    RESP parsing (hiredis) stay redis-py's: we only skip the per-call bookkeeping. On a cluster
    the slot map stays redis-py's too (the client's ``nodes_manager``): we read it to pick the
    node of each command and update it from MOVED replies as RedisCluster does.
    """

    def __init__(self, client: Client) -> None:
        self._cluster = client if isinstance(client, RedisCluster) else None
        if not isinstance(client, RedisCluster):
            pool = client.connection_pool
            self._new = lambda: pool.connection_class(**pool.connection_kwargs)
        self._local = threading.local()
        self._refreshed_at = 0.0  # when the slot map was last asked for (cluster only)

    def _conn(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        # A connection made before a fork belongs to the parent: never share its socket.
        if conn is None or self._local.pid != os.getpid():
            conn = self._local.conn = self._new()
            self._local.pid = os.getpid()
        return conn

    def call(self, *args: str | int | bytes, raw: bool = False, retry: bool = True) -> Any:
        """Send one command and read its reply; ``raw`` skips decoding (binary values).

        A dropped connection (Redis restarted, idle socket closed) is reopened and the command
        sent once more when ``retry``: only for commands that are safe to repeat.
        """
        return self._exchange([args], raw=raw, retry=retry)[0]

    def pipeline(self, *commands: tuple[str | int | bytes, ...], retry: bool = True) -> list[Any]:
        """Several commands in one round trip (one per node, all at once, on a cluster); replies in order.

        Error replies come back as exception objects. On a cluster each command must keep to one
        slot (the server refuses it with CROSSSLOT otherwise); a command without a key (WAIT)
        goes to the node of the command before it.
        """
        return self._exchange(list(commands), raw=False, retry=retry, errors_as_values=True)

    def get_many(self, keys: list[str]) -> list[Any]:
        """The values of many keys (None where missing) in one round trip: one per node on a cluster.

        One MGET on one Redis (one reply to parse rather than one per key); on a cluster an MGET
        may not cross slots, and keys of different deals never share one, so each key is a GET.
        """
        if not keys:
            return []
        if self._cluster is None:
            return list(self.call("MGET", *keys))
        return self._exchange([("GET", key) for key in keys], raw=False, retry=True)

    def _exchange(
        self, commands: list[tuple[Any, ...]], *, raw: bool, retry: bool, errors_as_values: bool = False
    ) -> list[Any]:
        if self._cluster is not None:
            replies = self._cluster_exchange(self._cluster, commands, raw, retry)
        else:
            replies = self._round_trip(self._conn(), commands, raw, retry)
        for reply in replies:
            if is_unavailable_reply(reply):
                # Every reply is read: the connection is in step. A node that is no primary (or one
                # without its replicas) ran nothing: the caller answers 503 and the buyer retries.
                if self._cluster is None and getattr(reply, "status_code", None) == "READONLY":
                    self._conn().disconnect()  # a demoted primary: reconnect through the sentinels next time
                raise PrimaryUnavailable(str(reply))
            if not errors_as_values and isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    @staticmethod
    def _round_trip(conn: Connection, commands: list[tuple[Any, ...]], raw: bool, retry: bool) -> list[Any]:
        packed = conn.pack_commands(commands)
        for attempt in (1, 2):
            try:
                # Why connect() first: send_packed_command connects by itself when needed, but through the
                # base class's connect_check_health, which skips SentinelManagedConnection.connect (where the
                # current primary is asked of the sentinels) and would dial the default localhost:6379.
                # connect() returns at once on an open connection.
                conn.connect()
                conn.send_packed_command(packed, check_health=False)
                return [_read_reply(conn, raw) for _ in commands]
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                if not retry or attempt == 2:
                    raise
            except BaseException:
                # Anything else may leave replies unread on the socket: start clean next time.
                conn.disconnect()
                raise
        raise AssertionError("unreachable")

    # -- cluster -------------------------------------------------------------------------------------
    # Why by hand: RedisCluster.execute_command is the client layer we skip (README, "Scale-out"), and its
    # pipeline sends one node's commands after another's. Here every node's share goes out before any
    # reply is read, so a read across shards costs one round trip, not one per node.

    def _node_conn(self, cluster: RedisCluster, node: ClusterNode) -> Connection:
        conns: dict[str, Connection] | None = getattr(self._local, "conns", None)
        if conns is None or self._local.pid != os.getpid():
            conns = self._local.conns = {}
            self._local.pid = os.getpid()
        conn = conns.get(node.name)
        if conn is None:
            pool = cluster.get_redis_connection(node).connection_pool
            conn = conns[node.name] = pool.connection_class(**pool.connection_kwargs)
        return conn

    def _cluster_exchange(
        self, cluster: RedisCluster, commands: list[tuple[Any, ...]], raw: bool, retry: bool
    ) -> list[Any]:
        retried = False
        if commands and all(_name(c) in KEYLESS_COMMANDS for c in commands[1:]):
            # The hot path (a script and its WAIT, one command): one node, no plan to make.
            fast, dropped = self._one_node(cluster, commands, raw, retry)
            if fast is not None:
                return fast
            retried = dropped  # a dropped connection was the first try; the long way below is the second
        anchors = _anchors(commands)
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        asked: dict[int, ClusterNode] = {}  # command index -> the node an ASK sent it to (for this round)
        for _ in range(CLUSTER_ROUNDS):
            plan = self._plan(cluster, commands, anchors, todo, asked)
            failed = self._send_and_read(cluster, plan, commands, anchors, asked, replies, raw)
            again: set[int] = set()
            if failed:
                # A node died or went away: ask the cluster who serves its slots now (a promoted replica,
                # once the failover is through). Sent again only when safe to repeat, and only once.
                self._refresh_map(cluster)
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
                    # The slot has a new owner for good (migration done, failover): update the shared map.
                    cluster.nodes_manager.move_slot(reply)
                    again.add(i)
                elif isinstance(reply, AskError):
                    # The slot is being migrated and this key is already on the target: ask it there, this once.
                    next_asked[i] = cluster.get_node(host=reply.host, port=reply.port) or ClusterNode(
                        reply.host, reply.port
                    )
                    again.add(i)
                elif isinstance(reply, TryAgainError):
                    # Some of the keys are on the source and some on the target (mid-migration): nothing ran.
                    again.add(i)
                    pause = True
                elif isinstance(reply, ClusterDownError):
                    self._refresh_map(cluster)
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

    def _refresh_map(self, cluster: RedisCluster) -> None:
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
            cluster.nodes_manager.initialize()
        except (RedisClusterException, redis.RedisError):
            log.warning("the cluster's slot map could not be refreshed; the next error tries again", exc_info=True)

    def _one_node(
        self, cluster: RedisCluster, commands: list[tuple[Any, ...]], raw: bool, retry: bool
    ) -> tuple[list[Any] | None, bool]:
        """Commands that all go to the node of the first one's slot: (replies, False); (None, dropped) when
        a redirect or a dropped connection (the map is refreshed then) must be handled the long way."""
        try:
            node = cluster.nodes_manager.get_node_from_slot(_command_slot(cluster, commands[0]))
        except SlotNotCoveredError:
            return None, False
        try:
            # One try here (the connection is dropped on any failure); a second, if safe, goes the long way.
            replies = self._round_trip(self._node_conn(cluster, node), commands, raw, retry=False)
        except (redis.ConnectionError, redis.TimeoutError):
            self._refresh_map(cluster)
            if not retry:
                raise
            return None, True
        # Only the keyed command can be redirected: if it was, it did not run (its WAIT, if any, is harmless).
        if isinstance(replies[0], MovedError):
            cluster.nodes_manager.move_slot(replies[0])  # the long way then goes straight to the new owner
        if isinstance(replies[0], (AskError, TryAgainError, ClusterDownError)):
            return None, False
        return replies, False

    def _plan(
        self,
        cluster: RedisCluster,
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
                    slot = _command_slot(cluster, commands[a])
                    try:
                        node = slots[a] = cluster.nodes_manager.get_node_from_slot(slot)
                    except SlotNotCoveredError as exc:  # no known owner: the map is refreshed, the buyer retries
                        self._refresh_map(cluster)
                        raise PrimaryUnavailable(f"CLUSTERDOWN {exc}") from exc
            plan[node].append(i)
        return plan

    def _send_and_read(
        self,
        cluster: RedisCluster,
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
                conn = self._node_conn(cluster, node)
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
                            _read_reply(conn, False)  # ASKING's OK
                        replies[i] = _read_reply(conn, raw)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    conn.disconnect()
                    failed[node.name] = exc
        except BaseException:
            # Anything else may leave replies unread on a socket: start every connection clean next time.
            for _node, conn, _ in sent:
                conn.disconnect()
            raise
        return failed

    def scripts(self, *calls: tuple[Script, list[str], list[Any]]) -> list[Any]:
        """Run registered scripts in one round trip (EVALSHA); any that Redis forgot are sent again as EVAL.

        Safe against double effects: a NOSCRIPT reply means that call did not run. Error replies
        other than NOSCRIPT are raised.
        """
        return self._scripts(list(calls), [])[0]

    def script_then_wait(
        self, script: Script, keys: list[str], args: list[Any], replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        """Run one script, then ``WAIT replicas timeout_ms`` in the same round trip; (reply, replicas that acked).

        Why the same connection: WAIT waits for this connection's own last write. Why pipelined:
        a second round trip per order would cost more than the WAIT itself on a healthy replica.
        ``replicas`` 0 sends no WAIT and reports 0.
        """
        tail = [("WAIT", replicas, timeout_ms)] if replicas > 0 else []
        (reply,), waited = self._scripts([(script, keys, args)], tail)
        return reply, int(waited[0]) if waited else 0

    def _scripts(
        self, calls: list[tuple[Script, list[str], list[Any]]], tail: list[tuple[Any, ...]]
    ) -> tuple[list[Any], list[Any]]:
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
        replies = self.pipeline(*commands, *tail)
        replies, tail_replies = replies[: len(calls)], replies[len(calls) :]
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                # Redis lost its script cache (SCRIPT FLUSH, restart, a failover to a replica that
                # never loaded it): EVAL loads it again, and the tail (WAIT) follows that write.
                script, keys, args = calls[i]
                again = self.pipeline(("EVAL", script.script, len(keys), *keys, *args), *tail)
                replies[i], tail_replies = again[0], again[1:]
            if isinstance(replies[i], redis.ResponseError):
                raise replies[i]
        for reply in tail_replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies, tail_replies


def _read_reply(conn: Connection, raw: bool) -> Any:
    """One reply; an error reply (read in full: the connection is still in step) as its exception object."""
    try:
        return conn.read_response(disable_decoding=raw)
    except redis.ResponseError as exc:
        return exc


def _name(command: tuple[Any, ...]) -> str:
    head = command[0]
    return (head.decode() if isinstance(head, bytes) else str(head)).upper()


def _anchors(commands: list[tuple[Any, ...]]) -> list[int]:
    """For each command, the index of the one whose node it goes to: itself, or for a keyless one the one before."""
    out: list[int] = []
    for i, command in enumerate(commands):
        if _name(command) not in KEYLESS_COMMANDS:
            out.append(i)
        elif out:
            out.append(out[-1])
        else:
            raise ValueError(f"{_name(command)} cannot come first: it goes where the command before it went")
    return out


def _command_slot(cluster: RedisCluster, command: tuple[Any, ...]) -> int:
    """The hash slot of a command's keys (a script's first key; the server refuses a script across slots)."""
    if _name(command) in ("EVALSHA", "EVAL"):
        if int(command[2]) == 0:
            raise ValueError("a script without keys has no slot to run in")
        return key_slot(cluster.encoder.encode(command[3]))
    return cluster.determine_slot(*command)
