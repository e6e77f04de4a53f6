"""Where the CPU goes: the reference loop (list -> detail -> order) through the stack, CPU per process group.

Usage: .venv/bin/python -m bench.cpu_split [--seconds 10] [--connections 300]
Starts the production topology (bench/stack.py), logs the buyers in, runs the reference scenario's wrk loop
and reads each process group's CPU time from /proc before and after: web nodes, worker nodes, beat, nginx,
Redis and PostgreSQL. What is left of the two cores is wrk and the kernel. Linux only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bench.common import Context, wrk
from bench.reference import STACK_DATABASE, add_other_deals, loop_lua
from bench.stack import Stack
from bench.users import login_all, make_users
from shared.deals import NewDeal, create_deal, load_deal

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, its threads and all its descendants (0 when gone)."""
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return total + sum(cpu_seconds(int(c)) for c in children)


def pids_of(pattern: str) -> list[int]:
    """Pids whose command line matches pattern (pgrep -f)."""
    return [int(p) for p in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()]


def main() -> None:
    """Run the loop once and print cores and µs per request for each process group."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=300)
    args = ap.parse_args()
    ctx = Context.create(STACK_DATABASE, fresh=True)
    now = datetime.now(UTC)
    with ctx.db.transaction() as s:
        add_other_deals(s, now)
        deal = create_deal(s, NewDeal("cpu split", Decimal("9.99"), 1_000_000, 100_000, now, now + timedelta(hours=1)))
        deal.status = "open"
        load_deal(s, ctx.gate, deal)
        deal_id = deal.id
    emails = [e for _, e in make_users(ctx.db, args.connections)]
    try:
        with Stack(ctx.env) as stack:
            cookies = login_all(stack.base, emails)
            web, workers, beat, nginx = stack.procs[:3], stack.procs[3:5], stack.procs[5:6], stack.procs[6:]
            groups = {
                "web nodes (3)": [p.pid for p in web],
                "worker nodes (2)": [p.pid for p in workers],
                "beat": [p.pid for p in beat],
                "nginx": [p.pid for p in nginx],
                "redis": pids_of("redis-server"),
                "postgres": pids_of("postgres"),
            }
            before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}
            t0 = time.monotonic()
            lua = loop_lua(cookies, deal_id)
            res = wrk("loop", stack.base, connections=args.connections, seconds=args.seconds, lua=lua)
            elapsed = time.monotonic() - t0
            after = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}
    finally:
        ctx.cleanup()
    print(f"list -> detail -> order: {res.requests_per_s:.0f} requests/s, p99 {res.p99_ms:.0f} ms")
    used = 0.0
    for name in groups:
        cores = (after[name] - before[name]) / elapsed
        used += cores
        print(f"  {name:18} {cores:5.2f} cores  {1e6 * cores / res.requests_per_s:6.0f} µs per request")
    print(f"  {'wrk, kernel, rest':18} {max(0.0, (os.cpu_count() or 2) - used):5.2f} cores")


if __name__ == "__main__":
    main()
