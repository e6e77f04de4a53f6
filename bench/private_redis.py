"""A private redis-server on a free port for benchmarks that measure Redis itself (memory, CPU per command)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from bench.common import free_port


@contextmanager
def private_redis(replica_of: str | None = None) -> Iterator[str]:
    """Start ``redis-server`` (no persistence, noeviction) on a free 127.0.0.1 port; yields its URL, then stops it.

    Why not the shared Redis: ``INFO memory`` and ``INFO commandstats`` are server-wide, and other work on the
    machine would be measured along with ours. ``replica_of``: the URL of a private primary this one replicates.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: apt-get install redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="flashdeal-redis-")
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--maxmemory-policy", "noeviction", "--dir", workdir]
    if replica_of is not None:
        primary = redis.Redis.from_url(replica_of).connection_pool.connection_kwargs
        cmd += ["--replicaof", str(primary["host"]), str(primary["port"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                if replica_of is None or client.info("replication").get("master_link_status") == "up":
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica of {replica_of} did not sync")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def private_pair() -> Iterator[str]:
    """A private primary with one replica in sync; yields the primary's URL."""
    with private_redis() as primary, private_redis(replica_of=primary):
        yield primary
