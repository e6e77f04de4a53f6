"""The Lua stock gate under concurrency, on the real Redis: no oversell, no duplicate, no lost order."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis.crc import key_slot

from shared.gate import Admission, Cancellation, Gate
from shared.keys import Keys
from shared.order_record import order_record, parse_order_record
from shared.redis import text_client
from tests.helpers import make_deal, make_users


@pytest.fixture()
def gate(settings) -> Gate:
    return Gate(text_client(settings), Keys(settings.key_prefix), kick_ms=100)


def _outbox_orders(gate: Gate, deal_id: int) -> list[dict[str, str]]:
    return [f for _id, f in gate.redis.xrange(gate.keys.deal(deal_id).outbox) if f["t"] == "o"]


def test_1000_attempts_500_users_stock_100_limit_1(db, gate) -> None:
    deal = make_deal(db, gate, stock=100, limit=1)
    users = make_users(db, 500)
    # two attempts per user; a third of the users repeat the same Idempotency-Key
    attempts = []
    for u in users:
        key = f"k-{u}"
        repeat = u % 3 == 0
        attempts.append((u, key if repeat else ""))
        attempts.append((u, key if repeat else ""))
    random.shuffle(attempts)

    def attempt(a: tuple[int, str]):
        return a[0], a[1], gate.admit(deal.id, a[0], 1, str(uuid.uuid4()), a[1])

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(attempt, attempts))

    accepted = [r for _u, _k, r in results if r.outcome is Admission.ACCEPTED]
    assert len(accepted) == 100
    assert len({r.order_id for r in accepted}) == 100
    outcomes = Counter(r.outcome for _u, _k, r in results)
    assert set(outcomes) <= {Admission.ACCEPTED, Admission.REPLAY, Admission.SOLD_OUT, Admission.LIMIT_EXCEEDED}
    # replays name an accepted order of the same user
    by_user = {}
    for u, _k, r in results:
        if r.outcome is Admission.ACCEPTED:
            assert u not in by_user, "a user got two orders with limit 1"
            by_user[u] = r.order_id
    for u, _k, r in results:
        if r.outcome is Admission.REPLAY:
            assert by_user[u] == r.order_id
    assert int(gate.redis.get(gate.keys.deal(deal.id).stock)) == 0
    buyers = gate.redis.hgetall(gate.keys.deal(deal.id).buyers)
    assert all(int(v) <= 1 for v in buyers.values()) and sum(int(v) for v in buyers.values()) == 100
    outbox = _outbox_orders(gate, deal.id)
    assert sorted(f["id"] for f in outbox) == sorted(by_user.values())
    assert gate.redis.hlen(gate.keys.deal(deal.id).orders) == 100


def test_quantities_above_one(db, gate) -> None:
    deal = make_deal(db, gate, stock=100, limit=3)
    users = make_users(db, 300)
    attempts = [(random.choice(users), random.randint(1, 3)) for _ in range(1000)]

    def attempt(a: tuple[int, int]):
        return a[0], a[1], gate.admit(deal.id, a[0], a[1], str(uuid.uuid4()))

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(attempt, attempts))
    accepted = [(u, q) for u, q, r in results if r.outcome is Admission.ACCEPTED]
    sold = sum(q for _u, q in accepted)
    stock = int(gate.redis.get(gate.keys.deal(deal.id).stock))
    assert stock >= 0 and stock + sold == 100
    assert stock < 3  # demand far above supply: at most a remainder smaller than some refused quantity
    per_user = Counter()
    for u, q in accepted:
        per_user[u] += q
    assert max(per_user.values()) <= 3
    outbox = _outbox_orders(gate, deal.id)
    assert len(outbox) == len(accepted) and sum(int(f["q"]) for f in outbox) == sold
    buyers = {int(k): int(v) for k, v in gate.redis.hgetall(gate.keys.deal(deal.id).buyers).items()}
    assert buyers == dict(per_user)


def test_concurrent_cancels_return_stock_once(db, gate) -> None:
    deal = make_deal(db, gate, stock=10, limit=5)
    (user,) = make_users(db, 1)
    order = gate.admit(deal.id, user, 4, str(uuid.uuid4()))
    assert order.outcome is Admission.ACCEPTED and order.remaining == 6
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: gate.cancel(deal.id, order.order_id, user), range(40)))
    outcomes = Counter(r.outcome for r in results)
    assert outcomes[Cancellation.CANCELED] == 1 and outcomes[Cancellation.ALREADY_CANCELED] == 39
    k = gate.keys.deal(deal.id)
    assert int(gate.redis.get(k.stock)) == 10
    assert int(gate.redis.hget(k.buyers, user)) == 0
    cancels = [f for _i, f in gate.redis.xrange(k.outbox) if f["t"] == "c"]
    assert len(cancels) == 1 and cancels[0]["id"] == order.order_id


def test_cancel_by_someone_else_is_not_found(db, gate) -> None:
    deal = make_deal(db, gate, stock=5, limit=1)
    owner, other = make_users(db, 2)
    order = gate.admit(deal.id, owner, 1, str(uuid.uuid4()))
    assert gate.cancel(deal.id, order.order_id, other).outcome is Cancellation.NOT_FOUND
    assert gate.cancel(deal.id, order.order_id, other, admin=True).outcome is Cancellation.CANCELED


def test_gate_survives_script_flush(db, gate) -> None:
    deal = make_deal(db, gate, stock=3, limit=3)
    (user,) = make_users(db, 1)
    assert gate.admit(deal.id, user, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED
    gate.redis.script_flush()
    assert gate.admit(deal.id, user, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED
    gate.redis.script_flush()
    order = gate.admit(deal.id, user, 1, str(uuid.uuid4()))
    assert order.outcome is Admission.ACCEPTED
    gate.redis.script_flush()
    assert gate.cancel(deal.id, order.order_id, user).outcome is Cancellation.CANCELED


def test_a_resent_admission_is_admitted_once(db, gate) -> None:
    """The client resends an admission whose reply was lost: the same order id must not sell twice."""
    deal = make_deal(db, gate, stock=5, limit=5)
    (user,) = make_users(db, 1)
    oid = str(uuid.uuid4())
    first = gate.admit(deal.id, user, 2, oid)
    again = gate.admit(deal.id, user, 2, oid)
    # The resend is the same attempt: answered as the first run was (accepted), not as a replay, sold once.
    assert first.outcome is Admission.ACCEPTED and again.outcome is Admission.ACCEPTED and again.order_id == oid
    k = gate.keys.deal(deal.id)
    assert int(gate.redis.get(k.stock)) == 3 and int(gate.redis.hget(k.buyers, str(user))) == 2
    assert [f["id"] for f in _outbox_orders(gate, deal.id)] == [oid]


def test_admission_survives_a_dropped_connection(db, gate) -> None:
    """Redis closes the gate's connection (restart, idle kill): the next order still goes through, once."""
    deal = make_deal(db, gate, stock=5, limit=5)
    (user,) = make_users(db, 1)
    assert gate.admit(deal.id, user, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED
    conn_id = gate.direct.call("CLIENT", "ID")  # the connection this thread's admissions use
    assert gate.redis.client_kill_filter(_id=conn_id) == 1
    assert gate.admit(deal.id, user, 1, str(uuid.uuid4())).outcome is Admission.ACCEPTED
    assert int(gate.redis.get(gate.keys.deal(deal.id).stock)) == 3
    assert len(_outbox_orders(gate, deal.id)) == 2


def test_window_and_limits(db, gate) -> None:
    later = make_deal(db, gate, stock=5, limit=2, starts_in=60)
    (user,) = make_users(db, 1)
    assert gate.admit(later.id, user, 1, str(uuid.uuid4())).outcome is Admission.DEAL_NOT_OPEN
    assert gate.admit(999_999_999, user, 1, str(uuid.uuid4())).outcome is Admission.DEAL_NOT_OPEN
    deal = make_deal(db, gate, stock=5, limit=2)
    assert gate.admit(deal.id, user, 3, str(uuid.uuid4())).outcome is Admission.QUANTITY_ABOVE_LIMIT
    assert gate.admit(deal.id, user, 2, str(uuid.uuid4()), "same").outcome is Admission.ACCEPTED
    assert gate.admit(deal.id, user, 1, str(uuid.uuid4())).outcome is Admission.LIMIT_EXCEEDED
    assert gate.admit(deal.id, user, 1, str(uuid.uuid4()), "same").outcome is Admission.IDEMPOTENCY_MISMATCH
    gate.set_window(deal.id, status="ended")
    # a replay still answers with the first order after the deal closed
    assert gate.admit(deal.id, user, 2, str(uuid.uuid4()), "same").outcome is Admission.REPLAY
    (other,) = make_users(db, 1)
    assert gate.admit(deal.id, other, 1, str(uuid.uuid4())).outcome is Admission.DEAL_NOT_OPEN


def test_loading_never_overwrites_live_stock(db, gate) -> None:
    from shared.deals import load_deal
    from shared.gate import Loaded
    from shared.models import Deal

    deal = make_deal(db, gate, stock=10, limit=5)
    (user,) = make_users(db, 1)
    gate.admit(deal.id, user, 4, str(uuid.uuid4()))
    with db.transaction() as s:
        assert load_deal(s, gate, s.get(Deal, deal.id)) is Loaded.LIVE
    assert int(gate.redis.get(gate.keys.deal(deal.id).stock)) == 6


def test_all_keys_of_a_deal_share_one_cluster_slot() -> None:
    for deal_id in (1, 42, 123456789):
        keys = Keys("fd:").deal(deal_id).gate_keys()
        assert len({key_slot(k.encode()) for k in keys}) == 1
    assert key_slot(Keys("fd:").deal(1).stock.encode()) != key_slot(Keys("fd:").deal(2).stock.encode())


def test_unknown_deal_is_told_apart_from_a_closed_one(db, gate) -> None:
    (user,) = make_users(db, 1)
    unknown = gate.admit(987_654_321, user, 1, str(uuid.uuid4()))
    assert unknown.outcome is Admission.DEAL_NOT_OPEN and unknown.deal_unknown
    later = make_deal(db, gate, stock=5, limit=1, starts_in=60)
    early = gate.admit(later.id, user, 1, str(uuid.uuid4()))
    assert early.outcome is Admission.DEAL_NOT_OPEN and not early.deal_unknown


@pytest.mark.parametrize("payment_window", [0, 300], ids=["plain", "payment-window"])
def test_records_the_scripts_write_parse_with_the_one_parser(db, gate, payment_window: int) -> None:
    """admit.lua and cancel.lua write the order record that shared/order_record.py builds and parses."""
    deal = make_deal(db, gate, stock=5, limit=2, price="12.50", payment_window=payment_window)
    (user,) = make_users(db, 1)
    oid = gate.admit(deal.id, user, 2, str(uuid.uuid4())).order_id
    orders = gate.keys.deal(deal.id).orders
    for state in ("accepted", "canceled"):
        rec = gate.redis.hget(orders, oid)
        live = parse_order_record(oid, deal.id, rec)
        assert (live.user_id, live.quantity, str(live.unit_price), live.state) == (user, 2, "12.50", state)
        assert live.canceled == (state == "canceled")
        assert (live.pay_by is not None) == bool(payment_window)
        fields = rec.split("|")  # the times as written (a datetime round trip may be off by a millisecond)
        admitted_ms, pay_by_ms = int(fields[3]), (int(fields[5]) if payment_window else None)
        assert order_record(user, 2, "12.50", admitted_ms, state, pay_by_ms) == rec
        if state == "accepted":
            assert gate.cancel(deal.id, oid, user).outcome is Cancellation.CANCELED
