"""deploy/nginx.conf run as a test's own load balancer: free ports, its own prefix, stopped by the test."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import requests

from tests.conftest import ROOT, free_port, stop_process
from tests.helpers import require_tool

DEPLOY = ROOT / "deploy"


def nginx_binary() -> str | None:
    """nginx on PATH or in /usr/sbin."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


class LoadBalancer:
    """One nginx process with the shop's config, on a free port, in front of the given upstream ports."""

    def __init__(self, tmp: Path, upstreams: list[int], read_timeout_s: int | None = None) -> None:
        nginx = require_tool(nginx_binary(), "nginx", "nginx")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = (DEPLOY / "nginx.conf").read_text()
        conf, n = re.subn(r"listen 127\.0\.0\.1:8080", f"listen 127.0.0.1:{self.port}", conf)
        assert n == 1, "deploy/nginx.conf no longer listens on 127.0.0.1:8080"
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in upstreams)
        conf, n = re.subn(r"(?:\s*server 127\.0\.0\.1:800[123] [^\n]*;)+", "\n" + servers, conf, count=1)
        assert n == 1, "deploy/nginx.conf no longer lists the web nodes as 127.0.0.1:8001-8003"
        conf = conf.replace("pid nginx.pid;", "pid nginx.pid;\nerror_log stderr crit;", 1)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "nginx.conf").write_text(conf)
        proxy = (DEPLOY / "nginx-proxy.conf").read_text()
        if read_timeout_s is not None:
            proxy, n = re.subn(r"proxy_read_timeout \d+s;", f"proxy_read_timeout {read_timeout_s}s;", proxy)
            assert n == 1
        (tmp / "nginx-proxy.conf").write_text(proxy)
        shutil.copy(DEPLOY / "nginx-api-errors.conf", tmp / "nginx-api-errors.conf")
        self.proc = subprocess.Popen(
            [nginx, "-p", f"{tmp}/", "-c", str(tmp / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                requests.get(f"{self.url}/lb-healthz", timeout=1)
                break
            except requests.RequestException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    self.stop()
                    raise RuntimeError(f"nginx did not start: {err}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop this nginx (its master and worker)."""
        stop_process(self.proc)
