"""The database driver: psycopg 3 is the default, and a ``postgresql+psycopg2://`` URL works the same way."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from shared.db import Database
from shared.gate import Admission, Gate
from shared.keys import Keys
from shared.models import Order
from shared.settings import Settings
from tests.helpers import make_deal, make_users
from worker.drain import DrainOptions, drain_deal
from worker.outbox import is_transient


def _psycopg2(url: str) -> str:
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def test_plain_urls_use_psycopg3_and_a_psycopg2_url_is_kept() -> None:
    assert Settings.from_env({"DATABASE_URL": "postgresql://u@h/db"}).database_url == "postgresql+psycopg://u@h/db"
    assert Settings.from_env({"DATABASE_URL": "postgresql+psycopg2://u@h/db"}).database_url == (
        "postgresql+psycopg2://u@h/db"
    )


def test_the_drain_persists_and_reads_back_through_psycopg2(settings: Settings, rds) -> None:
    """The outbox drain's batch insert and cancel upsert, and the order reads, on the psycopg2 driver."""
    db2 = Database(settings.with_(database_url=_psycopg2(settings.database_url)))
    assert db2.engine.dialect.driver == "psycopg2"
    gate = Gate(rds, Keys(settings.key_prefix), settings.drain_kick_ms)
    deal = make_deal(db2, gate, stock=10, limit=2)
    users = make_users(db2, 3)
    ids = []
    for u in users:
        r = gate.admit(deal.id, u, 2, str(uuid.uuid4()))
        assert r.outcome == Admission.ACCEPTED
        ids.append(r.order_id)
    gate.cancel(deal.id, ids[0], users[0])
    opts = DrainOptions(batch_size=100, claim_idle_ms=200, max_attempts=2, budget_s=10.0)
    result = drain_deal(db2, rds, gate.keys, deal.id, "driver-test", opts)
    assert result.persisted == 3 and result.dead_lettered == 0
    with db2.read() as s:
        rows = {str(o.id): o.status for o in s.scalars(select(Order).where(Order.deal_id == deal.id))}
    assert rows == {ids[0]: "canceled", ids[1]: "confirmed", ids[2]: "confirmed"}
    db2.dispose()


def test_an_unreachable_database_is_transient_with_psycopg2(settings: Settings) -> None:
    """The drain retries (never dead-letters) when PostgreSQL is down, whichever driver raised."""
    db2 = Database(settings.with_(database_url="postgresql+psycopg2://postgres@127.0.0.1:1/x"))
    with pytest.raises(DBAPIError) as err, db2.read() as s:
        s.execute(select(1))
    assert is_transient(err.value)
