"""Reading deal rows so that one unreadable row is skipped and reported, never fatal to the others.

The API refuses every value PostgreSQL would store but Python cannot read back (shared/bounds.py),
but a row written some other way (by hand, by an older release) could still hold one, such as
a timestamp past year 9999 or 'infinity'. psycopg then fails the whole query that returns it,
which would take down the deal list, the home page and the scheduler's tick for every deal.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from shared.models import Deal

log = logging.getLogger(__name__)


class UnreadableDeal(Exception):
    """A deal row holds a value that cannot be read (reported in the log)."""


def get_readable(session: Session, deal_id: int) -> Deal | None:
    """``session.get(Deal, deal_id)``; UnreadableDeal when the row exists but cannot be read."""
    try:
        # A savepoint: the failed read must not spoil the caller's transaction.
        with session.begin_nested():
            return session.get(Deal, deal_id)
    except DataError as exc:
        log.error("deal %s cannot be read and is skipped: %s", deal_id, exc.orig)
        raise UnreadableDeal(deal_id) from exc


def readable_deals(session: Session, stmt: Select[Any]) -> tuple[list[Deal], list[int]]:
    """The deals ``stmt`` selects and the ids of those that cannot be read (skipped, logged).

    One query as long as every row reads; only when one does not, the ids are selected with
    the same criteria (an id always reads) and the rows are read one by one.
    """
    try:
        with session.begin_nested():
            return list(session.scalars(stmt).unique().all()), []
    except DataError:
        pass
    ids = session.scalars(stmt.with_only_columns(Deal.id)).all()
    deals: list[Deal] = []
    skipped: list[int] = []
    for deal_id in ids:
        try:
            deal = get_readable(session, deal_id)
        except UnreadableDeal:
            skipped.append(deal_id)
            continue
        if deal is not None:
            deals.append(deal)
    return deals, skipped
