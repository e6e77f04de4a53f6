"""The wire level DirectCalls shares between its routes: one round trip, one reply, a command's name."""

from __future__ import annotations

from typing import Any

import redis
from redis.connection import Connection

# Commands without a key go where the command before them went: WAIT must ask the node that took the write.
KEYLESS_COMMANDS = frozenset({"WAIT", "PING", "TIME"})


def round_trip(conn: Connection, commands: list[tuple[Any, ...]], raw: bool, retry: bool) -> list[Any]:
    """Send ``commands`` in one write and read their replies; a dropped connection is tried once more if ``retry``."""
    packed = conn.pack_commands(commands)
    for attempt in (1, 2):
        try:
            # Why connect() first: send_packed_command connects by itself when needed, but through the
            # base class's connect_check_health, which skips SentinelManagedConnection.connect (where the
            # current primary is asked of the sentinels) and would dial the default localhost:6379.
            # connect() returns at once on an open connection.
            conn.connect()
            conn.send_packed_command(packed, check_health=False)
            return [read_reply(conn, raw) for _ in commands]
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            if not retry or attempt == 2:
                raise
        except BaseException:
            # Anything else may leave replies unread on the socket: start clean next time.
            conn.disconnect()
            raise
    raise AssertionError("unreachable")


def read_reply(conn: Connection, raw: bool) -> Any:
    """One reply; an error reply (read in full: the connection is still in step) as its exception object."""
    try:
        return conn.read_response(disable_decoding=raw)
    except redis.ResponseError as exc:
        return exc


def command_name(command: tuple[Any, ...]) -> str:
    """A command's name in capitals."""
    head = command[0]
    return (head.decode() if isinstance(head, bytes) else str(head)).upper()
