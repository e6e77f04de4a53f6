"""Benchmark plumbing: a private database and key prefix, open sales, wrk and its figures (processes: harness/)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from shared.db import Database  # noqa: E402
from shared.deals import NewDeal, create_deal, load_deal  # noqa: E402
from shared.gate import Gate  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.migrations import upgrade  # noqa: E402
from shared.redis import text_client  # noqa: E402
from shared.settings import Settings  # noqa: E402


def bench_env(database: str = "flashdeal_bench") -> dict[str, str]:
    """Resolve services into a bench database and a bench key prefix (never the dev data)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ensure_services.py"), database],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.strip("'")
    env.update(
        FLASHDEAL_ENV="development",
        FLASHDEAL_KEY_PREFIX=f"bench{uuid.uuid4().hex[:6]}:",
        RATELIMIT_ENABLED="false",
        CELERY_QUEUE=env.get("CELERY_QUEUE", f"bench-{uuid.uuid4().hex[:6]}"),
        PYTHONPATH=str(ROOT),
    )
    return env


@dataclass
class Context:
    """What a benchmark needs: settings, database, gate, environment for subprocesses."""

    env: dict[str, str]
    settings: Settings
    db: Database
    gate: Gate

    @classmethod
    def create(cls, database: str = "flashdeal_bench", fresh: bool = False) -> Context:
        """Set up the bench database (migrated; emptied first when ``fresh``) and clients."""
        if fresh and not database.startswith("flashdeal_bench"):
            raise ValueError(f"refusing to empty {database}: not a bench database")
        env = bench_env(database)
        settings = Settings.from_env(env)
        if fresh:
            url = settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        upgrade(settings.database_url)
        client = text_client(settings)
        return cls(env, settings, Database(settings), Gate(client, Keys(settings.key_prefix)))

    def cleanup(self) -> None:
        """Delete this run's Redis keys."""
        r = self.gate.redis
        for key in r.scan_iter(match=f"{self.settings.key_prefix}*", count=5000):
            r.delete(key)


def open_sale(ctx: Context, title: str, stock: int = 10_000_000, limit: int = 100_000) -> int:
    """Create an open deal loaded into the gate (stock and limit ample unless given); returns its id."""
    now = datetime.now(UTC)
    with ctx.db.transaction() as s:
        deal = create_deal(s, NewDeal(title, Decimal("9.99"), stock, limit, now, now + timedelta(hours=1)))
        deal.status = "open"
    with ctx.db.read() as s:
        load_deal(s, ctx.gate, deal)
    return deal.id


@dataclass
class WrkResult:
    """What wrk measured."""

    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: int

    def row(self, baseline: WrkResult | None = None) -> dict[str, object]:
        """A table row, with the ratio to the baseline."""
        out: dict[str, object] = {
            "scenario": self.name,
            "req/s": round(self.requests_per_s),
            "p50 ms": round(self.p50_ms, 2),
            "p99 ms": round(self.p99_ms, 2),
            "requests": self.requests,
            "non-2xx": self.non_2xx,
            "socket errors": self.errors,
        }
        if baseline is not None:
            out["ratio"] = round(self.requests_per_s / baseline.requests_per_s, 3)
        return out


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def paced(rate: float, connections: int, lua: str = "") -> str:
    """Lua that paces wrk to about ``rate`` requests/s in total over its connections.

    wrk is closed-loop: at saturation every connection waits for the one before it, so latency is
    just connections / throughput (Little's law). Pacing below saturation measures the latency a
    buyer sees at that load instead.
    """
    return lua + f"\ndelay = function() return {connections * 1000.0 / rate:.3f} end\n"


def wrk(
    name: str, url: str, *, connections: int = 300, seconds: int = 10, threads: int = 2, lua: str | None = None
) -> WrkResult:
    """Run wrk against url (with an optional Lua script) and parse its figures."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    script_path = None
    if lua:
        fd, script_path = tempfile.mkstemp(suffix=".lua")
        os.write(fd, lua.encode())
        os.close(fd)
        cmd += ["-s", script_path]
    try:
        out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True).stdout
    finally:
        if script_path:
            os.unlink(script_path)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errs = (
        sum(int(x) for x in m.groups())
        if (m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out))
        else 0
    )
    return WrkResult(name, rps, p50, p99, total, non2xx, errs)


def markdown_table(rows: list[dict[str, object]]) -> str:
    """Rows to a Markdown table."""
    cols = list(rows[0])
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def save(name: str, rows: list[dict[str, object]], extra: dict[str, object] | None = None) -> None:
    """Write bench/results/<name>.json and .md and print the table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpus": os.cpu_count(), **(extra or {})}
    meta["load1"] = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was when this ended
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown_table(rows)
    (RESULTS / f"{name}.md").write_text(f"<!-- {json.dumps(meta)} -->\n{table}\n")
    print(table)
