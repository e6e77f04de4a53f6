"""The Celery application, configured from the worker's settings by ``celeryconfig.celery_config``; no Flask here."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, beat_init, celeryd_init, worker_process_init

from celeryconfig import celery_config
from shared.redis import refuse_evicting_redis
from worker.context import after_fork, worker_settings
from worker.logs import quiet_routine_tasks

app = Celery("flashdeal", include=["worker.tasks"])
# Why a promise (Celery calls it when it first needs its configuration): `celery -A worker ...` imports this
# module before any command runs, and no module reads settings at import.
app.add_defaults(lambda: celery_config(worker_settings()))


@celeryd_init.connect
@beat_init.connect
def _refuse_evicting_redis(**_: Any) -> None:
    """Workers and beat refuse to start on a Redis that may evict gate keys, as web nodes do."""
    refuse_evicting_redis(worker_settings())


@worker_process_init.connect
def _dispose_after_fork(**_: Any) -> None:
    """A pool process must not reuse the parent's database or Redis sockets."""
    after_fork()


@after_setup_logger.connect
def _quiet_routine_tasks(**_: Any) -> None:
    """The tasks beat sends are routine: they announce themselves at DEBUG in workers and beat (worker/logs.py)."""
    quiet_routine_tasks(entry["task"] for entry in app.conf.beat_schedule.values())
