"""Log levels of the worker and beat: routine periodic tasks at DEBUG, failures and state changes as they are."""

from __future__ import annotations

import logging
from typing import Any

# Beat sends these every second (or every 30 s) and web nodes kick drains during a sale: their "received",
# "succeeded" and "Sending due task" lines would be three INFO lines a second per worker, and `make up`'s URLs
# and credentials would scroll away within seconds. The tasks log their own warnings, and tick its state moves.
ROUTINE_TASKS = frozenset({"flashdeal.tick", "flashdeal.drain_active", "flashdeal.reconcile", "flashdeal.drain_deal"})

# The loggers that announce every task: the worker's "received" and "succeeded", beat's "Sending due task".
_ANNOUNCERS = ("celery.worker.strategy", "celery.app.trace", "celery.beat")


def _names(args: Any) -> set[str]:
    """Task names among a log record's arguments (a context dict for the worker, a tuple for beat)."""
    if isinstance(args, dict):
        return {str(args.get("name", ""))}
    if isinstance(args, tuple):
        return {a for a in args if isinstance(a, str)}
    return set()


class RoutineAtDebug(logging.Filter):
    """Turns the INFO announcements of routine tasks into DEBUG records; WARNING and above pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote a routine task's announcement; keep it only when DEBUG is enabled."""
        if record.levelno >= logging.WARNING or not (_names(record.args) & ROUTINE_TASKS):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = RoutineAtDebug()


def quiet_routine_tasks() -> None:
    """Install the filter on Celery's announcing loggers (idempotent)."""
    for name in _ANNOUNCERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
