"""Every Redis client of flashdeal, built from settings for the configured topology.

``single``: one Redis at ``REDIS_URL``. ``sentinel``: the primary that Redis Sentinel names for
``REDIS_SENTINEL_MASTER``; redis-py's ``SentinelConnectionPool`` asks the sentinels on every
(re)connect, so each client, and each ``DirectCalls`` connection made from its pool, follows
the primary through a failover. A cluster topology is one more branch in ``_connect``.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import quote, unquote, urlparse

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError
from redis.retry import Retry
from redis.sentinel import Sentinel

from shared.settings import ConfigError, Settings

# Error replies that mean "this node cannot take writes now", not "this command is wrong": a
# primary without enough replicas (min-replicas-to-write), a replica (a demoted primary), a
# primary that lost its master link. Answered like a dropped connection: 503, try again.
UNAVAILABLE_REPLIES = ("NOREPLICAS", "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN")


class PrimaryUnavailable(redis.ConnectionError):
    """The node refused a write because it is not (or not yet) a primary that may take it."""


def is_unavailable_reply(exc: BaseException) -> bool:
    """True for an error reply that a failover or a missing replica explains (see UNAVAILABLE_REPLIES)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(UNAVAILABLE_REPLIES)


def _connect(settings: Settings, **options: Any) -> redis.Redis:
    """The one place a Redis client is made: the topology decides how it finds its server."""
    options = {
        "health_check_interval": 30,
        "socket_keepalive": True,
        "socket_connect_timeout": 2,
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
            settings.redis_sentinel_master,
            db=int(url.path.lstrip("/") or 0),
            username=unquote(url.username) if url.username else None,
            password=unquote(url.password) if url.password else None,
            **options,
        )
    return redis.Redis.from_url(settings.redis_url, **options)


def text_client(settings: Settings, **options: Any) -> redis.Redis:
    """Client that decodes replies to str: gate, cache, outbox (``options`` are redis-py's)."""
    return _connect(settings, decode_responses=True, retry_on_timeout=True, **options)


def bytes_client(settings: Settings) -> redis.Redis:
    """Client that returns bytes: Flask-Session stores msgpack blobs."""
    return _connect(settings)


def limits_storage_uri(settings: Settings) -> str:
    """Flask-Limiter's storage URI (the ``limits`` library) for the same Redis."""
    if settings.redis_topology == "sentinel":
        url = urlparse(settings.redis_url)
        auth = f":{quote(unquote(url.password), safe='')}@" if url.password else ""
        hosts = ",".join(f"{h}:{p}" for h, p in settings.redis_sentinels)
        return f"redis+sentinel://{auth}{hosts}/{settings.redis_sentinel_master}"
    return settings.redis_url


def limits_storage_options(settings: Settings) -> dict[str, Any]:
    """Options of that storage: with Sentinel, counters are read from the primary, as they are written."""
    if settings.redis_topology == "sentinel":
        db = int(urlparse(settings.redis_url).path.lstrip("/") or 0)
        return {"use_replicas": False, "db": db, "socket_connect_timeout": 2}
    return {}


def celery_result_backend(settings: Settings) -> str:
    """Celery's result backend: the flashdeal Redis (through the sentinels in that topology)."""
    if settings.redis_topology == "sentinel":
        db = urlparse(settings.redis_url).path.lstrip("/") or "0"
        return ";".join(f"sentinel://{h}:{p}/{db}" for h, p in settings.redis_sentinels)
    # With a Redis broker the results share it; any other broker keeps them in the flashdeal Redis.
    return settings.celery_broker_url if settings.celery_broker_url.startswith("redis") else settings.redis_url


def celery_result_backend_options(settings: Settings) -> dict[str, Any]:
    """Transport options of that backend (the master name with Sentinel)."""
    return {"master_name": settings.redis_sentinel_master} if settings.redis_topology == "sentinel" else {}


def server_policy(client: redis.Redis) -> dict[str, str]:
    """The server's persistence and eviction settings (``CONFIG GET``; empty where CONFIG is not allowed)."""
    try:
        got = client.config_get("maxmemory-policy")
        got |= client.config_get("appendonly")
        got |= client.config_get("save")
    except redis.ResponseError:  # CONFIG disabled or renamed (managed Redis): nothing to report
        return {}
    return {_text(k): _text(v) for k, v in got.items()}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def eviction_problem(client: redis.Redis) -> str | None:
    """Why this Redis could lose gate keys on its own (``maxmemory-policy`` not ``noeviction``), or None."""
    policy = server_policy(client).get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        return f"Redis maxmemory-policy is {policy!r}: it may evict stock and order keys; set it to 'noeviction'"
    return None


def refuse_evicting_redis(settings: Settings) -> None:
    """Start-up check of web nodes and workers: raise ConfigError for a Redis that may evict gate keys.

    A Redis that does not answer yet is let through (it is checked again by /readyz, and a
    process must be able to start before its Redis does).
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


class DirectCalls:
    """One redis-py ``Connection`` per thread, used without the client and pool layer.

    Why not ``client.execute_command``: on this VM redis-py's client layer (pool checkout and
    release, retry wrapper, observability hooks) costs 50-80 µs of CPU per command on top of
    the ~25 µs the connection itself needs (README, "Fast path").
    The order path makes two commands per order, so it uses this. AUTH, SELECT, TLS and the
    RESP parsing (hiredis) stay redis-py's: we only skip the per-call bookkeeping.
    """

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

    def call(self, *args: str | int | bytes, raw: bool = False, retry: bool = True) -> Any:
        """Send one command and read its reply; ``raw`` skips decoding (binary values).

        A dropped connection (Redis restarted, idle socket closed) is reopened and the command
        sent once more when ``retry``: only for commands that are safe to repeat.
        """
        return self._exchange([args], raw=raw, retry=retry)[0]

    def pipeline(self, *commands: tuple[str | int | bytes, ...], retry: bool = True) -> list[Any]:
        """Several read commands in one round trip; error replies come back as exception objects."""
        return self._exchange(list(commands), raw=False, retry=retry, errors_as_values=True)

    def _exchange(
        self, commands: list[tuple[Any, ...]], *, raw: bool, retry: bool, errors_as_values: bool = False
    ) -> list[Any]:
        conn = self._conn()
        packed = conn.pack_commands(commands)
        for attempt in (1, 2):
            try:
                # Why connect() first: send_packed_command connects by itself when needed, but through the
                # base class's connect_check_health, which skips SentinelManagedConnection.connect (where the
                # current primary is asked of the sentinels) and would dial the default localhost:6379.
                # connect() returns at once on an open connection.
                conn.connect()
                conn.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(conn.read_response(disable_decoding=raw))
                    except redis.ResponseError as exc:
                        # An error reply was read in full: the connection is still in step.
                        replies.append(exc)
                break
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                if not retry or attempt == 2:
                    raise
            except BaseException:
                # Anything else may leave replies unread on the socket: start clean next time.
                conn.disconnect()
                raise
        for reply in replies:
            if is_unavailable_reply(reply):
                # Every reply is read: the connection is in step. A node that is no primary (or one
                # without its replicas) ran nothing: the caller answers 503 and the buyer retries.
                if str(reply).startswith("READONLY"):
                    conn.disconnect()  # a demoted primary: reconnect through the sentinels next time
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
