"""deploy/nginx.conf run as a load balancer of our own: a free port, its own prefix, in front of the given nodes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from harness.ports import HOST, free_port
from harness.processes import ROOT, spawn, stop_process
from harness.waits import http_answers, wait_for

DEPLOY = ROOT / "deploy"


def nginx_binary() -> str | None:
    """nginx on PATH or in /usr/sbin."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def write_config(prefix: Path, port: int, upstreams: list[int], read_timeout_s: int | None = None) -> Path:
    """deploy/nginx.conf and the files it includes under ``prefix``, listening on ``port``; returns nginx.conf."""
    conf = (DEPLOY / "nginx.conf").read_text()
    conf, n = re.subn(r"listen 127\.0\.0\.1:8080", f"listen 127.0.0.1:{port}", conf)
    assert n == 1, "deploy/nginx.conf no longer listens on 127.0.0.1:8080"
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in upstreams)
    conf, n = re.subn(r"(?:\s*server 127\.0\.0\.1:800[123] [^\n]*;)+", "\n" + servers, conf, count=1)
    assert n == 1, "deploy/nginx.conf no longer lists the web nodes as 127.0.0.1:8001-8003"
    conf = conf.replace("pid nginx.pid;", "pid nginx.pid;\nerror_log stderr crit;", 1)
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(conf)
    proxy = (DEPLOY / "nginx-proxy.conf").read_text()
    if read_timeout_s is not None:
        proxy, n = re.subn(r"proxy_read_timeout \d+s;", f"proxy_read_timeout {read_timeout_s}s;", proxy)
        assert n == 1
    (prefix / "nginx-proxy.conf").write_text(proxy)
    shutil.copy(DEPLOY / "nginx-api-errors.conf", prefix / "nginx-api-errors.conf")
    return prefix / "nginx.conf"


class LoadBalancer:
    """One nginx process with the shop's config, on a free port, in front of the given upstream ports."""

    def __init__(
        self, prefix: Path, upstreams: list[int], read_timeout_s: int | None = None, binary: str | None = None
    ) -> None:
        nginx = binary or nginx_binary()
        if nginx is None:
            raise FileNotFoundError("nginx is not installed: apt-get install nginx")
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        conf = write_config(prefix, self.port, upstreams, read_timeout_s)
        log = prefix / "nginx.log"
        self.proc = spawn([nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"], {}, log)

        try:
            wait_for(lambda: self.proc.poll() is not None or http_answers(f"{self.url}/lb-healthz"), 15, "nginx")
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx did not start: {log.read_text(errors='replace')}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop this nginx (its master and worker)."""
        stop_process(self.proc)
