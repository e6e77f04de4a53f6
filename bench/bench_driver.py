"""Database driver benchmark: psycopg 3 (what flashdeal uses) against psycopg2, same run, same database.

Usage: .venv/bin/python -m bench.bench_driver [--batches 10] [--batch-size 1000] [--reads 300] [--rounds 9]

Two workloads, each through SQLAlchemy exactly as the product runs them:
1. the drain's batch insert: ``worker.outbox.write_rows`` (one multi-row INSERT ... unnest per batch), one
   transaction per batch, as a worker persists an outbox batch;
2. the order reads: the "my orders" query of ``GET /api/orders`` (the buyer's newest orders), one
   session per read, as a web node serves it.
The drivers alternate round by round (psycopg first in odd rounds) so a machine that slows down during the run
does not favour one of them; rounds are short and many, and each figure is the best round (the least
disturbed by other work on a shared machine). Everything stays on 127.0.0.1, in a private bench
database that is emptied first.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

from sqlalchemy import select, text

from bench.bench_drain import make_deal, make_users
from bench.common import Context, save
from shared.db import Database
from shared.models import Order
from shared.outbox_entry import ORDER, OutboxRow
from worker.outbox import write_rows

DRIVERS = ("psycopg", "psycopg2")


def driver_url(url: str, driver: str) -> str:
    """The same database URL with another SQLAlchemy driver name."""
    rest = url.split("://", 1)[1]
    return f"postgresql+{driver}://{rest}"


def batch_rows(users: list[int], size: int, ts: int) -> list[OutboxRow]:
    """One outbox batch of fresh orders, as ``parse_entry`` would hand it to ``write_rows``."""
    return [
        OutboxRow(f"{ts}-{i}", ORDER, str(uuid.uuid4()), users[i % len(users)], 1, "9.99", ts, None, {})
        for i in range(size)
    ]


def insert_rate(db: Database, deal_id: int, users: list[int], batches: int, size: int) -> float:
    """Rows per second written by ``write_rows`` in ``batches`` transactions (rows built outside the timing)."""
    prepared = [batch_rows(users, size, int(time.time() * 1000)) for _ in range(batches)]
    start = time.perf_counter()
    for rows in prepared:
        with db.transaction() as s:
            write_rows(s, deal_id, rows)
    return batches * size / (time.perf_counter() - start)


def read_rate(db: Database, users: list[int], reads: int) -> float:
    """ "My orders" queries per second (the newest 50 orders of a buyer), one session each."""
    start = time.perf_counter()
    for i in range(reads):
        with db.read() as s:
            s.scalars(
                select(Order).where(Order.user_id == users[i % len(users)]).order_by(Order.admitted_at.desc()).limit(50)
            ).all()
    return reads / (time.perf_counter() - start)


def best_of(rounds: int, run: Callable[[str, int], float]) -> dict[str, float]:
    """Best figure per driver over ``rounds``, the drivers alternating which goes first."""
    best = dict.fromkeys(DRIVERS, 0.0)
    for r in range(rounds):
        for driver in DRIVERS if r % 2 == 0 else tuple(reversed(DRIVERS)):
            best[driver] = max(best[driver], run(driver, r))
    return best


def main() -> None:
    """Run both workloads with both drivers and print the figures and the psycopg / psycopg2 ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()

    ctx = Context.create("flashdeal_bench_driver", fresh=True)
    users = make_users(ctx, 200)
    deal_id = make_deal(ctx, 10**9)
    dbs = {d: Database(ctx.settings.with_(database_url=driver_url(ctx.settings.database_url, d))) for d in DRIVERS}
    for db in dbs.values():  # connect and warm both pools outside the timing
        with db.read() as s:
            s.execute(text("SELECT 1"))

    inserts = best_of(a.rounds, lambda d, _r: insert_rate(dbs[d], deal_id, users, a.batches, a.batch_size))
    reads = best_of(a.rounds, lambda d, _r: read_rate(dbs[d], users, a.reads))
    rows: list[dict[str, object]] = [
        {
            "workload": f"drain batch insert ({a.batch_size} rows a statement), rows/s",
            "psycopg 3": round(inserts["psycopg"]),
            "psycopg2": round(inserts["psycopg2"]),
            "psycopg 3 / psycopg2": round(inserts["psycopg"] / inserts["psycopg2"], 2),
        },
        {
            "workload": "my-orders read (50 newest), reads/s",
            "psycopg 3": round(reads["psycopg"]),
            "psycopg2": round(reads["psycopg2"]),
            "psycopg 3 / psycopg2": round(reads["psycopg"] / reads["psycopg2"], 2),
        },
    ]
    save("driver", rows, {"params": vars(a)})
    for db in dbs.values():
        db.engine.dispose()
    ctx.cleanup()


if __name__ == "__main__":
    main()
