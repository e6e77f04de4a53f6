"""The buyers' in-flight index and deal-naming order ids: lookups never walk other deals or read an outbox."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from shared.order_ids import deal_of
from shared.outbox_entry import inflight_member, parse_inflight_member
from tests.helpers import ORIGIN, login_client, make_deal, make_users
from worker.drain import DrainOptions, drain_deal


@contextmanager
def redis_commands() -> Iterator[list[tuple[str, ...]]]:
    """Record every command sent through redis-py clients (plain calls and pipelines) in this thread."""
    seen: list[tuple[str, ...]] = []
    me = threading.get_ident()
    plain, piped = redis.Redis.execute_command, redis.client.Pipeline.execute

    def execute_command(self, *args, **options):
        if threading.get_ident() == me:
            seen.append(tuple(str(a) for a in args))
        return plain(self, *args, **options)

    def execute(self, *args, **kwargs):
        if threading.get_ident() == me:
            seen.extend(tuple(str(a) for a in cmd[0]) for cmd in self.command_stack)
        return piped(self, *args, **kwargs)

    redis.Redis.execute_command, redis.client.Pipeline.execute = execute_command, execute
    try:
        yield seen
    finally:
        redis.Redis.execute_command, redis.client.Pipeline.execute = plain, piped


def _touched(seen: list[tuple[str, ...]], key: str) -> bool:
    return any(key in cmd for cmd in seen)


def _fill(svc, deal_id: int, user_id: int, n: int) -> None:
    """n accepted orders of one buyer, admitted in pipelines (what a busy sale leaves in the outbox)."""
    keys = svc.keys.deal(deal_id).gate_keys()
    sha = svc.gate._admit.sha
    for start in range(0, n, 1000):
        pipe = svc.redis.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            pipe.evalsha(sha, len(keys), *keys, user_id, 1, f"00000000-0000-4000-8000-{i:012d}", "", 100)
        assert all(r[0] == "accepted" for r in pipe.execute())


def test_my_orders_finds_an_order_behind_a_long_outbox(app, db, svc) -> None:
    deal = make_deal(db, svc.gate, stock=20_000, limit=20_000)
    crowd, me = make_users(db, 2)
    _fill(svc, deal.id, crowd, 10_050)  # the workers are down or behind: nothing drains
    c = login_client(app, db, me)
    mine = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    items = c.get("/api/orders").json["items"]
    assert [(o["order_id"], o["status"]) for o in items] == [(mine, "accepted")]
    assert c.get(f"/api/orders/{mine}").json["status"] == "accepted"


def test_order_lookup_and_my_orders_read_no_outbox_and_no_other_deal(app, db, svc) -> None:
    mine_deal = make_deal(db, svc.gate, stock=10, limit=5)
    other_deal = make_deal(db, svc.gate, stock=10, limit=5)
    (uid,) = make_users(db, 1)
    c = login_client(app, db, uid)
    oid = c.post(f"/api/deals/{mine_deal.id}/orders", json={"quantity": 2}).json["order_id"]
    c.post(f"/api/deals/{other_deal.id}/orders", json={"quantity": 1})
    assert deal_of(oid) == mine_deal.id  # the id names its deal
    mine, other = svc.keys.deal(mine_deal.id), svc.keys.deal(other_deal.id)
    with redis_commands() as seen:
        assert c.get(f"/api/orders/{oid}").json["status"] == "accepted"
    assert _touched(seen, mine.orders)
    assert not any(_touched(seen, k) for k in other.all_keys()), seen
    with redis_commands() as seen:
        assert len(c.get("/api/orders").json["items"]) == 2
    assert not _touched(seen, mine.outbox) and not _touched(seen, other.outbox), seen


def test_the_index_follows_the_outbox_through_cancel_and_drain(app, db, svc) -> None:
    deal = make_deal(db, svc.gate, stock=10, limit=5)
    a, b = make_users(db, 2)
    ca, cb = login_client(app, db, a), login_client(app, db, b)
    first = ca.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    second = ca.post(f"/api/deals/{deal.id}/orders", json={"quantity": 2}).json["order_id"]
    cb.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
    assert ca.post(f"/api/orders/{first}/cancel", headers=ORIGIN).json["status"] == "canceled"
    k = svc.keys.deal(deal.id)
    assert svc.redis.zcard(k.inflight) == 4  # three orders and one cancel in flight
    # The members the scripts spell are the ones the drain removes and the reader parses (shared/outbox_entry.py).
    entries = svc.redis.xrange(k.outbox)
    assert set(svc.redis.zrange(k.inflight, 0, -1)) == {inflight_member(f) for _, f in entries}
    assert {parse_inflight_member(inflight_member(f)) for _, f in entries} == {(f["id"], f["t"]) for _, f in entries}
    want = {first: "canceled", second: "accepted"}
    assert {o["order_id"]: o["status"] for o in ca.get("/api/orders").json["items"]} == want
    assert len(cb.get("/api/orders").json["items"]) == 1  # only the buyer's own
    drain_deal(db, svc.redis, svc.keys, deal.id, "t-index", DrainOptions(batch_size=2, budget_s=10.0))
    assert svc.redis.zcard(k.inflight) == 0 and svc.redis.xlen(k.outbox) == 0
    want = {first: "canceled", second: "confirmed"}
    assert {o["order_id"]: o["status"] for o in ca.get("/api/orders").json["items"]} == want
