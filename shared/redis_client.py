"""Redis clients built from settings (text for the gate and cache, bytes for sessions)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import redis
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError

from shared.settings import Settings


def text_client(settings: Settings) -> redis.Redis:
    """Client that decodes replies to str: gate, cache, outbox."""
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
        retry_on_timeout=True,
    )


def bytes_client(settings: Settings) -> redis.Redis:
    """Client that returns bytes: Flask-Session stores msgpack blobs."""
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30, socket_keepalive=True)


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
                conn.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(conn.read_response(disable_decoding=raw))
                    except redis.ResponseError as exc:
                        # An error reply was read in full: the connection is still in step.
                        if not errors_as_values:
                            self._drain(conn, len(commands) - len(replies) - 1)
                            raise
                        replies.append(exc)
                return replies
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                if not retry or attempt == 2:
                    raise
            except redis.ResponseError:
                raise
            except BaseException:
                # Anything else may leave replies unread on the socket: start clean next time.
                conn.disconnect()
                raise
        raise AssertionError("unreachable")

    def scripts(self, *calls: tuple[Script, list[str], list[Any]]) -> list[Any]:
        """Run registered scripts in one round trip (EVALSHA); any that Redis forgot are sent again as EVAL.

        Safe against double effects: a NOSCRIPT reply means that call did not run. Error replies
        other than NOSCRIPT are raised.
        """
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
        replies = self.pipeline(*commands)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                # Redis lost its script cache (SCRIPT FLUSH, restart): EVAL loads it again.
                script, keys, args = calls[i]
                replies[i] = self.call("EVAL", script.script, len(keys), *keys, *args)
            elif isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    @staticmethod
    def _drain(conn: Connection, n: int) -> None:
        """Read and drop ``n`` pending replies so the connection stays in step."""
        for _ in range(n):
            with contextlib.suppress(redis.ResponseError):
                conn.read_response()
