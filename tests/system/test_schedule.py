"""Scheduled deal lifecycle driven by a real Celery beat and worker (no eager mode): open, sell out, end, retire."""

from __future__ import annotations

import uuid

from harness.waits import wait_until
from shared.deals import tick
from shared.gate import Admission, Gate
from shared.keys import Keys
from shared.models import Deal, Order
from shared.redis import text_client
from tests.helpers import deal_keys_in_redis, make_deal, make_users


def _status(db, deal_id: int) -> str:
    with db.read() as s:
        return s.get(Deal, deal_id).status


def test_deal_opens_sells_out_and_ends_on_schedule(celery_procs, db, settings, client) -> None:
    gate = Gate(text_client(settings), Keys(settings.key_prefix))
    celery_procs.worker("sched")
    celery_procs.beat()
    later = make_deal(db, None, stock=2, limit=2, starts_in=4, lasts=4, status="scheduled")
    ending = make_deal(db, None, stock=5, limit=5, starts_in=2, lasts=30, status="scheduled")
    assert gate.live(later.id) is None  # not loaded yet: only beat does that
    # loaded ahead of its start, still refusing orders
    assert wait_until(lambda: gate.live(later.id) is not None, 10)
    (user,) = make_users(db, 1)
    assert gate.admit(later.id, user, 1, str(uuid.uuid4())).outcome is Admission.DEAL_NOT_OPEN
    assert client.get(f"/api/deals/{later.id}").json["status"] == "scheduled"
    # opens at starts_at: the gate admits, PostgreSQL and the cached API follow within a tick
    assert wait_until(lambda: gate.admit(later.id, user, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED, 8, 0.05)
    assert wait_until(lambda: _status(db, later.id) == "open", 5)
    assert client.get(f"/api/deals/{later.id}").json["status"] == "open"
    # sells out
    assert gate.admit(later.id, user, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED
    assert wait_until(lambda: _status(db, later.id) == "sold_out", 5)
    assert client.get(f"/api/deals/{later.id}").json["status"] == "sold_out"
    # ends at ends_at
    assert wait_until(lambda: _status(db, later.id) == "ended", 10)
    assert client.get(f"/api/deals/{later.id}").json["status"] == "ended"
    assert _status(db, ending.id) == "open"
    (other,) = make_users(db, 1)
    assert gate.admit(ending.id, other, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED


def test_tick_is_idempotent_and_never_resets_live_stock(db, settings) -> None:
    gate = Gate(text_client(settings), Keys(settings.key_prefix))
    deal = make_deal(db, None, stock=10, limit=10, starts_in=-1, status="scheduled")
    report = tick(db, gate)
    # Only this test's deal: every test starts on empty tables (conftest's ``isolated``).
    assert report.loaded == [deal.id] and report.opened == [deal.id]
    (user,) = make_users(db, 1)
    assert gate.admit(deal.id, user, 4, str(uuid.uuid4())).outcome is Admission.ACCEPTED
    for _ in range(3):  # a restart, a second beat: the sale in progress is untouched
        again = tick(db, gate)
        assert deal.id not in again.loaded
    assert gate.live(deal.id).remaining == 6


def test_beat_retires_ended_deals_by_itself(celery_procs, db, svc) -> None:
    gate = svc.gate
    env = {"DEAL_RETIRE_AFTER_SECONDS": "0"}
    celery_procs.worker("retirer", env)
    celery_procs.beat(env)
    deal = make_deal(db, gate, stock=3, limit=3, starts_in=-1, lasts=2)
    (uid,) = make_users(db, 1)
    assert gate.admit(deal.id, uid, 3, "00000000-0000-4000-8000-0000000000b1").outcome is Admission.ACCEPTED

    # Ends at ends_at, drained by the safety net, retired: no one calls anything.
    def retired() -> bool:
        with db.read() as s:
            return s.get(Deal, deal.id).retired_at is not None and not deal_keys_in_redis(gate, deal.id)

    assert wait_until(retired, 20)
    assert deal.id not in gate.live_deal_ids()
    with db.read() as s:
        assert s.get(Order, "00000000-0000-4000-8000-0000000000b1").status == "confirmed"
