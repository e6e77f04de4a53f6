"""Celery workers and beat as real subprocesses for integration tests, plus a TCP proxy to cut PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, RUN_PREFIX, base_env


def unique_queue() -> str:
    """A queue no dev stack or other test run listens to."""
    return f"fdtest-{RUN_PREFIX.rstrip(':')}-{uuid.uuid4().hex[:6]}"


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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: no {needle!r} within {timeout}s:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole node (main process and pool children) at once."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Warm shutdown, then SIGKILL if it lingers."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            self.kill()


class CeleryProcs:
    """Starts workers and beat on one test queue; ``close`` stops every one of them."""

    def __init__(self, tmp: Path, queue: str | None = None) -> None:
        self.tmp = tmp
        self.queue = queue or unique_queue()
        self.started: list[CeleryProc] = []

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """base_env() plus this queue and quick claims of abandoned entries."""
        env = base_env()
        env.update(CELERY_QUEUE=self.queue, DRAIN_CLAIM_IDLE_MS="1000", PYTHONUNBUFFERED="1")
        env.update(extra or {})
        return env

    def _spawn(
        self, name: str, args: list[str], extra: dict[str, str] | None, launch: list[str] | None = None
    ) -> CeleryProc:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            [
                *(launch or []),
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                *args,
                "--loglevel",
                "INFO",
                "-f",
                str(log),
            ],
            cwd=ROOT,
            env=self.env(extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches the pool children too
        )
        p = CeleryProc(name, proc, log)
        self.started.append(p)
        return p

    def worker(
        self, name: str, extra: dict[str, str] | None = None, wait: bool = True, launch: list[str] | None = None
    ) -> CeleryProc:
        """Start ``celery -A worker worker -n NAME@%h --pool prefork -c 1 -Q <queue>`` (through ``launch``, e.g.
        ``ip netns exec NS``)."""
        p = self._spawn(
            name,
            ["worker", "-n", f"{name}@%h", "--pool", "prefork", "-c", "1", "-Q", self.queue,
             "--without-mingle", "--without-gossip"],
            extra,
            launch,
        )  # fmt: skip
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


@pytest.fixture()
def celery_procs(tmp_path: Path) -> Iterator[CeleryProcs]:
    """Worker nodes and beat as subprocesses, all killed at the end of the test."""
    procs = CeleryProcs(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll predicate until true or timeout; returns the last result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``refuse()`` cuts every connection and stops listening."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host  # where it listens (a fault test: the host's end of a veth pair)
        self.port = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self.listen()

    def listen(self) -> None:
        """(Re)open the listening socket, on the same port after the first time."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        with self._lock:
            self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def refuse(self) -> None:
        """Drop every open connection and refuse new ones (nothing listens on the port)."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        for c in [listener, *conns]:
            if c is None:
                continue
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def restore(self) -> None:
        """Accept connections again."""
        self.listen()

    def close(self) -> None:
        """Stop the proxy."""
        self.refuse()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # refused: the listener was closed
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
