"""A slow payment provider cannot take order admission down: buyers pressing "Pay" while the provider answers
after a long delay, and orders placed on the same web node meanwhile, answered at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import ORIGIN, PASSWORD, email_of, make_deal, make_users
from tests.stripe_fake import WEBHOOK_SECRET, FakeStripe

PROVIDER_DELAY_S = 25.0  # longer than any timeout of ours, far shorter than the stripe package's default (80 s)
PAYERS = 8  # twice the web node's threads (tests/conftest.py starts granian with 4)


@pytest.fixture()
def gate(settings, rds):
    from shared.gate import Gate

    return Gate.from_settings(rds, settings)


@pytest.fixture()
def slow_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    yield fake
    fake.delay_s = 0
    fake.close()


def _session(server, db, user: int) -> requests.Session:
    s = requests.Session()
    r = s.post(server.url + "/api/auth/login", json={"email": email_of(db, user), "password": PASSWORD})
    assert r.ok, r.text
    return s


def test_a_slow_provider_never_stalls_orders_on_the_same_node(db, gate, web_server, slow_stripe) -> None:
    server = web_server(
        {
            "PAYMENT_PROVIDER": "stripe",
            "STRIPE_SECRET_KEY": "sk_test_flashdeal",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": slow_stripe.url,
            "PAYMENT_TIMEOUT_SECONDS": "2",
            "PAYMENT_MAX_RETRIES": "1",
            "PAYMENT_MAX_CONCURRENT": "2",  # half of this node's 4 threads, as the default is of production's 8
        }
    )
    deal = make_deal(db, gate, stock=1000, limit=5, payment_window=600)
    payers = [_session(server, db, u) for u in make_users(db, PAYERS)]
    buyers = [_session(server, db, u) for u in make_users(db, 4)]
    orders = []
    for s in payers:
        r = s.post(f"{server.url}/api/deals/{deal.id}/orders", json={"quantity": 1})
        assert r.status_code == 202, r.text
        orders.append(r.json()["order_id"])
    slow_stripe.delay_s = PROVIDER_DELAY_S

    def pay(i: int) -> tuple[int, str, float]:
        t0 = time.monotonic()
        r = payers[i].post(f"{server.url}/api/orders/{orders[i]}/pay", headers=ORIGIN, timeout=60)
        return r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else "", time.monotonic() - t0

    def order(i: int) -> tuple[int, float]:
        t0 = time.monotonic()
        r = buyers[i % 4].post(f"{server.url}/api/deals/{deal.id}/orders", json={"quantity": 1}, timeout=60)
        return r.status_code, time.monotonic() - t0

    with ThreadPoolExecutor(PAYERS) as pool:
        paying = [pool.submit(pay, i) for i in range(PAYERS)]
        time.sleep(0.5)  # every "Pay" is in: the provider holds whatever it was given
        placed = []
        for i in range(16):
            placed.append(order(i))
            time.sleep(0.1)
        paid = [f.result() for f in paying]
    assert [status for status, _ in placed] == [202] * 16, placed
    assert max(t for _, t in placed) < 3.0, placed  # never behind the provider (25 s)
    # Every "Pay" was answered within the bounded timeouts: refused at once (busy) or failed after the retry.
    assert {(status, code) for status, code, _ in paid} <= {(503, "payments_busy"), (502, "payment_provider_error")}
    assert any(code == "payments_busy" for _, code, _ in paid), paid
    assert max(t for _, _, t in paid) < 12.0, paid
    calls = [c for c in slow_stripe.calls if c["path"] == "/v1/checkout/sessions"]
    assert 1 <= len(calls) <= 2 * 2, len(calls)  # two slots, one retry each: bounded
