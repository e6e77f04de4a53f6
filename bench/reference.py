"""The reference 300-user scenario with Locust against the LB stack, then the stock check.

Usage: .venv/bin/python -m bench.reference [--users 300] [--seconds 60] [--processes 0]
Starts the production topology on private ports (bench/stack.py), creates a deal (stock 100,000, per-user limit
1,000) and the buyers, runs ``locust -f bench/locustfile.py --headless`` and reads its CSV. After the run it waits
for the outbox to drain and checks remaining + confirmed == total and accepted == confirmed.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bench.common import ROOT, Context, save
from bench.stack import Stack
from bench.users import PASSWORD, make_users
from shared.deals import NewDeal, create_deal, deal_stats, load_deal

STOCK = 100_000
PER_USER_LIMIT = 1_000
DRAIN_TIMEOUT_S = 60.0
ENDPOINTS = ["GET /api/deals", "GET /api/deals/{id}", "POST /api/deals/{id}/orders", "POST /api/auth/login"]


def run_locust(base: str, env: dict[str, str], users: int, seconds: int, processes: int, tmp: Path) -> Path:
    """Run Locust headless; returns the CSV prefix."""
    prefix = tmp / "ref"
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless"]
    cmd += ["-u", str(users), "-r", str(max(1, users // 3)), "-t", f"{seconds}s", "--host", base]
    cmd += ["--csv", str(prefix), "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING"]
    if processes:
        cmd += ["--processes", str(processes)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=False, timeout=seconds + 120, start_new_session=True)
    return prefix


def read_stats(prefix: Path) -> dict[str, dict[str, str]]:
    """Locust's <prefix>_stats.csv by request name (``Aggregated`` is the total)."""
    with open(f"{prefix}_stats.csv") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def _row(name: str, s: dict[str, str]) -> dict[str, object]:
    return {
        "endpoint": name,
        "requests": int(s["Request Count"]),
        "req/s": round(float(s["Requests/s"]), 1),
        "p50 ms": float(s["50%"]),
        "p95 ms": float(s["95%"]),
        "p99 ms": float(s["99%"]),
        "avg ms": round(float(s["Average Response Time"]), 1),
        "real errors": int(s["Failure Count"]),
    }


def run(users: int = 300, seconds: int = 60, processes: int = 0) -> dict[str, object]:
    """Run the scenario; returns the summary (also saved)."""
    ctx = Context.create()
    now = datetime.now(UTC)
    with ctx.db.transaction() as s:
        deal = create_deal(
            s, NewDeal("reference", Decimal("9.99"), STOCK, PER_USER_LIMIT, now, now + timedelta(hours=2))
        )
        deal.status = "open"
        load_deal(s, ctx.gate, deal)
        deal_id = deal.id
    tmp = Path(tempfile.mkdtemp(prefix="flashdeal-locust-"))
    (tmp / "users.txt").write_text("\n".join(e for _, e in make_users(ctx.db, users)))
    (tmp / "409").mkdir()
    env = {
        **ctx.env,
        "BENCH_DEAL_ID": str(deal_id),
        "BENCH_USERS_FILE": str(tmp / "users.txt"),
        "BENCH_PASSWORD": PASSWORD,
        "BENCH_409_DIR": str(tmp / "409"),
    }
    try:
        with Stack(ctx.env) as stack:
            prefix = run_locust(stack.base, env, users, seconds, processes, tmp)
            t0 = time.monotonic()
            while time.monotonic() - t0 < DRAIN_TIMEOUT_S and deal_stats(ctx.db, ctx.gate, deal_id).pending:
                time.sleep(0.2)
            drained_s = round(time.monotonic() - t0, 2)
            stats = deal_stats(ctx.db, ctx.gate, deal_id).as_dict()
    finally:
        ctx.cleanup()
    by_name = read_stats(prefix)
    rows = [_row("total (all requests)", by_name["Aggregated"])]
    rows += [_row(n, by_name[n]) for n in ENDPOINTS if n in by_name]
    expected: dict[str, int] = {}
    for f in (tmp / "409").glob("*.json"):
        for code, n in json.loads(f.read_text()).items():
            expected[code] = expected.get(code, 0) + n
    for r in rows:
        if r["endpoint"] == "POST /api/deals/{id}/orders":
            r["expected 409s"] = sum(expected.values())
    summary = {
        "users": users,
        "seconds": seconds,
        "locust processes": processes or 1,
        "expected 409s by code": expected,
        "drained after (s)": drained_s,
        "stats": stats,
        "remaining + confirmed == total": stats["remaining_stock"] + stats["confirmed"] == stats["total_stock"],
        "accepted == confirmed (nothing lost)": stats["accepted"] == stats["confirmed"] and stats["pending"] == 0,
    }
    save("reference", rows, summary)
    print(json.dumps(summary, indent=2))
    return {"rows": rows, **summary}


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--processes", type=int, default=0, help="locust --processes (0: one plain process)")
    args = ap.parse_args()
    run(args.users, args.seconds, args.processes)


if __name__ == "__main__":
    main()
