"""Free TCP ports on 127.0.0.1."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the kernel's pick: free now, not reserved)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> tuple[int, ...]:
    """``n`` distinct free ports, sorted."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return tuple(sorted(ports))
