"""Prometheus metrics of a web node: requests and latency by endpoint, admissions by outcome.

With several server worker processes per instance (granian ``--workers N``), each process
only sees its own counters. prometheus-client's multiprocess mode fixes that: every process
writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (one private, emptied directory per
instance: ``scripts/proc`` sets it up) and ``/metrics`` adds up the files of all processes.
Without the variable (tests, ``flask run``) the process's own registry is served.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from shared.gate import Admission
from web.services import services

# Buckets sized for a path that answers in about a millisecond and must never take a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter(
    "flashdeal_http_requests_total",
    "HTTP requests answered, by endpoint (URL rule), method and status.",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "flashdeal_http_request_duration_seconds",
    "Time from request start to response, by endpoint (URL rule) and method.",
    ["endpoint", "method"],
    buckets=LATENCY_BUCKETS,
)
ADMISSIONS = Counter(
    "flashdeal_admissions_total",
    "Order attempts by gate outcome (accepted, sold_out, limit_exceeded, deal_not_open, ...).",
    ["outcome"],
)

PAYMENT_EVENTS = Counter(
    "flashdeal_payment_events_total",
    "Payment provider events by what the gate decided (paid, refund, duplicate, declined, ignored, ...).",
    ["outcome"],
)
UNREPLICATED = Counter(
    "flashdeal_ack_unreplicated_total",
    "Admissions and cancels answered before ORDER_ACK_REPLICAS replicas confirmed them (WAIT timed out).",
    ["op"],
)
REDIS_FULL = Counter(
    "flashdeal_redis_full_total",
    "Requests answered 503 because Redis refused a write for memory (OOM: maxmemory reached, noeviction).",
)
QUEUE = Counter(
    "flashdeal_queue_answers_total",
    "Waiting-room joins and polls by the state answered (waiting, admitted, sold_out, ...; pow_refused).",
    ["state"],
)
QUEUE_ADMITTED = Counter("flashdeal_queue_let_in_total", "Buyers the waiting room's inlet let in (seen by polls).")

bp = Blueprint("metrics", __name__)


def record_redis_full() -> None:
    """Count one request refused because Redis is full."""
    REDIS_FULL.inc()


@functools.cache
def _queue(state: str) -> Any:
    return QUEUE.labels(state=state)


def record_queue(state: str, let_in: int = 0) -> None:
    """Count one waiting-room answer by state (bounded: the script's states), and buyers the inlet let in."""
    _queue(state).inc()
    if let_in:
        QUEUE_ADMITTED.inc(let_in)


def record_payment_event(outcome: str) -> None:
    """Count one webhook event by its outcome (bounded: the Settlement values plus 'ignored')."""
    PAYMENT_EVENTS.labels(outcome=outcome).inc()


# Labelled series looked up once: ``labels()`` takes a lock and validates on every call, which
# costs more than the increment itself on the order path. Label values are bounded (URL rules,
# methods, statuses, outcomes), so the caches stay small.
@functools.cache
def _admissions(outcome: str) -> Any:
    return ADMISSIONS.labels(outcome=outcome)


@functools.cache
def _latency(endpoint: str, method: str) -> Any:
    return LATENCY.labels(endpoint, method)


@functools.cache
def _requests(endpoint: str, method: str, status: int) -> Any:
    return REQUESTS.labels(endpoint, method, str(status))


def record_unreplicated(op: str) -> None:
    """Count one write (``order``, ``cancel`` or ``payment``) acknowledged on the primary alone."""
    _unreplicated(op).inc()


@functools.cache
def _unreplicated(op: str) -> Any:
    return UNREPLICATED.labels(op=op)


def record_admission(outcome: str) -> None:
    """Count one order attempt by outcome; the order view calls this once per attempt."""
    _admissions(str(outcome)).inc()


def _endpoint_label() -> str:
    """The matched URL rule (``/api/deals/<int:deal_id>``), never the raw path: bounded label values."""
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def record_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency (Flask's hooks and the fast path)."""
    _latency(endpoint, method).observe(seconds)
    _requests(endpoint, method, status).inc()


def _before() -> None:
    g._metrics_start = time.perf_counter()


def _after(response: Response) -> Response:
    start = g.pop("_metrics_start", None)
    if start is not None:
        record_request(_endpoint_label(), request.method, response.status_code, time.perf_counter() - start)
    return response


def registry(multiproc_dir: str) -> CollectorRegistry:
    """The registry to expose: all processes' files in multiprocess mode (PROMETHEUS_MULTIPROC_DIR), else this one's."""
    if multiproc_dir:
        # A fresh registry per scrape, as prometheus-client's multiprocess docs prescribe.
        reg = CollectorRegistry()
        MultiProcessCollector(reg, path=multiproc_dir)
        return reg
    return REGISTRY


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of this instance (all its server processes)."""
    reg = registry(services().settings.prometheus_multiproc_dir)
    return Response(generate_latest(reg), content_type=CONTENT_TYPE_LATEST)


def init_metrics(app: Flask) -> None:
    """Time and count every request and serve ``/metrics``."""
    for outcome in Admission:
        # Pre-create the series so dashboards and rate() see zeros rather than gaps.
        ADMISSIONS.labels(outcome=outcome.value)
    app.before_request(_before)
    app.after_request(_after)
    app.register_blueprint(bp)
