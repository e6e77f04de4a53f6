"""Deals: admin management, validation, roles, the Redis cache and live stock."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from shared.cache import LocalCopies
from tests.helpers import ORIGIN, PASSWORD, deal_body, email_of, iso_in, make_deal, make_users, new_user_client


@contextmanager
def count_deal_queries(engine) -> Iterator[list[str]]:
    """Record SQL statements that read the deals table."""
    seen: list[str] = []
    lock = threading.Lock()

    def before(conn, cursor, statement, params, context, executemany) -> None:
        if "FROM deals" in statement:
            with lock:
                seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


BAD_DEALS = [
    ({"ends_at": iso_in(-10)}, "ends_at"),
    ({"starts_at": iso_in(100), "ends_at": iso_in(50)}, "ends_at"),
    ({"stock": 0}, "stock"),
    ({"stock": "ten"}, "stock"),
    ({"per_user_limit": 0}, "per_user_limit"),
    ({"price": 0}, "price"),
    ({"price": "-1"}, "price"),
    ({"price": "abc"}, "price"),
    ({"price": True}, "price"),
    ({"starts_at": "2026-12-01T10:00:00"}, "starts_at"),
    ({"starts_at": "tomorrow"}, "starts_at"),
    ({"title": ""}, "title"),
    ({"title": "t" * 201}, "title"),
    ({"colour": "red"}, "colour"),
    ({"product_id": 99999999}, "product_id"),
]


@pytest.mark.parametrize(("over", "field"), BAD_DEALS)
def test_admin_create_validation(app, db, over, field) -> None:
    c = new_user_client(app, db, "admin")
    r = c.post("/api/admin/deals", json=deal_body(**over))
    assert r.status_code == 422, r.json
    assert field in r.json["error"]["message"]


def test_roles(app, db, client) -> None:
    buyer = new_user_client(app, db)
    deal = make_deal(db, app.extensions["flashdeal"].gate)
    for path, body in [
        ("/api/admin/deals", deal_body()),
        (f"/api/admin/deals/{deal.id}/open", None),
        (f"/api/admin/deals/{deal.id}/close", None),
    ]:
        # Each call carries its proof of origin (web/origin.py), so what answers is the role check.
        assert client.post(path, json=body, headers=ORIGIN).status_code == 401
        r = buyer.post(path, json=body, headers=ORIGIN)
        assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    assert buyer.get(f"/api/admin/deals/{deal.id}/stats").status_code == 403
    assert client.get(f"/api/admin/deals/{deal.id}/stats").status_code == 401


def test_admin_actions_refuse_a_plain_form_post_even_from_an_admin(app, db) -> None:
    """What a same-site page could make an admin's browser send: a form post, cookie attached."""
    admin = new_user_client(app, db, "admin")
    deal = make_deal(db, app.extensions["flashdeal"].gate, starts_in=600)
    for path in (f"/api/admin/deals/{deal.id}/open", f"/api/admin/deals/{deal.id}/close"):
        r = admin.post(path, data={}, content_type="application/x-www-form-urlencoded")
        assert r.status_code == 415, (path, r.status_code)
        r = admin.post(path)  # no body at all, as <form method=post> with no fields can also send
        assert r.status_code == 403 and r.json["error"]["code"] == "origin_required", (path, r.status_code)
    assert admin.get(f"/api/deals/{deal.id}").json["status"] == "scheduled"  # neither moved the deal
    r = admin.post("/api/admin/deals", data={"title": "Lamp"}, content_type="multipart/form-data")
    assert r.status_code == 415
    assert admin.post(f"/api/admin/deals/{deal.id}/open", headers=ORIGIN).json["status"] == "open"


def test_a_demoted_admin_loses_admin_rights_within_the_role_cache(app, db) -> None:
    from sqlalchemy import update

    from shared.models import User
    from web.access import ROLE_CACHE_SECONDS

    (uid,) = make_users(db, 1, role="admin")
    admin = app.test_client()
    assert admin.post("/api/auth/login", json={"email": email_of(db, uid), "password": PASSWORD}).status_code == 200
    deal = make_deal(db, app.extensions["flashdeal"].gate)
    assert admin.get(f"/api/admin/deals/{deal.id}/stats").status_code == 200
    with db.transaction() as s:
        s.execute(update(User).where(User.id == uid).values(role="buyer"))
    deadline = time.monotonic() + ROLE_CACHE_SECONDS + 5
    while admin.get(f"/api/admin/deals/{deal.id}/stats").status_code == 200:
        assert time.monotonic() < deadline, "the session's role still grants admin rights"
        time.sleep(0.2)
    # The same session, unchanged: now refused everywhere an admin right is checked.
    assert admin.post(f"/api/admin/deals/{deal.id}/close", headers=ORIGIN).status_code == 403
    assert admin.get(f"/admin/deals/{deal.id}").status_code == 403


def test_create_open_close_stats(app, db) -> None:
    admin = new_user_client(app, db, "admin")
    r = admin.post("/api/admin/deals", json=deal_body(starts_at=iso_in(600), ends_at=iso_in(1200)))
    assert r.status_code == 201
    deal = r.json
    assert deal["status"] == "scheduled" and deal["remaining_stock"] == 10 and deal["price"] == "19.90"
    buyer = new_user_client(app, db)
    assert buyer.post(f"/api/deals/{deal['id']}/orders", json={"quantity": 1}).json["error"]["code"] == "deal_not_open"
    assert admin.post(f"/api/admin/deals/{deal['id']}/open", headers=ORIGIN).json["status"] == "open"
    assert buyer.post(f"/api/deals/{deal['id']}/orders", json={"quantity": 2}).status_code == 202
    stats = admin.get(f"/api/admin/deals/{deal['id']}/stats").json
    assert stats == {
        "id": deal["id"],
        "title": "Lamp",
        "status": "open",
        "total_stock": 10,
        "remaining_stock": 8,
        "accepted": 1,
        "confirmed": 0,
        "canceled": 0,
        "pending": 1,
        "failed": 0,
        "paid": 0,
        "expired": 0,
    }
    assert admin.post(f"/api/admin/deals/{deal['id']}/close", headers=ORIGIN).json["status"] == "ended"
    r = buyer.post(f"/api/deals/{deal['id']}/orders", json={"quantity": 1})
    assert r.status_code == 409 and r.json["error"]["code"] == "deal_not_open"
    r = admin.post(f"/api/admin/deals/{deal['id']}/open", headers=ORIGIN)
    assert r.status_code == 409
    assert admin.post("/api/admin/deals/987654321/open", headers=ORIGIN).status_code == 404
    assert admin.get("/api/admin/deals/987654321/stats").status_code == 404


def test_list_filter_and_paging(app, db) -> None:
    gate = app.extensions["flashdeal"].gate
    tag = uuid.uuid4().hex[:6]
    opened = [make_deal(db, gate, title=f"open-{tag}-{i}") for i in range(3)]
    later = make_deal(db, gate, starts_in=3000, title=f"later-{tag}")
    c = app.test_client()
    items = c.get("/api/deals?status=open&per_page=100").json["items"]
    ids = {i["id"] for i in items}
    assert {d.id for d in opened} <= ids and later.id not in ids
    assert later.id in {i["id"] for i in c.get("/api/deals?status=scheduled&per_page=100").json["items"]}
    page = c.get("/api/deals?per_page=2&page=1").json
    assert len(page["items"]) == 2 and page["total"] >= 4
    for bad in ("status=nope", "page=0", "per_page=1000", "page=x", "foo=1"):
        r = c.get(f"/api/deals?{bad}")
        assert r.status_code == 422, bad
    assert c.get("/api/deals/123456789").status_code == 404


def test_detail_cache_hit_touches_no_postgres_and_stock_is_live(app, db) -> None:
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5)
    c = app.test_client()
    assert c.get(f"/api/deals/{deal.id}").json["remaining_stock"] == 5  # fills the cache
    (user,) = make_users(db, 1)
    with count_deal_queries(svc.db.engine) as queries:
        for expected in (4, 3, 2):
            svc.gate.admit(deal.id, user, 1, str(uuid.uuid4()))
            r = c.get(f"/api/deals/{deal.id}").json
            assert r["remaining_stock"] == expected
        svc.gate.admit(deal.id, user, 2, str(uuid.uuid4()))
        assert c.get(f"/api/deals/{deal.id}").json["status"] == "sold_out"
        assert c.get("/api/deals?per_page=100").status_code == 200
        assert c.get("/api/deals?per_page=100").status_code == 200
    assert len(queries) <= 1, queries  # only the first list build may query


def test_many_simultaneous_misses_rebuild_once(app, db) -> None:
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate)
    svc.redis.delete(svc.keys.deal_cache(deal.id))
    barrier = threading.Barrier(16)

    def get(_):
        barrier.wait()
        return app.test_client().get(f"/api/deals/{deal.id}").status_code

    with count_deal_queries(svc.db.engine) as queries, ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(get, range(16)))
    assert codes == [200] * 16
    assert len(queries) == 1, f"{len(queries)} rebuilds"


def test_public_reads_do_not_read_the_session(app, db) -> None:
    """A logged-in buyer's list and detail requests skip the session read; /api/me still reads it."""
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate)
    c = new_user_client(app, db)
    store = app.session_interface
    reads: list[str] = []
    original = store._retrieve_session_data
    store._retrieve_session_data = lambda store_id: reads.append(store_id) or original(store_id)
    assert c.get(f"/api/deals/{deal.id}").status_code == 200
    assert c.get("/api/deals").status_code == 200
    assert reads == []
    assert c.get("/api/me").json["id"]
    assert len(reads) == 1
    assert c.get(f"/api/deals/{deal.id}").status_code == 200 and len(reads) == 1
    assert c.get("/api/me").status_code == 200  # the cookie still works: nothing was reset


def test_local_copies_age_out_and_stay_bounded() -> None:
    clock = [100.0]
    copies = LocalCopies(seconds=1.0, size=2, clock=lambda: clock[0])
    copies.put("v1", [1])
    assert copies.get("v1") == [1] and copies.get("v2") is None
    clock[0] += 1.01
    assert copies.get("v1") is None  # too old: the caller fetches it again
    copies.put("v1", [1])
    copies.put("v2", [2])
    copies.put("v3", [3])  # full: older versions are dropped, never more than size kept
    assert copies.get("v3") == [3] and len(copies._copies) <= 2
