"""Sending drain tasks from a web node: once per kick interval per deal, never once per order."""

from __future__ import annotations

import logging
import threading

from celery import Celery

log = logging.getLogger(__name__)

DRAIN_TASK = "flashdeal.drain_deal"

_producer: Celery | None = None
_lock = threading.Lock()


def _celery() -> Celery:
    """A producer-only Celery app configured like the workers (routes, JSON, broker)."""
    global _producer
    with _lock:
        if _producer is None:
            app = Celery("flashdeal-web")
            app.config_from_object("celeryconfig")
            _producer = app
        return _producer


def kick_drain(deal_id: int) -> None:
    """Ask a worker to drain a deal's outbox now.

    Best effort by design: the order is already accepted and safe in the outbox, and beat
    drains every live deal each second, so a broker hiccup must never fail the request.
    """
    try:
        _celery().send_task(DRAIN_TASK, args=[deal_id], retry=False)
    except Exception:
        log.warning("drain kick for deal %s not sent; beat will drain it", deal_id, exc_info=True)
