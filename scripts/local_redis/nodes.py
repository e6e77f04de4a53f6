"""Daemonized ``redis-server`` processes of our own, a directory and pid file each (Sentinel, Cluster)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import redis

from harness.waits import wait_for

HOST = "127.0.0.1"


def ping(port: int, host: str = HOST) -> bool:
    """True when a Redis (or a sentinel) answers on ``host``:``port``."""
    try:
        return bool(redis.Redis(host, port, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie of ours counts as gone, and is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


class RedisNodes:
    """Processes started daemonized under ``root``, one directory per port: find, kill and forget them by pid file.

    Why pid files: ``stop`` (Ctrl-C of ``make up``, a test's teardown) must end exactly the processes that
    were started here, never another Redis on the machine.
    """

    def __init__(self, root: Path, binary: str | None = None) -> None:
        self.root = root
        self.binary = binary or shutil.which("redis-server") or "redis-server"

    def _dir(self, port: int) -> Path:
        return self.root / str(port)

    def _pidfile(self, port: int) -> Path:
        return self._dir(port) / "redis.pid"

    def pid(self, port: int) -> int | None:
        """Pid of the process on ``port`` from its pid file (None when not running)."""
        try:
            return int(self._pidfile(port).read_text().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, port: int, lines: int = 40) -> str:
        """The last ``lines`` lines of the process's log (what a failed fault test prints to say why)."""
        out = []
        for log in sorted(self._dir(port).glob("*.log")):
            text = log.read_text(errors="replace")
            out.append(f"--- {port} {log.name} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out) or f"(no log for {port})"

    def logs(self, lines: int = 40) -> str:
        """The tail of every process's log: what a failed fault test prints so its cause can be read in CI."""
        ports = sorted(int(d.name) for d in self.root.iterdir() if d.is_dir() and d.name.isdigit())
        return "\n".join(self.log_tail(p, lines) for p in ports)

    def kill(self, port: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """SIGKILL the process on ``port`` (a crash: no shutdown, no final write); SIGTERM shuts it down cleanly."""
        pid = self.pid(port)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            try:
                wait_for(lambda: not alive(pid), 10, f"process {pid} did not stop")
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not alive(pid), 10, f"process {pid} did not die")
            self._pidfile(port).unlink(missing_ok=True)
