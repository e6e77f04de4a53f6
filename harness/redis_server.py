"""A private redis-server on a free port: fault tests change its policy or crash it, benchmarks measure it alone."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis

from harness.ports import HOST, free_port
from harness.processes import kill_process, stop_process
from harness.waits import wait_for


def redis_server_binary() -> str | None:
    """redis-server on PATH."""
    return shutil.which("redis-server")


class PrivateRedis:
    """One redis-server of our own (no persistence, noeviction); ``restart_empty`` is a crash that loses all.

    ``args`` come last, so they override the defaults (``--appendonly yes``, ``--replicaof HOST PORT``).
    """

    def __init__(self, workdir: Path, args: Sequence[str] = (), binary: str | None = None) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.binary = binary or redis_server_binary() or "redis-server"
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        """Start the server and wait until it answers PING."""
        cmd = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        cmd += ["--maxmemory-policy", "noeviction", "--dir", str(self.workdir), *self.args]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        proc = self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited with {proc.returncode}")
            try:
                if not client.ping():
                    return False
                # A replica counts as started once its link to the primary is up (the initial sync is done).
                return "--replicaof" not in self.args or client.info("replication").get("master_link_status") == "up"
            except redis.ConnectionError:
                return False

        wait_for(answers, 10, f"redis-server on {self.port} did not answer")
        return self

    def kill(self) -> None:
        """SIGKILL the server (only the one this object started)."""
        if self.proc is not None:
            kill_process(self.proc)

    def stop(self) -> None:
        """Shut the server down (SIGTERM, SIGKILL after 10 s)."""
        if self.proc is not None:
            stop_process(self.proc)

    def restart_empty(self) -> None:
        """A crash and a restart without persistence: every key is gone."""
        self.kill()
        self.start()


@contextmanager
def private_redis(replica_of: str | None = None) -> Iterator[str]:
    """A private redis-server in a temporary directory; yields its URL, then stops it and removes the directory.

    Why not the shared Redis for benchmarks: ``INFO memory`` and ``INFO commandstats`` are server-wide, and other
    work on the machine would be measured along with ours. ``replica_of``: the URL of a private primary to replicate.
    """
    if redis_server_binary() is None:
        raise SystemExit("redis-server is missing: apt-get install redis-server")
    workdir = Path(tempfile.mkdtemp(prefix="flashdeal-redis-"))
    args: list[str] = []
    if replica_of is not None:
        primary = redis.Redis.from_url(replica_of).connection_pool.connection_kwargs
        args = ["--replicaof", str(primary["host"]), str(primary["port"])]
    server = PrivateRedis(workdir, args).start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def private_pair() -> Iterator[str]:
    """A private primary with one replica in sync; yields the primary's URL."""
    with private_redis() as primary, private_redis(replica_of=primary):
        yield primary
