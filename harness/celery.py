"""Celery workers and beat as real processes (``celery -A worker ...``), each in its own group, logging to a file."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import redis

from harness.processes import kill_process, spawn, stop_process
from harness.waits import wait_log


def celery_command(*args: str) -> list[str]:
    """``celery -A worker ARGS`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "worker", *args]


def worker_args(name: str, queue: str, concurrency: int | None = None, include: str = "") -> list[str]:
    """``worker -n NAME@%h -Q QUEUE`` without mingle and gossip (startup in one second, not three)."""
    args = ["worker", "-n", f"{name}@%h", "-Q", queue, "--without-mingle", "--without-gossip"]
    if concurrency is not None:
        args += ["-c", str(concurrency)]
    if include:
        args += ["-I", include]
    return args


def start_worker(
    env: Mapping[str, str], name: str, logdir: Path, include: str = "", concurrency: int | None = None
) -> subprocess.Popen:
    """A worker node on ``env["CELERY_QUEUE"]`` (optionally with extra task modules), logging to logdir/NAME.log."""
    args = worker_args(name, env["CELERY_QUEUE"], concurrency, include)
    return spawn(celery_command(*args, "-l", "INFO"), env, logdir / f"{name}.log")


def unique_queue(prefix: str) -> str:
    """A queue no dev stack or other run listens to."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class CeleryProc:
    """One celery process (a worker node or beat) in its own process group, logging to a file."""

    def __init__(self, name: str, proc: subprocess.Popen, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    def text(self) -> str:
        """The log so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, timeout: float = 30.0) -> None:
        """Wait until needle appears in the log."""
        wait_log(self.log, needle, self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL the whole node (main process and pool children) at once."""
        kill_process(self.proc)

    def stop(self) -> None:
        """Warm shutdown, then SIGKILL if it lingers."""
        stop_process(self.proc)


class CeleryProcs:
    """Starts workers and beat on one queue of their own; ``close`` stops every one of them."""

    def __init__(self, tmp: Path, base_env: Mapping[str, str], queue: str) -> None:
        self.tmp = tmp
        self.base_env = dict(base_env)
        self.queue = queue
        self.started: list[CeleryProc] = []

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The base environment plus this queue and quick claims of abandoned entries."""
        env = dict(self.base_env)
        env.update(CELERY_QUEUE=self.queue, DRAIN_CLAIM_IDLE_MS="1000", PYTHONUNBUFFERED="1")
        env.update(extra or {})
        return env

    def _spawn(
        self, name: str, args: list[str], extra: dict[str, str] | None, launch: list[str] | None = None
    ) -> CeleryProc:
        log = self.tmp / f"{name}.log"
        proc = spawn([*(launch or []), *celery_command(*args, "--loglevel", "INFO", "-f", str(log))], self.env(extra))
        p = CeleryProc(name, proc, log)
        self.started.append(p)
        return p

    def worker(
        self, name: str, extra: dict[str, str] | None = None, wait: bool = True, launch: list[str] | None = None
    ) -> CeleryProc:
        """Start ``celery -A worker worker -n NAME@%h --pool prefork -c 1 -Q <queue>`` (through ``launch``, e.g.
        ``ip netns exec NS``)."""
        p = self._spawn(name, [*worker_args(name, self.queue, concurrency=1), "--pool", "prefork"], extra, launch)
        if wait:
            p.wait_for("ready.")
        return p

    def beat(self, extra: dict[str, str] | None = None) -> CeleryProc:
        """Start ``celery -A worker beat`` sending to this queue."""
        p = self._spawn("beat", ["beat"], extra)
        p.wait_for("beat: Starting")
        return p

    def close(self) -> None:
        """Stop everything started here and drop the queue (tasks nobody will ever consume)."""
        for p in self.started:
            p.kill()
        with contextlib.suppress(redis.RedisError):
            broker = redis.Redis.from_url(self.env()["CELERY_BROKER_URL"])
            broker.delete(self.queue, f"_kombu.binding.{self.queue}")
