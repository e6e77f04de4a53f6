"""Starting a process in its own group with its log in a file, and stopping exactly the processes we started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spawn(cmd: list[str], env: Mapping[str, str], log: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` from the project root in a process group of its own; output to ``log`` (appended) or nowhere.

    Why a group: stopping it reaches its children too (granian's workers, a Celery pool, nginx's worker).
    """
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def _signal(proc: subprocess.Popen, sig: signal.Signals) -> None:
    """Send ``sig`` to the process's group when it leads one (``spawn``), else to the process alone."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a process we started (its group when it has one), SIGKILL it if it has not gone within ``timeout``."""
    if proc.poll() is not None:
        return
    _signal(proc, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_process(proc)


def kill_process(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started and its group at once (a crash: no shutdown)."""
    if proc.poll() is None:
        _signal(proc, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the given processes (ones this run started); SIGCONT them on the way out, whatever happens."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
