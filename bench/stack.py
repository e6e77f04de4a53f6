"""The production topology on private ports for benchmarks: nginx LB -> 3 granian nodes, 2 Celery nodes, beat.

Same commands as the Procfile (``scripts/proc`` + granian ``--workers 1 --blocking-threads 8 --http 1``, celery
worker with default concurrency, beat, nginx with ``deploy/nginx.conf``), but ports are free ones and the environment
is the bench's (private database, key prefix and Celery queue), so a running ``make up`` is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.celery import celery_command, start_worker
from harness.granian import granian_command
from harness.nginx import LoadBalancer, nginx_binary
from harness.ports import free_port
from harness.processes import ROOT, spawn, stop_process
from harness.waits import wait_http, wait_log


@dataclass
class Stack:
    """nginx + 3 web nodes + 2 worker nodes (+ beat) on the bench environment; ``close`` stops them all.

    Logs go to a temporary folder, removed at ``close`` unless BENCH_KEEP_LOGS is set.
    """

    env: dict[str, str]
    include: str = ""
    beat: bool = True
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flashdeal-stack-")))
    procs: list[subprocess.Popen] = field(default_factory=list)
    lb_port: int = 0
    lb: LoadBalancer | None = None
    web_ports: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        """The LB's URL."""
        return f"http://127.0.0.1:{self.lb_port}"

    def start(self) -> Stack:
        """Start everything and wait until the LB answers through a web node and both workers are ready."""
        env = {**self.env, "TRUSTED_PROXIES": "1", "FLASHDEAL_METRICS_ROOT": str(self.dir / "metrics")}
        env["PATH"] = os.pathsep.join([str(ROOT / ".venv" / "bin"), env.get("PATH", ""), "/usr/sbin"])
        self.web_ports = [free_port() for _ in range(3)]
        try:
            for i, port in enumerate(self.web_ports, 1):
                cmd = ["scripts/proc", f"web{i}", *granian_command(port, workers=1, threads=8)]
                self.procs.append(spawn(cmd, env, self.dir / f"web{i}.log"))
            workers = []
            for i in (1, 2):
                workers.append(start_worker(env, f"benchworker{i}", self.dir, self.include))
                self.procs.append(workers[-1])
            if self.beat:
                cmd = celery_command("beat", "-l", "INFO", "-s", str(self.dir / "beat-schedule"))
                self.procs.append(spawn(cmd, env, self.dir / "beat.log"))
            self.lb = LoadBalancer(self.dir / "nginx", self.web_ports, binary=nginx_binary() or "/usr/sbin/nginx")
            self.lb_port = self.lb.port
            for port in self.web_ports:
                wait_http(f"http://127.0.0.1:{port}/healthz")
            wait_http(f"{self.base}/healthz")
            for i, w in enumerate(workers, 1):
                wait_log(self.dir / f"benchworker{i}.log", "ready.", w)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every process group started here."""
        if self.lb is not None:
            self.lb.stop()
            self.lb = None
        for p in reversed(self.procs):
            stop_process(p)
        self.procs.clear()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
