"""State changes racing each other, each interleaving forced deterministically with a hook."""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis
from sqlalchemy import event, text, update
from sqlalchemy.orm import Session

import shared.cache
from shared.cache import invalidate_deal, read_through
from shared.deals import close_now, deal_stats, open_now
from shared.gate import Admission, Gate
from shared.models import Deal, Order
from tests.environment import ROOT
from tests.helpers import make_deal, make_users
from web import create_app


def _waiting_on_a_row_lock(db) -> bool:
    """True when some session of this database waits for a lock (e.g. SELECT … FOR UPDATE)."""
    with db.engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar()
        )


def test_a_close_between_open_now_commit_and_its_gate_load_is_not_undone(db, svc, monkeypatch) -> None:
    gate = svc.gate
    deal = make_deal(db, gate, stock=5, limit=1, starts_in=600, status="scheduled")
    closer = threading.Thread(target=close_now, args=(db, gate, deal.id))
    real_load = Gate.load

    def load_after_a_close(self, rules, initial_stock, *rest):
        if rules.deal_id == deal.id and not closer.is_alive() and closer.ident is None:
            # open_now has committed "open": an admin's close lands now, before the gate is loaded. It either
            # runs to its end or waits for open_now's row lock; either way we go on once it is settled.
            closer.start()
            deadline = time.monotonic() + 20
            while closer.is_alive() and not _waiting_on_a_row_lock(db) and time.monotonic() < deadline:
                time.sleep(0.01)
        return real_load(self, rules, initial_stock, *rest)

    monkeypatch.setattr(Gate, "load", load_after_a_close)
    open_now(db, gate, deal.id)
    closer.join(20)
    assert not closer.is_alive()
    with db.read() as s:
        assert s.get(Deal, deal.id).status == "ended"
    # The close stands in the gate too: it refuses, instead of reopening with the window open_now read.
    assert gate.live(deal.id).rules.status == "ended"
    (uid,) = make_users(db, 1)
    assert gate.admit(deal.id, uid, 1, str(uuid.uuid4())).outcome is Admission.DEAL_NOT_OPEN


def _manage():
    spec = importlib.util.spec_from_file_location("flashdeal_manage", ROOT / "scripts" / "manage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_seed_never_loads_the_gate_for_a_deal_whose_commit_failed(db, settings, svc, monkeypatch) -> None:
    manage = _manage()
    monkeypatch.setenv("FLASHDEAL_KEY_PREFIX", settings.key_prefix)
    with db.transaction() as s:  # any running demo deal ends, so the seed creates one
        s.execute(update(Deal).where(Deal.title == manage.DEMO_TITLE).values(status="ended"))
    loaded: list[int] = []
    real_load = Gate.load

    def recording_load(self, rules, initial_stock, *rest):
        loaded.append(rules.deal_id)
        return real_load(self, rules, initial_stock, *rest)

    def refuse_commit(session: Session) -> None:
        if any(isinstance(o, Deal) and o.title == manage.DEMO_TITLE for o in session.identity_map.values()):
            raise RuntimeError("the database refused the commit")

    monkeypatch.setattr(Gate, "load", recording_load)
    event.listen(Session, "before_commit", refuse_commit)
    try:
        with pytest.raises(RuntimeError, match="refused the commit"):
            manage.seed()
    finally:
        event.remove(Session, "before_commit", refuse_commit)
    with db.read() as s:
        ghosts = [d for d in loaded if s.get(Deal, d) is None]
        unknown = [d for d in svc.gate.live_deal_ids() if s.get(Deal, d) is None]
    assert ghosts == [] and unknown == []  # the gate holds no deal PostgreSQL does not have
    manage.seed()  # and with a working database the demo deal is there, open, in both
    with db.read() as s:
        demo = s.query(Deal).filter(Deal.title == manage.DEMO_TITLE, Deal.status == "open").one()
    assert svc.gate.live(demo.id) is not None


def test_a_seeded_deal_is_listed_at_once_not_after_the_cache_ttl(app, db, settings, monkeypatch) -> None:
    """The seed publishes its deal as the admin API does (shared/deals.py: publish_deal): the caches are dropped."""
    manage = _manage()
    monkeypatch.setenv("FLASHDEAL_KEY_PREFIX", settings.key_prefix)
    with db.transaction() as s:
        s.execute(update(Deal).where(Deal.title == manage.DEMO_TITLE).values(status="ended"))
    c = app.test_client()
    assert c.get("/api/deals?status=open&per_page=100").status_code == 200  # the list is cached now
    manage.seed()
    with db.read() as s:
        demo = s.query(Deal).filter(Deal.title == manage.DEMO_TITLE, Deal.status == "open").one()
    listed = c.get("/api/deals?status=open&per_page=100").json["items"]
    assert demo.id in {d["id"] for d in listed}


@contextmanager
def short_locks(monkeypatch, ms: int = 300) -> Iterator[None]:
    """Cache rebuild locks of ``ms`` milliseconds, so a slow build outlives one quickly."""
    monkeypatch.setattr(shared.cache, "LOCK_MS", ms)
    yield


def test_waiters_do_not_rebuild_while_a_slow_builder_is_alive(svc, monkeypatch) -> None:
    key = f"{svc.keys.prefix}cache:race:{uuid.uuid4().hex}"
    builds: list[float] = []

    def slow_build() -> dict:
        builds.append(time.monotonic())
        time.sleep(1.2)  # PostgreSQL is slow: four lock lifetimes
        return {"ok": True}

    with short_locks(monkeypatch), ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: read_through(svc.redis, svc.keys, key, 30, slow_build), range(8)))
    assert got == [{"ok": True}] * 8
    assert len(builds) == 1  # one query, not one more per waiter once the lock's lifetime is over


def test_a_builder_never_deletes_a_lock_that_is_not_its_own(svc, monkeypatch) -> None:
    key = f"{svc.keys.prefix}cache:race:{uuid.uuid4().hex}"
    lock = svc.keys.cache_lock(key)
    r: redis.Redis = svc.redis

    def build_while_the_lock_changes_hands() -> dict:
        # This builder's lock is lost (expired while it was paused) and another process now holds it.
        r.set(lock, "someone-elses-token", px=5000)
        return {"ok": True}

    with short_locks(monkeypatch):
        assert read_through(r, svc.keys, key, 30, build_while_the_lock_changes_hands) == {"ok": True}
    assert r.get(lock) == "someone-elses-token"


def test_the_deal_list_rebuild_is_one_sold_quantity_query(app, db, svc) -> None:
    deals = [make_deal(db, None, stock=3, limit=3, status="ended") for _ in range(4)]
    (uid,) = make_users(db, 1)
    now = datetime.now(UTC)
    with db.transaction() as s:  # persisted orders of the first deal: 2 confirmed count, the canceled one not
        for qty, status in ((1, "confirmed"), (1, "confirmed"), (1, "canceled")):
            s.add(Order(id=uuid.uuid4(), deal_id=deals[0].id, user_id=uid, quantity=qty, unit_price=Decimal("9.99"),
                        status=status, admitted_at=now))  # fmt: skip
    invalidate_deal(svc.redis, svc.keys, deals[0].id)
    seen: list[str] = []

    def before(conn, cursor, statement, params, context, executemany) -> None:
        if "FROM orders" in statement:
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    event.listen(svc.db.engine, "before_cursor_execute", before)
    try:
        items = app.test_client().get("/api/deals?per_page=100").json["items"]
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
        event.remove(svc.db.engine, "before_cursor_execute", before)
    remaining = {i["id"]: i["remaining_stock"] for i in items}
    assert [remaining[d.id] for d in deals] == [1, 3, 3, 3]
    assert len(seen) == 1, seen


def test_a_rebuild_that_takes_too_long_is_a_503_not_one_more_query(app, svc, db, monkeypatch) -> None:
    deal = make_deal(db, svc.gate, stock=3, limit=3)
    monkeypatch.setattr(shared.cache, "WAIT_MAX_S", 0.3)
    key = svc.keys.deal_cache(deal.id)
    list_key = svc.keys.deal_list_cache(int(svc.redis.get(svc.keys.deal_list_version) or 0))
    locks = [svc.keys.cache_lock(k) for k in (key, list_key)]
    svc.redis.delete(key, list_key)
    for lock in locks:
        svc.redis.set(lock, "a-live-builder", px=10_000)  # another node is rebuilding
    try:
        for fast in (True, False):
            c = create_app(svc.settings.with_(fast_path=fast)).test_client()
            for path in (f"/api/deals/{deal.id}", "/api/deals"):
                r = c.get(path)
                assert r.status_code == 503 and r.json["error"]["code"] == "unavailable", (fast, path, r.json)
                assert r.headers["Retry-After"] == "1"
    finally:
        svc.redis.delete(*locks)
    assert app.test_client().get(f"/api/deals/{deal.id}").status_code == 200  # the builder gone: one rebuilds


def test_deal_stats_reads_one_snapshot_while_orders_come_in(db, svc, monkeypatch) -> None:
    gate = svc.gate
    deal = make_deal(db, gate, stock=2, limit=1)
    first, last = make_users(db, 2)
    assert gate.admit(deal.id, first, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED
    real_execute = redis.client.Pipeline.execute
    me, fired = threading.get_ident(), []

    def execute_then_sell_the_last_unit(self, *args, **kwargs):
        replies = real_execute(self, *args, **kwargs)
        if threading.get_ident() == me and not fired:
            fired.append(True)  # between deal_stats's first Redis read and whatever it reads next
            assert gate.admit(deal.id, last, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED
        return replies

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute_then_sell_the_last_unit)
    stats = deal_stats(db, gate, deal.id)
    monkeypatch.setattr(redis.client.Pipeline, "execute", real_execute)
    assert fired
    # One moment: the status agrees with the remaining stock and the admissions counted with it.
    assert (stats.status == "sold_out") == (stats.remaining_stock == 0), stats
    assert stats.remaining_stock + stats.accepted == stats.total_stock, stats
