"""Bookkeeping that must add up in every state: dead letters that later entries merge into, reconcile and the
rebuild under a concurrent ``dlq retry``, letters whose row exists, and "my orders" with dead-lettered orders."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import event, text

from shared.deals import held_by_buyer
from shared.gate import Admission, Cancellation, Gate, Settlement
from shared.keys import Keys
from tests.helpers import PASSWORD, email_of, make_deal, make_users, set_payment_window_ms
from worker.dlq import dead_letter, drop_dead_letter, list_dead_letters, retry_dead_letters
from worker.drain import DrainOptions, drain_deal
from worker.expiry import sweep
from worker.reconcile import reconcile_deal


@pytest.fixture()
def gate(settings, rds) -> Gate:
    return Gate(rds, Keys(settings.key_prefix), settings.drain_kick_ms)


def _drain(db, gate: Gate, deal_id: int) -> None:  # type: ignore[no-untyped-def]
    drain_deal(db, gate.redis, gate.keys, deal_id, "t-books", DrainOptions(100, 200, 2, 10.0))


def _admit(gate: Gate, deal_id: int, user: int) -> str:
    r = gate.admit(deal_id, user, 1, str(uuid.uuid4()))
    assert r.outcome is Admission.ACCEPTED, r
    return r.order_id


def _ghost() -> int:
    """A buyer PostgreSQL does not know: every row of theirs is refused (foreign key), so it is dead-lettered."""
    return 2_300_000_000 + int(uuid.uuid4().int % 1_000_000)


def _create_user(db, uid: int) -> None:  # type: ignore[no-untyped-def]
    """The cause fixed: the buyer exists now, so a retry can write the row."""
    with db.transaction() as s:
        s.execute(
            text("INSERT INTO users (id, email, password_hash, name) VALUES (:id, :e, 'x', 'late')"),
            {"id": uid, "e": f"late-{uid}@example.com"},
        )


def _status(db, oid: str) -> tuple[str, str | None] | None:  # type: ignore[no-untyped-def]
    with db.read() as s:
        row = s.execute(text("SELECT status, payment_id FROM orders WHERE id = :i"), {"i": oid}).first()
    return None if row is None else (row[0], row[1])


def _wait_past_pay_by(gate: Gate, deal_id: int, order_id: str) -> None:
    live = gate.find_order(order_id, deal_id)
    assert live is not None and live.pay_by is not None
    while time.time() <= live.pay_by.timestamp() + 0.002:
        time.sleep(0.01)


def test_a_payment_dead_lettered_after_its_order_leaves_the_letter_paid(db, gate) -> None:
    deal = make_deal(db, gate, stock=10, limit=5, payment_window=60)
    uid = _ghost()
    oid = _admit(gate, deal.id, uid)
    _drain(db, gate, deal.id)
    assert [d.kind for d in list_dead_letters(db, deal.id)] == ["o"]
    assert gate.settle(deal.id, "pay", oid, "e1", "pi_books").outcome is Settlement.PAID
    _drain(db, gate, deal.id)  # the payment's entry is refused too and merges into the letter
    (letter,) = list_dead_letters(db, deal.id)
    assert letter.kind == "p" and letter.payload["pid"] == "pi_books"
    r = reconcile_deal(db, gate.redis, gate.keys, deal.id)
    assert r is not None and r.ok and r.dead_letter_qty == 1, r  # a paid order holds its unit
    with db.read() as s:
        assert held_by_buyer(s, deal.id) == {uid: 1}
    # Dropping it would delete a paid order's only trace (and give its unit back): refused, the letter stays.
    drop = drop_dead_letter(db, gate, oid)
    assert drop.found and not drop.dropped and "paid" in drop.kept
    assert [d.order_id for d in list_dead_letters(db, deal.id)] == [oid]
    assert gate.live(deal.id).remaining == 9
    _create_user(db, uid)
    assert retry_dead_letters(db, deal.id).persisted == [oid]
    assert _status(db, oid) == ("paid", "pi_books")


def test_an_expiry_dead_lettered_after_its_order_leaves_the_letter_expired(db, gate) -> None:
    deal = make_deal(db, gate, stock=10, limit=5, payment_window=60)
    set_payment_window_ms(gate, deal.id, 200)
    uid = _ghost()
    oid = _admit(gate, deal.id, uid)
    _drain(db, gate, deal.id)
    _wait_past_pay_by(gate, deal.id, oid)
    assert sweep(gate, [deal.id]).expired == {deal.id: 1}
    _drain(db, gate, deal.id)
    (letter,) = list_dead_letters(db, deal.id)
    assert letter.kind == "x"
    # The unit went back at pay_by: neither reconcile nor a rebuild may count it as held.
    r = reconcile_deal(db, gate.redis, gate.keys, deal.id)
    assert r is not None and r.ok and r.dead_letter_qty == 0 and r.expected_remaining == 10, r
    with db.read() as s:
        assert held_by_buyer(s, deal.id) == {}
    drop = drop_dead_letter(db, gate, oid)
    assert drop.dropped and drop.gate_outcome is None  # nothing to give back: it was given back at pay_by
    assert gate.live(deal.id).remaining == 10 and list_dead_letters(db, deal.id) == []


@contextlib.contextmanager
def _retry_after_first(db, marker: str, action: Callable[[], object]) -> Iterator[list[bool]]:  # type: ignore[no-untyped-def]
    """Run ``action`` (on its own connection, committed) right after the first statement containing ``marker``."""
    fired: list[bool] = []

    def after(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if not fired and marker in statement:
            fired.append(True)
            action()

    event.listen(db.engine, "after_cursor_execute", after)
    try:
        yield fired
    finally:
        event.remove(db.engine, "after_cursor_execute", after)


def _dead_lettered_ghost_order(db, gate: Gate, deal_id: int) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    uid = _ghost()
    oid = _admit(gate, deal_id, uid)
    _drain(db, gate, deal_id)
    assert [d.order_id for d in list_dead_letters(db, deal_id)] == [oid]
    _create_user(db, uid)  # a retry would now turn the letter into a row
    return uid, oid


def test_reconcile_repair_reads_one_snapshot_while_a_dlq_retry_commits(db, gate) -> None:
    deal = make_deal(db, gate, stock=10, limit=5)
    _uid, oid = _dead_lettered_ghost_order(db, gate, deal.id)
    assert gate.live(deal.id).remaining == 9
    with _retry_after_first(db, "GROUP BY", lambda: retry_dead_letters(db, deal.id)) as fired:
        r = reconcile_deal(db, gate.redis, gate.keys, deal.id, repair=True)
    assert fired and _status(db, oid) == ("confirmed", None)  # the retry committed in the middle of it
    assert r is not None and r.ok and not r.repaired and r.expected_remaining == 9, r
    assert gate.live(deal.id).remaining == 9


def test_the_rebuild_reads_one_snapshot_while_a_dlq_retry_commits(db, gate) -> None:
    deal = make_deal(db, gate, stock=10, limit=5)
    uid, oid = _dead_lettered_ghost_order(db, gate, deal.id)
    with _retry_after_first(db, "GROUP BY", lambda: retry_dead_letters(db, deal.id)) as fired, db.read() as s:
        held = held_by_buyer(s, deal.id)
    assert fired and _status(db, oid) == ("confirmed", None)
    assert held == {uid: 1}  # counted once: as the letter it still was when the read began


def test_reconcile_does_not_count_a_letter_whose_row_exists(db, gate) -> None:
    deal = make_deal(db, gate, stock=10, limit=5)
    a, b = make_users(db, 2)
    k = gate.keys.deal(deal.id)
    oa, ob = _admit(gate, deal.id, a), _admit(gate, deal.id, b)
    entries = {f["id"]: (eid, f) for eid, f in gate.redis.xrange(k.outbox)}
    _drain(db, gate, deal.id)
    # b's cancel reached the outbox and its entry was dead-lettered and acked: a letter t=c beside b's row.
    assert gate.cancel(deal.id, ob, b).outcome is Cancellation.CANCELED
    ((cancel_id, cancel),) = [(eid, f) for eid, f in gate.redis.xrange(k.outbox) if f["t"] == "c"]
    gate.redis.xdel(k.outbox, cancel_id)
    with db.transaction() as s:
        # a's order entry delivered again and refused after its row was written (a letter t=o beside a's row).
        dead_letter(s, deal.id, entries[oa][0], oa, entries[oa][1], "refused on redelivery", 1)
        dead_letter(s, deal.id, cancel_id, ob, cancel, "refused", 1)
    r = reconcile_deal(db, gate.redis, gate.keys, deal.id)
    assert r is not None and r.ok and r.expected_remaining == 9 and r.dead_letter_qty == 0, r


def test_my_orders_lists_a_dead_lettered_order_as_its_page_does(app, db, gate) -> None:
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=2)
    (owner,) = make_users(db, 1)
    c = app.test_client()
    assert c.post("/api/auth/login", json={"email": email_of(db, owner), "password": PASSWORD}).status_code == 200
    kept = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    refused = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    name = f"t_refuse_{uuid.uuid4().hex[:8]}"
    # PostgreSQL refuses this one row (a constraint of the test's own), so the real drain dead-letters it.
    with db.transaction() as s:
        s.execute(text(f"ALTER TABLE orders ADD CONSTRAINT {name} CHECK (id <> '{refused}') NOT VALID"))
    try:
        _drain(db, svc.gate, deal.id)
    finally:
        with db.transaction() as s:
            s.execute(text(f"ALTER TABLE orders DROP CONSTRAINT {name}"))
    assert [d.order_id for d in list_dead_letters(db, deal.id)] == [refused]
    page = c.get(f"/api/orders/{refused}").json
    assert page["status"] == "failed"
    mine = {o["order_id"]: o for o in c.get("/api/orders").json["items"]}
    assert set(mine) == {kept, refused}
    assert mine[refused] == page and mine[kept]["status"] == "confirmed"
    svc.gate.unload(deal.id)  # the gate no longer holds the deal: the letter alone says what the order is
    assert {o["order_id"]: o["status"] for o in c.get("/api/orders").json["items"]} == {
        kept: "confirmed",
        refused: "failed",
    }
