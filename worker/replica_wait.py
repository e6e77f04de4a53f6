"""The connection a drain reads a batch on and sends ``WAIT`` on; the answer is read just before the commit."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from redis.cluster import RedisCluster
from redis.connection import Connection, ConnectionPool

from shared.redis_client import Client


class ReplicaWait:
    """A connection from the client's own pool to the primary that holds ``key`` (its shard's, on a cluster).

    Why a connection of its own and not ``DirectCalls``: WAIT must follow the write of the connection that read
    the batch, and its reply is read only once the batch is written to PostgreSQL, just before COMMIT, so the
    replicas' round trip overlaps the database's work instead of adding to it (bench.bench_drain, part 4: a
    WAIT read at once cost up to a quarter of the drain's rate on this busy 2-core machine). DirectCalls reads
    every reply of a round trip before it returns. Why no retry: a drain that fails is run again (task retry,
    beat each second) and its entries wait, pending, in the stream.
    """

    def __init__(self, client: Client, key: str, replicas: int, timeout_ms: int) -> None:
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(key)
            self.pool: ConnectionPool = client.get_redis_connection(node).connection_pool
        else:
            self.pool = client.connection_pool
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.conn: Connection | None = None
        self._waiting = False  # a WAIT was sent and its reply not read yet

    def __enter__(self) -> ReplicaWait:
        self.conn = self.pool.get_connection()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.conn is not None
        if exc_type is not None or self._waiting:
            self.conn.disconnect()  # a reply may be unread on the socket: the next user starts clean
        self.pool.release(self.conn)
        self.conn = None

    def call(self, *args: Any) -> Any:
        """Send one command and read its (unparsed) reply; an error reply raises as in redis-py."""
        assert self.conn is not None
        self.conn.send_command(*args)
        return self.conn.read_response()

    def send_wait(self) -> None:
        """Ask for the replicas' acknowledgement of everything this connection wrote so far; do not wait yet."""
        assert self.conn is not None
        self.conn.send_command("WAIT", self.replicas, self.timeout_ms)
        self._waiting = True

    def acked(self) -> int:
        """The WAIT's answer: how many replicas hold what this connection wrote (blocks up to the timeout)."""
        assert self.conn is not None and self._waiting
        reply = int(self.conn.read_response())
        self._waiting = False
        return reply
