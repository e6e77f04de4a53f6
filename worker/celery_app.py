"""The Celery application, configured from ``celeryconfig.py``; no Flask here."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from worker.context import after_fork

app = Celery("flashdeal", include=["worker.tasks"])
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _dispose_after_fork(**_: Any) -> None:
    """A pool process must not reuse the parent's database or Redis sockets."""
    after_fork()
