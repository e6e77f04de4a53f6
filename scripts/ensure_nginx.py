"""Make sure the nginx binary the load balancer needs is installed (``make up`` calls this)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def say(msg: str) -> None:
    """Progress goes to stderr, like ensure_services.py."""
    print(f"[nginx] {msg}", file=sys.stderr)


def find_nginx() -> str | None:
    """Path of nginx: on PATH, or in /usr/sbin which a non-root PATH often lacks."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/local/nginx/sbin")


def main() -> int:
    """Return 0 when nginx is (now) installed; otherwise name the package and return 1."""
    if find_nginx():
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        say("nginx (the load balancer on :8080) is not installed. Install it: sudo apt-get install nginx")
        return 1
    say("nginx is not installed; installing Debian's package: apt-get install -y nginx")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Update the package lists first only if the plain install fails (stale or empty lists).
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx"]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        subprocess.run(cmd, env=env, check=False)
    # Debian's package may start a system nginx on :80; ours runs separately under var/nginx.
    if find_nginx():
        return 0
    say("installing nginx failed. Install it by hand: apt-get install nginx")
    return 1


if __name__ == "__main__":
    sys.exit(main())
