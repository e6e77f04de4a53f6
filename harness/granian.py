"""Web nodes as real granian processes, with the Procfile's command line on a port of our choosing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from harness.ports import HOST, free_port
from harness.processes import spawn, stop_process
from harness.waits import listeners, wait_for, wait_http

WSGI_APP = "web.wsgi:app"


def granian_command(
    port: int, workers: int = 1, threads: int = 8, target: str = WSGI_APP, backpressure: int | None = None
) -> list[str]:
    """``granian --interface wsgi`` on 127.0.0.1:``port``, HTTP/1.1 only as in the Procfile.

    Why ``--http 1``: behind nginx (and wrk) nothing speaks HTTP/2, and granian's protocol detection per
    connection costs 10-40% of an order's throughput here.
    """
    cmd = [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", HOST, "--port", str(port),
           "--workers", str(workers), "--blocking-threads", str(threads), "--http", "1"]  # fmt: skip
    if backpressure is not None:
        cmd += ["--backpressure", str(backpressure)]
    return [*cmd, target]


def start_granian(
    env: Mapping[str, str],
    port: int,
    workers: int = 2,
    threads: int = 8,
    target: str = WSGI_APP,
    *,
    backpressure: int | None = 512,
    log: Path | None = None,
    timeout: float = 30.0,
) -> subprocess.Popen:
    """Start one web node and wait until its /healthz answers and every worker listens; defaults: the benchmarks'."""
    proc = spawn(granian_command(port, workers, threads, target, backpressure), env, log)
    try:
        wait_http(f"http://{HOST}:{port}/healthz", timeout)
        # Why also count listeners: each worker binds its own SO_REUSEPORT socket when its app is built, so the
        # first answer can come while the others still start, and the kernel then sends everything to one.
        wait_for(lambda: listeners(port) >= workers, timeout, f"{workers} granian workers listening on {port}")
    except BaseException:
        stop_process(proc)
        raise
    return proc


class WebNode:
    """A web node running as a real granian process on a free port."""

    def __init__(self, env: Mapping[str, str], workers: int = 1, threads: int = 4, timeout: float = 20.0) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc = start_granian(env, self.port, workers, threads, backpressure=None, timeout=timeout)

    def stop(self) -> None:
        """Stop the node (its process group)."""
        stop_process(self.proc)
