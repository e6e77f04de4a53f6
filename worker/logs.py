"""Log levels of the worker and beat: routine periodic tasks at DEBUG, failures and state changes as they are."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery.app import trace

# What beat sends every second (reconcile every 30 s), sale or no sale, is routine: the "received", "succeeded"
# and "Sending due task" lines of those tasks would be several INFO lines a second per worker, and `make up`'s
# URLs and credentials would scroll away within seconds. The tasks log their own warnings, and tick its state
# moves. Drains that web nodes kick (flashdeal.drain_deal) run only while orders arrive and keep their INFO lines.

# The loggers that announce every task: the worker's "received" and "succeeded", beat's "Sending due task".
_ANNOUNCERS = ("celery.worker.strategy", "celery.app.trace", "celery.beat")
# Only these announcements are demoted: a retry, a failure or anything else Celery says stays as it is.
_ROUTINE_MESSAGES = (trace.LOG_RECEIVED, trace.LOG_SUCCESS, "Scheduler: Sending due task %s (%s)")


def _names(args: Any) -> set[str]:
    """Task names among a log record's arguments (a context dict for the worker, a tuple for beat)."""
    if isinstance(args, dict):
        return {str(args.get("name", ""))}
    if isinstance(args, tuple):
        return {a for a in args if isinstance(a, str)}
    return set()


class RoutineAtDebug(logging.Filter):
    """Turns the "received"/"succeeded"/"sending" lines of routine tasks into DEBUG records; all else passes."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: frozenset[str] = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote a routine task's announcement; keep it only when DEBUG is enabled."""
        if record.levelno >= logging.WARNING or record.msg not in _ROUTINE_MESSAGES:
            return True
        if not (_names(record.args) & self.tasks):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = RoutineAtDebug()


def quiet_routine_tasks(tasks: Iterable[str]) -> None:
    """Install the filter on Celery's announcing loggers for these task names (idempotent)."""
    _FILTER.tasks = frozenset(tasks)
    for name in _ANNOUNCERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
