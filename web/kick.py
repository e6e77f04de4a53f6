"""Sending drain tasks from a web node: only when a gate script set the deal's kick flag (shared/kick.py)."""

from __future__ import annotations

import logging
import threading

from celery import Celery

from celeryconfig import celery_config
from shared.settings import Settings
from shared.task_names import DRAIN_DEAL

log = logging.getLogger(__name__)


class DrainKicks:
    """The drain-task sender of one web app: the broker and queue of the settings given to ``create_app``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: Celery | None = None
        self._lock = threading.Lock()

    @property
    def producer(self) -> Celery:
        """A producer-only Celery app configured like the workers (routes, JSON, broker), made at the first kick."""
        with self._lock:
            if self._producer is None:
                app = Celery("flashdeal-web", set_as_current=False)
                app.config_from_object(celery_config(self._settings))
                self._producer = app
            return self._producer

    def send(self, deal_id: int) -> None:
        """Ask a worker to drain a deal's outbox now.

        Best effort by design: the order is already accepted and safe in the outbox, and beat
        drains every live deal each second, so a broker hiccup must never fail the request.
        """
        try:
            self.producer.send_task(DRAIN_DEAL, args=[deal_id], retry=False)
        except Exception:
            log.warning("drain kick for deal %s not sent; beat will drain it", deal_id, exc_info=True)
