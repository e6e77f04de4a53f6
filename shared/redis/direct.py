"""DirectCalls: the hot paths' per-thread redis-py ``Connection``, without the client layer."""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

import redis
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError

from shared.redis.base import Client
from shared.redis.errors import PrimaryUnavailable, is_unavailable_reply
from shared.redis.wire import round_trip


class Route(Protocol):
    """How commands reach the servers of one client (one connection, or one per cluster node)."""

    # True when every key lives on one server, so one MGET can read any set of keys.
    one_server: bool

    def exchange(self, commands: list[tuple[Any, ...]], raw: bool, retry: bool) -> list[Any]:
        """Send ``commands``, read every reply (error replies as exception objects), in order."""
        ...


class OneServer:
    """The route of a client with one server (single, and the primary Sentinel names): one connection a thread."""

    one_server = True

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._new = lambda: pool.connection_class(**pool.connection_kwargs)
        self._local = threading.local()

    def _conn(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        # A connection made before a fork belongs to the parent: never share its socket.
        if conn is None or self._local.pid != os.getpid():
            conn = self._local.conn = self._new()
            self._local.pid = os.getpid()
        return conn

    def exchange(self, commands: list[tuple[Any, ...]], raw: bool, retry: bool) -> list[Any]:
        """One round trip on this thread's connection."""
        replies = round_trip(self._conn(), commands, raw, retry)
        if any(getattr(reply, "status_code", None) == "READONLY" for reply in replies):
            self._conn().disconnect()  # a demoted primary: reconnect through the sentinels next time
        return replies


class DirectCalls:
    """One redis-py ``Connection`` per thread (per node and thread on a cluster), without the client layer.

    Why not ``client.execute_command``: on this VM redis-py's client layer (pool checkout and
    release, retry wrapper, observability hooks) costs 50-80 µs of CPU per command on top of
    the ~25 µs the connection itself needs (docs/architecture.md, "Fast path"); RedisCluster adds
    its slot lookup and redirect loop on top of that (docs/topologies.md).
    The order path makes two commands per order, so it uses this. AUTH, SELECT, TLS and the
    RESP parsing (hiredis) stay redis-py's: we only skip the per-call bookkeeping. The client's
    topology gives the route (shared/redis/cluster_router.py on a cluster).
    """

    def __init__(self, client: Client) -> None:
        from shared.redis.registry import topology_of  # here: the topologies build their routes from this module

        self._route: Route = topology_of(client).route(client)

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
        if self._route.one_server:
            return list(self.call("MGET", *keys))
        return self._exchange([("GET", key) for key in keys], raw=False, retry=True)

    def _exchange(
        self, commands: list[tuple[Any, ...]], *, raw: bool, retry: bool, errors_as_values: bool = False
    ) -> list[Any]:
        replies = self._route.exchange(commands, raw, retry)
        for reply in replies:
            if is_unavailable_reply(reply):
                # Every reply is read: the connection is in step. A node that is no primary (or one
                # without its replicas) ran nothing: the caller answers 503 and the buyer retries.
                raise PrimaryUnavailable(str(reply))
            if not errors_as_values and isinstance(reply, redis.ResponseError):
                raise reply
        return replies

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
