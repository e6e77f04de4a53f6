"""Prometheus metrics of a worker node, served over HTTP by the node's main process.

Loaded into a worker with ``celery -A worker worker -I worker.metrics`` (the Procfile does):
it only connects Celery signals, so the tasks themselves stay free of metrics code.

- Counters and histograms are updated in the pool processes from ``task_prerun`` /
  ``task_postrun`` (the task's return value). prometheus-client's multiprocess mode writes them
  to files in ``PROMETHEUS_MULTIPROC_DIR`` (one private directory per node, ``scripts/proc``),
  and the main process adds the files up at every scrape.
- Figures that are state, not events (outbox backlog and age per deal, stock remaining per
  deal, dead letters), are read from Redis and PostgreSQL at scrape time: always current, and
  correct whichever node is scraped.
- Without ``PROMETHEUS_MULTIPROC_DIR`` only the scrape-time figures are right (a warning says so).
- The HTTP server starts in the main process on ``WORKER_METRICS_PORT`` (no server if unset or
  0) and binds ``WORKER_METRICS_ADDR`` (default 127.0.0.1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from celery import signals
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from shared.settings import Settings
from shared.wiring import Stores, build
from worker.context import worker_settings

log = logging.getLogger(__name__)

DRAIN_TASKS = frozenset({"flashdeal.drain_deal", "flashdeal.drain_active"})

PERSISTED = Counter(
    "flashdeal_orders_persisted_total",
    "Outbox entries written to PostgreSQL by the drain tasks, by kind (order, cancel).",
    ["kind"],
)
for _kind in ("order", "cancel"):
    PERSISTED.labels(_kind)  # pre-created at 0: rate() then sees the first orders too
DEAD_LETTERED = Counter("flashdeal_orders_dead_lettered_total", "Outbox entries moved to the dead-letter store.")
UNREPLICATED = Counter(
    "flashdeal_drain_unreplicated_total",
    "Outbox entries read but left pending, uncommitted, because too few replicas held them yet.",
)
DRAIN_BATCH = Histogram(
    "flashdeal_drain_batch_size",
    "Outbox entries handled by one drain task run.",
    buckets=(0, 1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
DRAIN_LATENCY = Histogram(
    "flashdeal_drain_duration_seconds",
    "Wall time of one drain task run.",
    ["task"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TASKS = Counter(
    "flashdeal_worker_tasks_total", "Tasks run by this node, by task name and final state.", ["task", "state"]
)
RECONCILE_CONSISTENT = Gauge(
    "flashdeal_reconcile_consistent",
    "1 when the latest reconcile found the deal's stock and buyers' totals as expected, 0 otherwise "
    "(a missing stock key included).",
    ["deal"],
    multiprocess_mode="mostrecent",
)
# The latest reconcile's drift per deal (Redis stock minus what PostgreSQL + outbox imply).
RECONCILE_DRIFT = Gauge(
    "flashdeal_reconcile_drift",
    "Stock drift found by the latest reconcile run, per deal (0 = consistent).",
    ["deal"],
    multiprocess_mode="mostrecent",
)
RECONCILE_RUNS = Counter("flashdeal_reconcile_runs_total", "Reconcile task runs.")

_started: dict[str, float] = {}


def _number(data: dict[str, Any], *names: str) -> int:
    """The first integer field present among names (tolerates shapes of the drain report)."""
    for name in names:
        value = data.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            return int(value)
    return 0


def _as_dict(value: Any) -> dict[str, Any] | None:
    """A task's return value as a dict, if it is one (or a dataclass-like object)."""
    if isinstance(value, dict):
        return value
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "__dict__"):
        return dict(vars(value))
    return None


def record_drain(task_name: str, retval: Any, seconds: float) -> None:
    """Count what one drain run did, from its return value."""
    DRAIN_LATENCY.labels(task_name).observe(seconds)
    reports: list[dict[str, Any]] = []
    data = _as_dict(retval)
    if data is not None:
        # drain_active may return one report per deal under a key, or a mapping deal -> report.
        nested = data.get("deals", data.get("reports"))
        if isinstance(nested, dict):
            reports = [d for d in (_as_dict(v) for v in nested.values()) if d is not None]
        elif isinstance(nested, list):
            reports = [d for d in (_as_dict(v) for v in nested) if d is not None]
        else:
            reports = [data]
    elif isinstance(retval, list):
        reports = [d for d in (_as_dict(v) for v in retval) if d is not None]
    for r in reports:
        orders = _number(r, "inserted", "persisted", "orders")
        cancels = _number(r, "canceled", "cancels")
        dead = _number(r, "dead_lettered", "dead", "dlq")
        batch = _number(r, "entries", "read", "handled", "batch")
        if orders:
            PERSISTED.labels("order").inc(orders)
        if cancels:
            PERSISTED.labels("cancel").inc(cancels)
        if dead:
            DEAD_LETTERED.inc(dead)
        if unreplicated := _number(r, "unreplicated"):
            UNREPLICATED.inc(unreplicated)
        handled = batch or orders + cancels + dead
        if handled:  # the once-a-second safety net mostly finds nothing: zeros would drown the histogram
            DRAIN_BATCH.observe(handled)


def record_reconcile(retval: Any) -> None:
    """Set the drift gauge per deal from a reconcile run's reports."""
    RECONCILE_RUNS.inc()
    data = _as_dict(retval)
    items: Iterable[Any]
    if isinstance(retval, list):
        items = retval
    elif data is not None and isinstance(data.get("deals") or data.get("reports"), list):
        items = data.get("deals") or data.get("reports") or []
    elif data is not None:
        items = [data]
    else:
        items = []
    for item in items:
        r = _as_dict(item)
        if r is None or r.get("deal_id") is None:
            continue
        RECONCILE_DRIFT.labels(str(r["deal_id"])).set(_number(r, "drift"))
        # A missing stock has no drift number (None): this gauge says it, and a buyers' total mismatch too.
        RECONCILE_CONSISTENT.labels(str(r["deal_id"])).set(1 if r.get("ok", r.get("drift") == 0) else 0)


@signals.task_prerun.connect
def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is not None and task.name in DRAIN_TASKS and task_id:
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _on_postrun(
    task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    if task is None:
        return
    start = _started.pop(task_id or "", None)
    try:
        TASKS.labels(task.name, state or "UNKNOWN").inc()
        if state != "SUCCESS":
            return
        if task.name in DRAIN_TASKS:
            record_drain(task.name, retval, time.perf_counter() - start if start is not None else 0.0)
        elif task.name == "flashdeal.reconcile":
            record_reconcile(retval)
    except Exception:  # metrics must never fail a task
        log.exception("worker metrics: cannot record %s", task.name)


class LiveCollector(Collector):
    """State read at scrape time: outbox backlog and age, stock remaining, dead letters."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._stores: Stores | None = None

    def _context(self) -> tuple[Any, Any, Any, Any]:
        if self._stores is None:
            self._stores = build(self._settings or worker_settings(), db_options={"pool_size": 1, "max_overflow": 0})
        s = self._stores
        return s.db, s.redis, s.keys, s.gate

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the live gauges; a dependency that is down yields flashdeal_metrics_source_up 0."""
        up = GaugeMetricFamily(
            "flashdeal_metrics_source_up", "1 if the scrape could read the source (redis, postgres).", labels=["source"]
        )
        backlog = GaugeMetricFamily(
            "flashdeal_outbox_pending", "Outbox entries not yet persisted, per deal.", labels=["deal"]
        )
        age = GaugeMetricFamily(
            "flashdeal_outbox_lag_seconds",
            "Age of the oldest outbox entry not yet persisted, per deal.",
            labels=["deal"],
        )
        stock = GaugeMetricFamily(
            "flashdeal_stock_remaining", "Remaining stock held by the gate, per live deal.", labels=["deal"]
        )
        try:
            db, client, keys, gate = self._context()
        except Exception:
            log.exception("worker metrics: cannot build clients")
            return
        try:
            deal_ids = sorted(gate.live_deal_ids())
            now = time.time()
            for deal_id, (pending, oldest, remaining) in zip(deal_ids, self._read(client, keys, deal_ids), strict=True):
                label = [str(deal_id)]
                backlog.add_metric(label, pending)
                age.add_metric(label, max(0.0, now - oldest) if oldest is not None else 0.0)
                if remaining is not None:
                    stock.add_metric(label, remaining)
            up.add_metric(["redis"], 1)
            yield backlog
            yield age
            yield stock
        except Exception as exc:
            log.warning("worker metrics: redis unreadable: %s", exc)
            up.add_metric(["redis"], 0)
        try:
            from sqlalchemy import func, select

            from shared.models import DeadLetter

            with db.read() as s:
                count = int(s.scalar(select(func.count()).select_from(DeadLetter)) or 0)
            yield GaugeMetricFamily("flashdeal_dead_letters", "Orders in the dead-letter store.", value=count)
            up.add_metric(["postgres"], 1)
        except Exception as exc:
            log.warning("worker metrics: postgres unreadable: %s", exc)
            up.add_metric(["postgres"], 0)
        yield up

    @staticmethod
    def _read(client: Any, keys: Any, deal_ids: list[int]) -> list[tuple[int, float | None, int | None]]:
        """Per deal: (outbox entries, time of the oldest in s, stock), in one round trip.

        The drain XDELs an entry in the same MULTI as its XACK, so everything still in the
        stream is not persisted yet: XLEN is the backlog and the first entry's id (its XADD
        time in ms) dates the oldest.
        """
        pipe = client.pipeline(transaction=False)
        for deal_id in deal_ids:
            k = keys.deal(deal_id)
            pipe.xlen(k.outbox)
            pipe.xrange(k.outbox, count=1)
            pipe.get(k.stock)
        replies = pipe.execute()
        out: list[tuple[int, float | None, int | None]] = []
        for i in range(len(deal_ids)):
            length, first, stock = replies[3 * i : 3 * i + 3]
            oldest = int(str(first[0][0]).split("-")[0]) / 1000.0 if first else None
            out.append((int(length or 0), oldest, int(stock) if stock is not None else None))
        return out


def registry(settings: Settings | None = None) -> CollectorRegistry:
    """Registry of the node's HTTP server: all pool processes' files (or this process) plus the live gauges."""
    settings = settings or worker_settings()
    if settings.prometheus_multiproc_dir:
        reg = CollectorRegistry()
        MultiProcessCollector(reg, path=settings.prometheus_multiproc_dir)
    else:
        reg = REGISTRY
    reg.register(LiveCollector(settings))
    return reg


@signals.worker_init.connect
def _start_server(**_: Any) -> None:
    """Start the metrics HTTP server in the node's main process, once."""
    settings = worker_settings()
    port, addr = settings.worker_metrics_port, settings.worker_metrics_addr
    if port == 0:
        return
    if not settings.prometheus_multiproc_dir:
        # Pool processes would count in their own memory, which this server cannot see.
        log.warning("worker metrics: PROMETHEUS_MULTIPROC_DIR is not set; task counters will read 0 (use scripts/proc)")
    start_http_server(port, addr=addr, registry=registry(settings))
    log.info("worker metrics on http://%s:%d/metrics", addr, port)
