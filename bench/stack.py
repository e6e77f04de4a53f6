"""The production topology on private ports for benchmarks: nginx LB -> 3 granian nodes, 2 Celery nodes, beat.

Same commands as the Procfile (``scripts/proc`` + granian ``--workers 1 --blocking-threads 8 --http 1``, celery
worker with default concurrency, beat, nginx with ``deploy/nginx.conf``), but ports are free ones and the environment
is the bench's (private database, key prefix and Celery queue), so a running ``make up`` is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, free_port, stop, wait_http

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a process in its own process group, logging to a file."""
    out = log.open("ab")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_worker(
    env: dict[str, str], name: str, logdir: Path, include: str = "", concurrency: int | None = None
) -> subprocess.Popen:
    """``celery -A worker worker -n NAME@%h`` on the bench queue (optionally with extra task modules)."""
    cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-n", f"{name}@%h", "-Q", env["CELERY_QUEUE"]]
    cmd += ["--without-mingle", "--without-gossip", "-l", "INFO"]
    if include:
        cmd += ["-I", include]
    if concurrency:
        cmd += ["-c", str(concurrency)]
    return _spawn(cmd, env, logdir / f"{name}.log")


def wait_log(path: Path, needle: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until a process's log shows needle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{path.name}: exited {proc.returncode}\n{path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"{path.name}: no {needle!r} within {timeout}s")


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
        self.lb_port = free_port()
        try:
            for i, port in enumerate(self.web_ports, 1):
                cmd = ["scripts/proc", f"web{i}", sys.executable, "-m", "granian", "--interface", "wsgi"]
                cmd += [
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--blocking-threads",
                    "8",
                    "--http",
                    "1",
                ]
                self.procs.append(_spawn([*cmd, "web.wsgi:app"], env, self.dir / f"web{i}.log"))
            workers = []
            for i in (1, 2):
                workers.append(start_worker(env, f"benchworker{i}", self.dir, self.include))
                self.procs.append(workers[-1])
            if self.beat:
                cmd = [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO"]
                self.procs.append(_spawn([*cmd, "-s", str(self.dir / "beat-schedule")], env, self.dir / "beat.log"))
            self._start_nginx(env)
            for port in self.web_ports:
                wait_http(f"http://127.0.0.1:{port}/healthz")
            wait_http(f"{self.base}/healthz")
            for i, w in enumerate(workers, 1):
                wait_log(self.dir / f"benchworker{i}.log", "ready.", w)
        except BaseException:
            self.close()
            raise
        return self

    def _start_nginx(self, env: dict[str, str]) -> None:
        prefix = self.dir / "nginx"
        prefix.mkdir(exist_ok=True)
        # nginx.conf and the files it includes, with the bench's ports in place of 8080 and 8001-8003.
        for src in (ROOT / "deploy").glob("*.conf"):
            conf = src.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{self.lb_port}")
            for old, new in zip((8001, 8002, 8003), self.web_ports, strict=True):
                conf = conf.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
            (prefix / src.name).write_text(conf)
        cmd = [NGINX, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"]
        self.procs.append(_spawn(cmd, env, self.dir / "nginx.log"))

    def close(self) -> None:
        """Stop every process group started here."""
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                stop(p)
        self.procs.clear()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
