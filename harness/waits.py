"""Waiting for a condition, an HTTP answer or a line in a process's log, each with a deadline."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds; returns the last result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Return once ``predicate()`` holds; TimeoutError naming ``what`` after ``timeout`` seconds."""
    if not wait_until(predicate, timeout, interval):
        raise TimeoutError(f"{what} within {timeout:.0f} s")


def http_answers(url: str) -> bool:
    """True when ``url`` answers with any status (urllib: the harness needs no HTTP client package)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers (any status)."""
    if not wait_until(lambda: http_answers(url), timeout):
        raise TimeoutError(url)


def listeners(port: int) -> int:
    """How many sockets listen on TCP ``port`` of 127.0.0.1 (one per granian worker: each binds SO_REUSEPORT)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:  # Linux only, as the harness is
        return sum(1 for row in table if (cols := row.split())[1] == want and cols[3] == "0A")  # 0A: LISTEN


def wait_log(log: Path, needle: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Wait until ``needle`` appears in ``log``; RuntimeError at once if ``proc`` exits first."""
    deadline = time.monotonic() + timeout

    def text() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    while time.monotonic() < deadline:
        if needle in text():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{log.name}: exited with {proc.returncode}:\n{text()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"{log.name}: no {needle!r} within {timeout}s:\n{text()[-3000:]}")
