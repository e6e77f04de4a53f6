"""Redis clients built from settings (text for the gate and cache, bytes for sessions)."""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from redis.connection import Connection

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
    the ~25 µs the connection itself needs (README, "Why the order path talks to a connection").
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
        conn = self._conn()
        try:
            conn.send_command(*args, check_health=False)
            return conn.read_response(disable_decoding=raw)
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            if not retry:
                raise
            conn.send_command(*args, check_health=False)
            return conn.read_response(disable_decoding=raw)
        except redis.ResponseError:
            raise  # an error reply was read in full: the connection is still in step
        except BaseException:
            # Anything else may leave a reply unread on the socket: start clean next time.
            conn.disconnect()
            raise
