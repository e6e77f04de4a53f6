"""Web nodes as real granian processes: what one node does, every node sees (sessions, admin changes, the
waiting room), orders through two nodes at once, metrics across a node's workers, the dev checkout over HTTP."""

from __future__ import annotations

import glob
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from prometheus_client.mmap_dict import MmapedDict

from shared.deals import set_queue
from shared.gate import Gate
from shared.keys import Keys
from shared.queue import QueueRules
from shared.redis import text_client
from tests.helpers import (
    ORIGIN,
    PASSWORD,
    deal_body,
    email_of,
    iso_in,
    login_over_http,
    make_deal,
    make_users,
    metric_value,
    unique_email,
)


def test_admin_change_seen_by_every_web_instance(web_server, db) -> None:
    a, b = web_server(), web_server()
    (admin_id,) = make_users(db, 1, role="admin")
    (buyer_id,) = make_users(db, 1)
    admin, buyer = requests.Session(), requests.Session()
    admin.post(a.url + "/api/auth/login", json={"email": email_of(db, admin_id), "password": PASSWORD})
    buyer.post(b.url + "/api/auth/login", json={"email": email_of(db, buyer_id), "password": PASSWORD})
    deal = admin.post(a.url + "/api/admin/deals", json=deal_body(starts_at=iso_in(900), ends_at=iso_in(1800))).json()

    def listed_status() -> str:
        items = buyer.get(f"{b.url}/api/deals?per_page=100").json()["items"]
        return next(i["status"] for i in items if i["id"] == deal["id"])

    assert buyer.get(f"{b.url}/api/deals/{deal['id']}").json()["status"] == "scheduled"  # B caches it
    assert listed_status() == "scheduled"  # and keeps the parsed list in its process
    admin.post(f"{a.url}/api/admin/deals/{deal['id']}/open", headers=ORIGIN)
    assert buyer.get(f"{b.url}/api/deals/{deal['id']}").json()["status"] == "open"
    assert listed_status() == "open"
    assert buyer.post(f"{b.url}/api/deals/{deal['id']}/orders", json={"quantity": 1}).status_code == 202
    assert buyer.get(f"{b.url}/api/deals/{deal['id']}").json()["remaining_stock"] == 9
    admin.post(f"{a.url}/api/admin/deals/{deal['id']}/close", headers=ORIGIN)
    assert buyer.get(f"{b.url}/api/deals/{deal['id']}").json()["status"] == "ended"
    assert listed_status() == "ended"
    r = buyer.post(f"{b.url}/api/deals/{deal['id']}/orders", json={"quantity": 1})
    assert r.status_code == 409 and r.json()["error"]["code"] == "deal_not_open"


def test_session_shared_between_two_processes(web_server) -> None:
    a, b = web_server(), web_server()
    email = unique_email()
    s = requests.Session()
    assert (
        s.post(a.url + "/api/auth/signup", json={"email": email, "password": PASSWORD, "name": "Two"}).status_code
        == 201
    )
    assert s.post(a.url + "/api/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
    # the cookie made by node A is valid on node B (the session lives in Redis)
    assert s.get(b.url + "/api/me").json()["email"] == email
    # logging out on B ends it on A too
    cookie = s.cookies.get("flashdeal_session")
    assert s.post(b.url + "/api/auth/logout", headers=ORIGIN).status_code == 204
    r = requests.get(a.url + "/api/me", cookies={"flashdeal_session": cookie})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_concurrent_http_orders_through_two_web_processes(web_server, db, settings) -> None:

    gate = Gate(text_client(settings), Keys(settings.key_prefix))
    deal = make_deal(db, gate, stock=30, limit=1)
    users = make_users(db, 60)
    nodes = [web_server(), web_server()]
    sessions = []
    for i, u in enumerate(users):
        s = requests.Session()
        assert s.post(nodes[i % 2].url + "/api/auth/login", json={"email": email_of(db, u), "password": PASSWORD}).ok
        sessions.append((u, s))
    jobs = [(u, s, nodes[(i + k) % 2].url) for k in range(4) for i, (u, s) in enumerate(sessions)]

    def buy(job):
        u, s, base = job
        return u, s.post(f"{base}/api/deals/{deal.id}/orders", json={"quantity": 1}, timeout=10)

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(buy, jobs))
    codes = Counter(r.status_code for _u, r in results)
    assert set(codes) <= {202, 409}, codes
    accepted = [(u, r.json()["order_id"]) for u, r in results if r.status_code == 202]
    assert len(accepted) == 30 and len({u for u, _ in accepted}) == 30 and len({o for _, o in accepted}) == 30
    assert int(gate.redis.get(gate.keys.deal(deal.id).stock)) == 0
    outbox = {f["id"] for _i, f in gate.redis.xrange(gate.keys.deal(deal.id).outbox) if f["t"] == "o"}
    assert outbox == {o for _, o in accepted}


def _healthz_served(mp: Path) -> list[float]:
    """The /healthz requests each worker process has counted, read from its own multiprocess file."""
    served = []
    for path in glob.glob(str(mp / "counter_*.db")):
        d = MmapedDict(path, read_mode=True)
        try:
            served.append(sum(v for k, v, _ in d.read_all_values() if "/healthz" in k and "requests_total" in k))
        finally:
            d.close()
    return served


def test_metrics_correct_with_two_granian_workers(web_server: Callable, tmp_path: Path) -> None:
    mp = tmp_path / "multiproc"
    mp.mkdir()
    server = web_server({"PROMETHEUS_MULTIPROC_DIR": str(mp)}, workers=2)
    # Each granian worker binds its own SO_REUSEPORT socket once its app is built, and the kernel spreads new
    # connections over the sockets listening. Readiness of the node means one worker listens: under load the
    # second may still be starting (a CI run once saw [0, 61]), so knock until both have served one.
    deadline = time.monotonic() + 60
    while len([c for c in _healthz_served(mp) if c > 0]) < 2:
        assert time.monotonic() < deadline, _healthz_served(mp)
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200  # a new connection each time
    healthz = {"endpoint": "/healthz", "method": "GET"}
    base = metric_value(
        requests.get(server.url + "/metrics", timeout=5).text, "flashdeal_http_requests_total", **healthz, status="200"
    )
    assert base == sum(_healthz_served(mp))
    n = 60
    for _ in range(n):
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    # Whichever worker answers the scrape, it reports the requests of both.
    for _ in range(4):
        text = requests.get(server.url + "/metrics", timeout=5).text
        assert metric_value(text, "flashdeal_http_requests_total", **healthz, status="200") == base + n
        assert metric_value(text, "flashdeal_http_request_duration_seconds_count", **healthz) == base + n
    served = _healthz_served(mp)
    assert len(served) == 2 and min(served) > 0, served  # both processes served part of them
    assert sum(served) == base + n


def test_the_queue_survives_a_web_nodes_death(web_server, db, svc) -> None:
    """Join on one node, stop it; the other node polls on: same place, then let in, then the pass buys."""

    a, b = web_server(), web_server()
    deal = make_deal(db, svc.gate, stock=5, queue=QueueRules(rate=1, paused=True))
    u1, u2 = make_users(db, 2)
    s1, s2 = login_over_http(a.url, email_of(db, u1)), login_over_http(a.url, email_of(db, u2))
    assert s1.post(f"{a.url}/api/deals/{deal.id}/queue", json={}, timeout=10).json()["position"] == 1
    assert s2.post(f"{a.url}/api/deals/{deal.id}/queue", json={}, timeout=10).json()["position"] == 2
    a.stop()  # nothing of the queue lived in it (SIGKILL would orphan granian's worker process)
    # The session and the poll ticket are cookies for 127.0.0.1: any node reads them.
    assert s2.get(f"{b.url}/api/deals/{deal.id}/queue", timeout=10).json()["position"] == 2

    set_queue(svc.db, svc.gate, deal.id, paused=False)
    deadline, body = time.monotonic() + 20, {}
    while time.monotonic() < deadline:
        body = s1.get(f"{b.url}/api/deals/{deal.id}/queue", timeout=10).json()
        if body["state"] == "admitted":
            break
        time.sleep(0.2)
    assert body["state"] == "admitted", body
    r = s1.post(f"{b.url}/api/deals/{deal.id}/orders", json={"quantity": 1}, headers={"Queue-Pass": body["pass"]})
    assert r.status_code == 202, r.text


def test_dev_checkout_over_http_declined_then_paid(db, settings, web_server) -> None:

    server = web_server()
    gate = Gate(text_client(settings), Keys(settings.key_prefix))
    deal = make_deal(db, gate, stock=3, limit=3, payment_window=120, price="2.50")
    (user,) = make_users(db, 1)
    s = requests.Session()
    assert s.post(server.url + "/api/auth/login", json={"email": email_of(db, user), "password": PASSWORD}).ok
    oid = s.post(f"{server.url}/api/deals/{deal.id}/orders", json={"quantity": 2}).json()["order_id"]
    pay = s.post(f"{server.url}/api/orders/{oid}/pay", headers=ORIGIN).json()
    url = server.url + pay["checkout_url"]
    page = requests.get(url)  # the provider's page: no session of ours needed
    assert page.status_code == 200 and "5.00 EUR" in page.text
    assert requests.post(url, json={"card": "4111111111111111"}).json()["error"]["code"] == "card_unknown"
    declined = requests.post(url, json={"card": "4000 0000 0000 0002"})
    assert declined.json() == {"result": "declined", "order_status": "accepted"}
    paid = requests.post(url, json={"card": "4242424242424242"})
    assert paid.json() == {"result": "paid", "order_status": "paid"}, paid.text
    assert s.get(f"{server.url}/api/orders/{oid}").json()["status"] == "paid"
    assert requests.get(server.url + "/payments/dev/checkout/devpi_1_nope").status_code == 404
