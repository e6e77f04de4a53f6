"""The two providers: Stripe offline (the real stripe package against a local recording server, real
signatures) and the dev provider's checkout over HTTP through a real web process."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
import requests
from sqlalchemy import text

from shared.payments import minor_units
from shared.payments.base import PayableOrder
from shared.payments.dev import sign
from shared.payments.stripe_provider import StripeProvider
from tests.helpers import ORIGIN, PASSWORD, email_of, make_deal, make_users, set_payment_window_ms
from tests.integration.test_payments_api import event, login

WEBHOOK_SECRET = "whsec_test_" + "a" * 24


class FakeStripe:
    """A local HTTP server answering like Stripe's API and recording every request it got."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                fake.calls.append({"path": self.path, "form": form, "headers": dict(self.headers)})
                key = self.headers.get("Idempotency-Key", "")
                if self.path == "/v1/payment_intents":
                    pid = "pi_" + uuid.uuid5(uuid.NAMESPACE_URL, key).hex[:24]  # same key, same intent
                    obj = {"id": pid, "object": "payment_intent", "amount": int(form["amount"]),
                           "currency": form["currency"], "client_secret": pid + "_secret_x"}  # fmt: skip
                elif self.path == "/v1/refunds":
                    obj = {"id": "re_" + uuid.uuid5(uuid.NAMESPACE_URL, key).hex[:24], "object": "refund",
                           "payment_intent": form["payment_intent"], "status": "succeeded"}  # fmt: skip
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    yield fake
    fake.close()


@pytest.fixture()
def stripe_settings(settings, fake_stripe):
    return settings.with_(
        ratelimit_enabled=False,
        payment_provider="stripe",
        stripe_secret_key="sk_test_flashdeal",
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_api_base=fake_stripe.url,
    )


def test_provider_defaults_and_the_dev_provider_refused_in_production() -> None:
    from shared.settings import ConfigError, Settings

    assert Settings.from_env({}).payment_provider == "dev"
    prod = {"FLASHDEAL_ENV": "production", "SECRET_KEY": "x" * 40}
    assert Settings.from_env(prod).check().payment_provider == "stripe"  # keys are asked for at the first payment
    with pytest.raises(ConfigError, match="PAYMENT_PROVIDER=dev"):
        Settings.from_env({**prod, "PAYMENT_PROVIDER": "dev"}).check()
    with pytest.raises(ConfigError, match="PAYMENT_PROVIDER must be"):
        Settings.from_env({"PAYMENT_PROVIDER": "paypal"}).check()
    with pytest.raises(ConfigError, match="PAYMENT_CURRENCY"):
        Settings.from_env({"PAYMENT_CURRENCY": "euro"}).check()


def test_minor_units() -> None:
    assert minor_units(Decimal("19.99") * 3, "eur") == 5997
    assert minor_units(Decimal("1500"), "jpy") == 1500
    assert minor_units(Decimal("0.005"), "usd") == 1


def test_stripe_adapter_sends_amount_currency_idempotency_key_and_metadata(stripe_settings, fake_stripe) -> None:
    p = StripeProvider(stripe_settings)
    oid = str(uuid.uuid4())
    pay = p.create_payment(PayableOrder(oid, 7, 42, 5997, "eur"))
    again = p.create_payment(PayableOrder(oid, 7, 42, 5997, "eur"))
    assert pay == again and pay.provider == "stripe" and pay.client_secret.startswith(pay.payment_id)
    call = fake_stripe.calls[0]
    assert call["path"] == "/v1/payment_intents"
    assert call["headers"]["Idempotency-Key"] == oid
    assert call["headers"]["Authorization"] == "Bearer sk_test_flashdeal"
    assert call["form"]["amount"] == "5997" and call["form"]["currency"] == "eur"
    assert call["form"]["metadata[order_id]"] == oid and call["form"]["metadata[deal_id]"] == "7"
    assert p.refund(pay.payment_id, oid, 5997, "expired").startswith("re_")
    refund = fake_stripe.calls[-1]
    assert refund["path"] == "/v1/refunds" and refund["form"]["payment_intent"] == pay.payment_id
    assert refund["headers"]["Idempotency-Key"] == f"refund-{pay.payment_id}"


def test_stripe_flow_through_the_app_pay_webhook_and_refund_after_expiry(db, stripe_settings, fake_stripe) -> None:
    from web import create_app

    app = create_app(stripe_settings)
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5, payment_window=120, price="19.99")
    (user,) = make_users(db, 1)
    c = login(app, db, user)
    oid = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 3}).json["order_id"]
    r = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN)
    assert r.status_code == 200 and r.json["provider"] == "stripe" and r.json["checkout_url"] is None
    assert c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json == r.json
    assert [x["path"] for x in fake_stripe.calls] == ["/v1/payment_intents"]
    assert fake_stripe.calls[0]["form"]["amount"] == "5997"
    pid = r.json["payment_id"]
    hook = app.test_client()

    def deliver(payload: bytes, secret: str = WEBHOOK_SECRET):
        headers = {"Stripe-Signature": sign(payload, secret), "Content-Type": "application/json; charset=utf-8"}
        return hook.post("/api/payments/webhook", data=payload, headers=headers)

    assert deliver(event(oid, deal.id, pid, amount=5997), "whsec_other").status_code == 400  # not Stripe's
    assert deliver(event(oid, deal.id, pid, amount=5997)).json["outcome"] == "paid"
    # A second order left unpaid until after its deadline, then paid: refunded through the API, reported once.
    set_payment_window_ms(svc.gate, deal.id, 50)
    late = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    late_pid = c.post(f"/api/orders/{late}/pay", headers=ORIGIN).json["payment_id"]
    time.sleep(0.1)
    payload = event(late, deal.id, late_pid, amount=1999)
    assert deliver(payload).json["outcome"] == "refund"
    assert deliver(payload).json["outcome"] == "duplicate"
    refunds = [x for x in fake_stripe.calls if x["path"] == "/v1/refunds"]
    assert {x["headers"]["Idempotency-Key"] for x in refunds} == {f"refund-{late_pid}"}
    with db.read() as s:
        rows = s.execute(text("SELECT reason, refund_id FROM refunds WHERE order_id = :o"), {"o": late}).all()
    assert len(rows) == 1 and rows[0][0] == "expired" and rows[0][1].startswith("re_")
    assert c.get(f"/api/orders/{oid}").json["status"] == "paid"
    assert c.get(f"/api/orders/{late}").json["status"] == "expired"


def test_stripe_without_keys_answers_503_not_500(db, settings) -> None:
    from web import create_app

    app = create_app(settings.with_(ratelimit_enabled=False, payment_provider="stripe"))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5, payment_window=120)
    c = login(app, db, make_users(db, 1)[0])
    oid = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    r = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN)
    assert r.status_code == 503 and r.json["error"]["code"] == "payments_unavailable"
    # No secret: an event "signed" with the empty secret is not even looked at.
    payload = event(oid, deal.id, "pi_forged", amount=999)
    forged = app.test_client().post(
        "/api/payments/webhook",
        data=payload,
        headers={"Stripe-Signature": sign(payload, ""), "Content-Type": "application/json; charset=utf-8"},
    )
    assert forged.status_code == 503 and c.get(f"/api/orders/{oid}").json["status"] == "accepted"


def test_dev_checkout_over_http_declined_then_paid(db, settings, web_server) -> None:
    from shared.gate import Gate
    from shared.keys import Keys
    from shared.redis import text_client

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
