"""The outbox drain, in-process: batches, redelivery, claims, cancels, poison entries and dead letters."""

from __future__ import annotations

import uuid

import pytest
import redis
from sqlalchemy import text

from shared.gate import Admission, Cancellation, Gate
from shared.keys import Keys
from tests.helpers import make_deal, make_users
from worker.dlq import drop_dead_letter, list_dead_letters, retry_dead_letters
from worker.drain import DrainOptions, drain_deal


@pytest.fixture()
def gate(settings, rds) -> Gate:
    return Gate(rds, Keys(settings.key_prefix), settings.drain_kick_ms)


def _opts(**over) -> DrainOptions:
    base = {"batch_size": 100, "claim_idle_ms": 200, "max_attempts": 2, "budget_s": 10.0}
    base.update(over)
    return DrainOptions(**base)


def _drain(db, gate: Gate, deal_id: int, consumer: str = "t1", **over):
    return drain_deal(db, gate.redis, gate.keys, deal_id, consumer, _opts(**over))


def _admit(gate: Gate, deal_id: int, users: list[int], qty: int = 1) -> list[str]:
    ids = []
    for u in users:
        r = gate.admit(deal_id, u, qty, str(uuid.uuid4()))
        assert r.outcome == Admission.ACCEPTED
        ids.append(r.order_id)
    return ids


def _rows(db, deal_id: int) -> dict[str, tuple[str, int, object]]:
    with db.read() as s:
        rows = s.execute(
            text("SELECT id, status, quantity, canceled_at FROM orders WHERE deal_id = :d"), {"d": deal_id}
        ).all()
    return {str(r[0]): (r[1], r[2], r[3]) for r in rows}


def test_batches_persist_every_order_once_and_trim_the_outbox(db, gate) -> None:
    users = make_users(db, 250)
    deal = make_deal(db, gate, stock=1000, limit=2)
    ids = _admit(gate, deal.id, users, qty=2)
    res = _drain(db, gate, deal.id)
    assert (res.persisted, res.batches, res.entries, res.dead_lettered) == (250, 3, 250, 0)
    rows = _rows(db, deal.id)
    assert set(rows) == set(ids) and all(r[0] == "confirmed" and r[1] == 2 for r in rows.values())
    k = gate.keys.deal(deal.id)
    assert gate.redis.xlen(k.outbox) == 0
    assert gate.redis.xpending(k.outbox, gate.keys.drain_group)["pending"] == 0
    with db.read() as s:
        admitted, persisted = s.execute(
            text("SELECT min(admitted_at), min(persisted_at) FROM orders WHERE deal_id = :d"), {"d": deal.id}
        ).one()
    assert admitted is not None and persisted >= admitted
    assert _drain(db, gate, deal.id).entries == 0


def test_entries_of_a_dead_consumer_are_claimed_and_a_redelivery_writes_nothing_twice(db, gate) -> None:
    users = make_users(db, 30)
    deal = make_deal(db, gate, stock=100)
    ids = _admit(gate, deal.id, users)
    k = gate.keys.deal(deal.id)
    gate.redis.xgroup_create(k.outbox, gate.keys.drain_group, id="0", mkstream=True)
    # A "ghost" worker reads 10 entries and dies before acking them.
    held = gate.redis.xreadgroup(gate.keys.drain_group, "ghost", {k.outbox: ">"}, count=10)[0][1]
    assert len(held) == 10
    first = _drain(db, gate, deal.id, claim_idle_ms=60_000)
    assert first.persisted == 20 and gate.redis.xlen(k.outbox) == 10  # not idle long enough: left alone
    # Simulate "committed, then killed before XACK": write the ghost's rows, leave the entries pending.
    res = _drain(db, gate, deal.id, claim_idle_ms=0)
    assert res.claimed == 10 and res.persisted == 10
    assert set(_rows(db, deal.id)) == set(ids)
    # The same entries delivered again (XADD copies) are no-ops.
    for _, fields in held:
        gate.redis.xadd(k.outbox, fields)
    again = _drain(db, gate, deal.id)
    assert again.entries == 10 and again.persisted == 0 and len(_rows(db, deal.id)) == 30


def test_cancel_before_and_after_persistence_is_canceled_exactly_once(db, gate) -> None:
    users = make_users(db, 3)
    deal = make_deal(db, gate, stock=10, limit=1)
    before, after = _admit(gate, deal.id, users[:2])
    k = gate.keys.deal(deal.id)
    assert gate.cancel(deal.id, before, users[0]).outcome == Cancellation.CANCELED  # order + cancel in one batch
    _drain(db, gate, deal.id, budget_s=10)
    rows = _rows(db, deal.id)
    assert rows[before][0] == "canceled" and rows[after][0] == "confirmed"
    assert gate.cancel(deal.id, after, users[1]).outcome == Cancellation.CANCELED  # after its row exists
    res = _drain(db, gate, deal.id)
    assert res.canceled == 1
    first_ct = _rows(db, deal.id)[after][2]
    assert _rows(db, deal.id)[after][0] == "canceled" and first_ct is not None
    # The same cancel delivered twice changes nothing (canceled_at stays the first one).
    last = gate.redis.xrange(k.outbox)  # empty: trimmed
    assert last == []
    fields = {"t": "c", "id": after, "u": str(users[1]), "q": "1", "p": "9.99", "ts": "1", "ct": "9999999999999"}
    gate.redis.xadd(k.outbox, fields)
    assert _drain(db, gate, deal.id).canceled == 0
    assert _rows(db, deal.id)[after][2] == first_ct
    # Cancel processed before its order (the order sits in a dead worker's batch): stays canceled.
    (ghost,) = _admit(gate, deal.id, [users[2]])
    held = gate.redis.xreadgroup(gate.keys.drain_group, "ghost", {k.outbox: ">"}, count=1)[0][1]
    assert held[0][1]["id"] == ghost and held[0][1]["t"] == "o"
    assert gate.cancel(deal.id, ghost, users[2]).outcome == Cancellation.CANCELED
    assert _drain(db, gate, deal.id, claim_idle_ms=60_000).canceled == 1
    assert _rows(db, deal.id)[ghost][0] == "canceled"
    res = _drain(db, gate, deal.id, claim_idle_ms=0)
    assert res.claimed == 1 and res.persisted == 0
    assert _rows(db, deal.id)[ghost][0] == "canceled"


def test_poison_entries_are_dead_lettered_and_the_rest_persisted(db, gate) -> None:
    users = make_users(db, 50)
    deal = make_deal(db, gate, stock=100)
    good = _admit(gate, deal.id, users)
    # A buyer the database does not know (the gate cannot check): a foreign-key refusal.
    ghost_user = 2_000_000_000 + int(uuid.uuid4().int % 1_000_000)
    (poison,) = _admit(gate, deal.id, [ghost_user])
    k = gate.keys.deal(deal.id)
    garbage = gate.redis.xadd(k.outbox, {"t": "o", "id": str(uuid.uuid4()), "u": "1", "q": "lots", "p": "1", "ts": "1"})
    remaining = gate.live(deal.id).remaining
    res = _drain(db, gate, deal.id)
    assert res.persisted == 50 and res.dead_lettered == 2
    assert set(_rows(db, deal.id)) == set(good)
    assert gate.redis.xlen(k.outbox) == 0  # dead letters are acked too
    letters = {d.order_id: d for d in list_dead_letters(db, deal.id)}
    assert set(letters) >= {poison}
    assert "ForeignKeyViolation" in letters[poison].reason and letters[poison].attempts == 2
    assert any(d.entry_id == garbage and "unparsable" in d.reason for d in letters.values())
    # Retry while the cause is still there: still failing, kept.
    rep = retry_dead_letters(db, deal.id)
    assert rep.retried == 2 and rep.persisted == [] and poison in rep.still_failing
    # Drop: the gate gives the stock back, once; the letter goes.
    drop = drop_dead_letter(db, gate, poison)
    assert drop.found and drop.stock_returned
    assert gate.live(deal.id).remaining == remaining + 1
    assert not drop_dead_letter(db, gate, poison)
    _drain(db, gate, deal.id)  # the gate's cancel entry for the dropped order: nothing left to hold
    assert poison not in {d.order_id for d in list_dead_letters(db, deal.id)}
    assert gate.live(deal.id).remaining == remaining + 1


def test_retry_persists_a_letter_once_its_cause_is_fixed(db, gate) -> None:
    deal = make_deal(db, gate, stock=10)
    uid = 2_100_000_000 + int(uuid.uuid4().int % 1_000_000)
    (oid,) = _admit(gate, deal.id, [uid])
    assert gate.cancel(deal.id, oid, uid).outcome == Cancellation.CANCELED
    res = _drain(db, gate, deal.id)
    assert res.dead_lettered >= 1
    (letter,) = [d for d in list_dead_letters(db, deal.id) if d.order_id == oid]
    assert letter.kind == "c"  # the cancel merged into the order's letter
    with db.transaction() as s:
        s.execute(
            text("INSERT INTO users (id, email, password_hash, name) VALUES (:id, :e, 'x', 'late')"),
            {"id": uid, "e": f"late-{uid}@example.com"},
        )
    rep = retry_dead_letters(db, deal.id)
    assert rep.persisted == [oid] and not rep.still_failing
    assert _rows(db, deal.id)[oid][0] == "canceled"
    assert list_dead_letters(db, deal.id) == []


def test_entries_neither_utf8_nor_storable_are_dead_lettered_without_blocking(db, settings, gate) -> None:
    # The worker's client replaces undecodable bytes (worker/context.py); a strict one would fail every read.
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, encoding_errors="replace")
    raw = redis.Redis.from_url(settings.redis_url)
    users = make_users(db, 1)
    deal = make_deal(db, gate, stock=10)
    (good,) = _admit(gate, deal.id, users)
    k = gate.keys.deal(deal.id)
    raw.xadd(k.outbox, {b"t": b"o", b"id": b"\xff\xfe", b"u": b"1", b"q": b"1", b"p": b"1", b"ts": b"1"})
    nul = str(uuid.uuid4())
    raw.xadd(k.outbox, {"t": "o", "id": nul, "u": "1\x00", "q": "1", "p": "1", "ts": "1"})
    res = drain_deal(db, client, gate.keys, deal.id, "t1", _opts())
    assert (res.persisted, res.dead_lettered, res.entries) == (1, 2, 3)
    assert client.xlen(k.outbox) == 0 and set(_rows(db, deal.id)) == {good}
    letters = {d.order_id: d for d in list_dead_letters(db, deal.id)}
    assert "raw" in letters[nul].payload and "repr" in letters[nul].reason


@pytest.mark.parametrize("payment_window", [0, 300], ids=["plain", "payment-window"])
def test_poison_order_canceled_while_a_dead_worker_held_it(db, gate, payment_window: int) -> None:
    # With a payment window the gate's record ends in "|canceled|pay_by": the drain reads it with the one
    # parser (shared/order_record.py), so the letter is a cancel there too and claims no units.
    from worker.reconcile import reconcile_deal

    deal = make_deal(db, gate, stock=10, payment_window=payment_window)
    uid = 2_200_000_000 + int(uuid.uuid4().int % 1_000_000)
    (oid,) = _admit(gate, deal.id, [uid])
    k = gate.keys.deal(deal.id)
    gate.redis.xgroup_create(k.outbox, gate.keys.drain_group, id="0", mkstream=True)
    gate.redis.xreadgroup(gate.keys.drain_group, "ghost", {k.outbox: ">"}, count=1)  # holds the order
    assert gate.cancel(deal.id, oid, uid).outcome == Cancellation.CANCELED
    first = _drain(db, gate, deal.id, claim_idle_ms=60_000)  # only the cancel: refused, nothing to hold yet
    assert first.entries == 1 and first.dead_lettered == 0
    second = _drain(db, gate, deal.id, claim_idle_ms=0)  # the order, claimed: refused, letter says canceled
    assert second.claimed == 1 and second.dead_lettered == 1
    (letter,) = list_dead_letters(db, deal.id)
    assert letter.kind == "c" and "ct" in letter.payload
    r = reconcile_deal(db, gate.redis, gate.keys, deal.id)
    assert r is not None and r.ok and r.dead_letter_qty == 0 and r.expected_remaining == 10
    with db.transaction() as s:
        s.execute(
            text("INSERT INTO users (id, email, password_hash, name) VALUES (:id, :e, 'x', 'late')"),
            {"id": uid, "e": f"late-{uid}@example.com"},
        )
    assert retry_dead_letters(db, deal.id).persisted == [oid]
    assert _rows(db, deal.id)[oid][0] == "canceled"
