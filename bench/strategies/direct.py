"""The same four strategies without HTTP: a pool of processes and threads calling ``Strategy.order`` directly.

Separates the admission mechanism from the Flask/granian cost every strategy pays alike in the HTTP comparison.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from typing import Any

from bench.strategies import STRATEGIES, Deps
from shared.db import Database
from shared.gate import Gate
from shared.keys import Keys
from shared.redis import text_client
from shared.settings import Settings


def _process(key: str, env: dict[str, str], deal_id: int, user_ids: list[int], seconds: float, threads: int,
             out: Any) -> None:  # fmt: skip
    """One client process: ``threads`` threads calling order() in a loop until the deadline."""
    os.environ.update(env)  # the Celery producers of (3) and (4) read the bench broker and queue from here
    settings = Settings.from_env(env)
    deps = Deps(Database(settings, pool_size=threads, max_overflow=0),
                Gate(text_client(settings), Keys(settings.key_prefix)))  # fmt: skip
    strategy = STRATEGIES[key](deps, deal_id)
    lat: list[float] = []
    counts = {"accepted": 0, "refused": 0, "errors": 0}
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop(i: int) -> None:
        n = i
        mine: list[float] = []
        acc = ref = err = 0
        while (t := time.perf_counter()) < deadline:
            n += threads
            try:
                if strategy.order(user_ids[n % len(user_ids)]):
                    acc += 1
                else:
                    ref += 1
            except Exception:  # noqa: BLE001 - an error is a result here, counted and reported
                err += 1
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)
            counts["accepted"] += acc
            counts["refused"] += ref
            counts["errors"] += err

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(seconds + 30)
    out.put({**counts, "latencies": lat})


def run_direct(
    key: str, env: dict[str, str], deal_id: int, user_ids: list[int], seconds: float, processes: int, threads: int
) -> dict[str, Any]:
    """Run the client pool against one strategy; returns counts and all latencies (seconds)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process, args=(key, env, deal_id, user_ids, seconds, threads, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    merged: dict[str, Any] = {"accepted": 0, "refused": 0, "errors": 0, "latencies": []}
    for r in results:
        for k in ("accepted", "refused", "errors"):
            merged[k] += r[k]
        merged["latencies"] += r["latencies"]
    return merged
