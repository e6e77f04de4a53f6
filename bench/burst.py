"""Burst sale: 5,000 logged-in buyers press buy within one second for a stock of 1,000, through the LB stack.

Usage: .venv/bin/python -m bench.burst [--buyers 5000] [--stock 1000] [--spread 1.0] [--connections 1000]
The stack is the production topology on private ports (bench/stack.py): nginx -> 3 granian nodes, 2 Celery worker
nodes and beat. Buyers log in first through the real API; each buyer then sends exactly one order at a
scheduled instant, spread evenly over ``--spread`` seconds, on pre-opened keep-alive connections. A thread polls
PostgreSQL meanwhile for the confirmed count. Writes bench/results/burst.json|.md and burst_timeline.csv.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlparse

from sqlalchemy import text

from bench.common import RESULTS, Context, save
from bench.httpclient import Conn
from bench.stack import Stack
from bench.users import login_all, make_users
from shared.deals import NewDeal, create_deal, deal_stats, load_deal

CONFIRM_TIMEOUT_S = 30.0
BODY = b'{"quantity": 1}'


@dataclass(frozen=True)
class Answer:
    """One buyer's order attempt, times relative to the burst's start."""

    scheduled: float
    done: float
    status: int

    @property
    def latency_ms(self) -> float:
        """From the scheduled press to the answer (client-side waiting included)."""
        return (self.done - self.scheduled) * 1000


class ConfirmedPoller(threading.Thread):
    """Polls the deal's persisted order count every 20 ms until it reaches the target or times out."""

    def __init__(self, ctx: Context, deal_id: int, target: int, t0: float) -> None:
        super().__init__(daemon=True)
        self.ctx, self.deal_id, self.target, self.t0 = ctx, deal_id, target, t0
        self.timeline: list[tuple[float, int]] = []

    def run(self) -> None:
        """Poll (bounded by CONFIRM_TIMEOUT_S)."""
        q = text("SELECT count(*) FROM orders WHERE deal_id = :d AND status = 'confirmed'")
        with self.ctx.db.engine.connect() as conn:
            while (now := time.perf_counter() - self.t0) < CONFIRM_TIMEOUT_S:
                n = int(conn.execute(q, {"d": self.deal_id}).scalar_one())
                conn.rollback()
                self.timeline.append((round(now, 4), n))
                if n >= self.target:
                    return
                time.sleep(0.02)

    @property
    def all_confirmed_s(self) -> float | None:
        """When the count first reached the target."""
        return next((t for t, n in self.timeline if n >= self.target), None)


async def fire(base: str, path: str, cookies: list[str], spread: float, connections: int) -> tuple[float, list[Answer]]:
    """Open the connections, then send one order per buyer at its scheduled instant; returns (t0, answers)."""
    url = urlparse(base)
    conns: list[Conn] = []
    for start in range(0, connections, 100):  # open in batches, all before the sale starts
        conns += await asyncio.gather(*(Conn.open(url.hostname, url.port) for _ in range(start, connections)[:100]))
    n = len(cookies)
    # Buyer i presses at i/n * spread; connection c carries buyers c, c+connections, ... (far apart in time).
    t0 = time.perf_counter() + 0.2
    answers: list[Answer] = []

    async def run_conn(c: int) -> None:
        for i in range(c, n, connections):
            at = i / n * spread
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                status, _ = await conns[c].post_json(path, BODY, f"flashdeal_session={cookies[i]}")
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = 0
                conns[c] = await Conn.open(url.hostname, url.port)
            answers.append(Answer(at, time.perf_counter() - t0, status))

    await asyncio.gather(*(run_conn(c) for c in range(min(connections, n))))
    for c in conns:
        c.close()
    return t0, answers


def warm_up(ctx: Context, base: str, cookies: list[str]) -> None:
    """A live shop has warm nodes: load scripts, pools and broker connections on every node with a side deal."""
    now = datetime.now(UTC)
    with ctx.db.transaction() as s:
        deal = create_deal(s, NewDeal("warm-up", Decimal("1.00"), 1_000_000, 1_000_000, now, now + timedelta(hours=1)))
        deal.status = "open"
        load_deal(s, ctx.gate, deal)
    url = urlparse(base)

    async def one(cookie: str) -> None:
        conn = await Conn.open(url.hostname, url.port)
        for _ in range(6):
            await conn.post_json(f"/api/deals/{deal.id}/orders", BODY, f"flashdeal_session={cookie}")
        conn.close()

    async def all_() -> None:
        await asyncio.gather(*(one(c) for c in cookies))

    asyncio.run(all_())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))] if s else 0.0


def run(buyers: int = 5000, stock: int = 1000, spread: float = 1.0, connections: int = 1000) -> dict:
    """Run the burst; returns the summary (also saved)."""
    ctx = Context.create("flashdeal_bench_stack", fresh=True)
    now = datetime.now(UTC)
    with ctx.db.transaction() as s:
        deal = create_deal(s, NewDeal("burst", Decimal("19.99"), stock, 1, now, now + timedelta(hours=1)))
        deal.status = "open"
        load_deal(s, ctx.gate, deal)
        deal_id = deal.id
    users = make_users(ctx.db, buyers)
    try:
        with Stack(ctx.env) as stack:
            t_login = time.perf_counter()
            cookies = login_all(stack.base, [e for _, e in users], threads=32)
            login_s = time.perf_counter() - t_login
            random.shuffle(cookies)
            warm_up(ctx, stack.base, cookies[:50])
            poller_box: list[ConfirmedPoller] = []

            async def go() -> tuple[float, list[Answer]]:
                # The poller starts with the burst's clock.
                task = asyncio.ensure_future(
                    fire(stack.base, f"/api/deals/{deal_id}/orders", cookies, spread, connections)
                )
                await asyncio.sleep(0.15)
                poller = ConfirmedPoller(ctx, deal_id, stock, time.perf_counter() + 0.05)
                poller_box.append(poller)
                poller.start()
                return await task

            t0, answers = asyncio.run(go())
            t0_wall = time.time() - (time.perf_counter() - t0)
            poller = poller_box[0]
            poller.join(CONFIRM_TIMEOUT_S + 5)
            stats = deal_stats(ctx.db, ctx.gate, deal_id)
            with ctx.db.read() as s:
                last = s.scalar(text("SELECT extract(epoch FROM max(admitted_at)) FROM orders WHERE deal_id = :d"),
                                {"d": deal_id})  # fmt: skip
    finally:
        ctx.cleanup()
    gate_sold_out_s = round(float(last) - t0_wall, 3) if last is not None else None
    # The poller's clock started about 0.05 s after t0 was taken + 0.2; align it to the burst's t0.
    offset = (poller.t0 - t0) if poller.t0 else 0.0
    confirmed_timeline = [(round(t + offset, 4), n) for t, n in poller.timeline]
    all_confirmed = next((t for t, n in confirmed_timeline if n >= stock), None)
    extra = {"gate_sold_out_s": gate_sold_out_s, "login_s": round(login_s, 1), "spread_s": spread}
    return summarize(answers, confirmed_timeline, all_confirmed, stats.as_dict(), stock, buyers, extra)


def summarize(
    answers: list[Answer],
    confirmed: list[tuple[float, int]],
    all_confirmed: float | None,
    stats: dict,
    stock: int,
    buyers: int,
    extra: dict,
) -> dict:
    """Figures, checks and the timeline files."""
    ok = sorted(a.done for a in answers if a.status == 202)
    by_status: dict[int, int] = {}
    for a in answers:
        by_status[a.status] = by_status.get(a.status, 0) + 1
    lat = [a.latency_ms for a in answers]
    sold_out_s = ok[stock - 1] if len(ok) >= stock else None
    row = {
        "buyers": buyers,
        "stock": stock,
        "sent within (s)": round(max(a.scheduled for a in answers), 3),
        "accepted (202)": len(ok),
        "sold out (409)": by_status.get(409, 0),
        "errors": sum(v for k, v in by_status.items() if k not in (202, 409)),
        "stock gone in the gate (s)": extra["gate_sold_out_s"],
        "last 202 answered (s)": round(sold_out_s, 3) if sold_out_s is not None else "not sold out",
        "all confirmed in PostgreSQL (s)": all_confirmed if all_confirmed is not None else f">{CONFIRM_TIMEOUT_S:.0f}",
        "p50 ms": round(percentile(lat, 50), 1),
        "p99 ms": round(percentile(lat, 99), 1),
        "max ms": round(max(lat), 1),
        "gate remaining": stats["remaining_stock"],
        "confirmed": stats["confirmed"],
        "accepted == stock": len(ok) == stock and stats["accepted"] == stock,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "burst_timeline.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "t_s", "value"])
        for i, t in enumerate(ok, 1):
            w.writerow(["accepted", round(t, 4), i])
        for a in sorted(answers, key=lambda a: a.scheduled):
            w.writerow(["sent", round(a.scheduled, 4), a.status])
        for t, n in confirmed:
            w.writerow(["confirmed", t, n])
        for a in sorted(answers, key=lambda a: a.done):
            w.writerow(["latency_ms", round(a.done, 4), round(a.latency_ms, 2)])
    save("burst", [row], {"statuses": {str(k): v for k, v in by_status.items()}, "stats": stats, **extra})
    return row


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--buyers", type=int, default=5000)
    ap.add_argument("--stock", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--connections", type=int, default=1000)
    args = ap.parse_args()
    print(run(args.buyers, args.stock, args.spread, args.connections))


if __name__ == "__main__":
    main()
