"""The providers: Stripe Checkout offline (the real stripe package against a local Stripe-speaking server,
real signatures), the registry, the check job, and the dev provider's checkout over HTTP through a real web
process."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import text

from shared.payments import Kind, minor_units
from shared.payments.base import PayableOrder
from shared.payments.providers.stripe import StripeProvider
from tests.helpers import ORIGIN, login_client, make_deal, make_users, set_payment_window_ms
from tests.stripe_fake import WEBHOOK_SECRET, FakeStripe, stripe_event, stripe_signature


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
        payment_timeout_seconds=2.0,
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


def test_registry_picks_the_module_named_by_the_setting(settings, stripe_settings) -> None:
    from shared.payments import build_provider
    from shared.payments.providers.dev import DevProvider
    from shared.payments.registry import provider_names

    assert provider_names() == ["dev", "stripe"]
    assert isinstance(build_provider(settings.with_(payment_provider="dev"), None), DevProvider)
    assert isinstance(build_provider(stripe_settings, None), StripeProvider)


def test_stripe_checkout_adapter_create_look_up_close_refund(stripe_settings, fake_stripe) -> None:
    p = StripeProvider(stripe_settings)
    oid = str(uuid.uuid4())
    soon = int(time.time() * 1000) + 120_000  # before Stripe's 30-minute minimum: no expires_at sent
    order = PayableOrder(oid, 7, 42, 5997, "eur", soon, "Headphones", "http://shop.test/deals/7")
    pay = p.create_payment(order)
    assert p.create_payment(order) == pay and pay.provider == "stripe" and pay.payment_id.startswith("cs_test_")
    assert pay.checkout_url == f"{fake_stripe.url}/pay/{pay.payment_id}"
    call = fake_stripe.calls[0]
    assert call["path"] == "/v1/checkout/sessions" and call["headers"]["Idempotency-Key"] == f"checkout-{oid}"
    assert call["headers"]["Authorization"] == "Bearer sk_test_flashdeal"
    form = call["form"]
    assert form["mode"] == "payment" and form["line_items[0][price_data][unit_amount]"] == "5997"
    assert form["line_items[0][price_data][currency]"] == "eur" and form["metadata[order_id]"] == oid
    assert form["metadata[deal_id]"] == "7" and form["success_url"] == "http://shop.test/deals/7"
    assert "expires_at" not in form
    later = int(time.time() * 1000) + 3600_000  # an hour away: the session expires with the order
    p.create_payment(PayableOrder(str(uuid.uuid4()), 7, 42, 100, "eur", later, "", "http://shop.test/deals/7"))
    assert fake_stripe.calls[-1]["form"]["expires_at"] == str(later // 1000)

    assert p.look_up(pay, order).kind is Kind.OPEN
    assert fake_stripe.complete(pay.payment_id, send=False)
    got = p.look_up(pay, order)
    assert (got.kind, got.order_id, got.deal_id, got.amount_minor, got.currency) == (
        Kind.SUCCEEDED,
        oid,
        7,
        5997,
        "eur",
    )
    assert p.close(pay, order).kind is Kind.SUCCEEDED  # completed first: it cannot be expired any more
    other = p.create_payment(PayableOrder(str(uuid.uuid4()), 7, 42, 100, "eur", soon, "", "http://shop.test/"))
    assert p.close(other, order).kind is Kind.CLOSED and fake_stripe.sessions[other.payment_id]["status"] == "expired"
    assert not fake_stripe.complete(other.payment_id, send=False)  # no success can follow a close

    assert p.refund(pay.payment_id, oid, 5997, "expired").startswith("re_")
    refund = fake_stripe.calls[-1]
    pi = fake_stripe.sessions[pay.payment_id]["payment_intent"]
    assert refund["path"] == "/v1/refunds" and refund["form"]["payment_intent"] == pi
    assert refund["headers"]["Idempotency-Key"] == f"refund-{pay.payment_id}"


def test_stripe_events_are_verified_and_read(stripe_settings, fake_stripe) -> None:
    from shared.payments import BadEvent

    p = StripeProvider(stripe_settings)
    meta = {"order_id": str(uuid.uuid4()), "deal_id": "3"}
    obj = {"id": "cs_test_1", "object": "checkout.session", "status": "complete", "payment_status": "paid",
           "amount_total": 998, "currency": "eur", "metadata": meta}  # fmt: skip

    def parsed(kind: str, o: dict) -> Kind:
        payload = stripe_event(kind, o)
        return p.parse_webhook(payload, {"Stripe-Signature": stripe_signature(payload)}).kind

    assert parsed("checkout.session.completed", obj) is Kind.SUCCEEDED
    assert parsed("checkout.session.completed", {**obj, "payment_status": "unpaid"}) is Kind.OPEN  # async: pending
    assert parsed("checkout.session.async_payment_succeeded", obj) is Kind.SUCCEEDED
    assert parsed("checkout.session.async_payment_failed", obj) is Kind.FAILED
    assert parsed("checkout.session.expired", {**obj, "status": "expired"}) is Kind.CLOSED
    assert parsed("payment_intent.succeeded", {**obj, "object": "payment_intent"}) is Kind.OTHER
    payload = stripe_event("checkout.session.completed", obj)
    for header in (stripe_signature(payload, "whsec_other"), stripe_signature(payload, timestamp=1), ""):
        with pytest.raises(BadEvent):
            p.parse_webhook(payload, {"Stripe-Signature": header})
    from shared.payments.providers.dev import SIGNATURE_HEADER, dev_webhook_secret, sign

    with pytest.raises(BadEvent):  # the dev provider's scheme is not Stripe's, and the reverse
        p.parse_webhook(payload, {SIGNATURE_HEADER: sign(payload, dev_webhook_secret(stripe_settings))})


def test_stripe_checkout_through_the_app_pay_webhook_and_refund_after_expiry(db, stripe_settings, fake_stripe) -> None:
    from web import create_app

    app = create_app(stripe_settings)
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5, payment_window=120, price="19.99", title="Kettle")
    (user,) = make_users(db, 1)
    c = login_client(app, db, user)
    oid = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 3}).json["order_id"]
    r = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN)
    assert r.status_code == 200 and r.json["provider"] == "stripe", r.json
    pid = r.json["payment_id"]
    assert r.json["checkout_url"] == f"{fake_stripe.url}/pay/{pid}"
    assert c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json == r.json  # recorded: no second session
    assert [x["path"] for x in fake_stripe.calls] == ["/v1/checkout/sessions"]
    form = fake_stripe.calls[0]["form"]
    assert form["line_items[0][price_data][unit_amount]"] == "5997"
    assert form["line_items[0][price_data][product_data][name]"] == "Kettle"
    assert form["success_url"] == f"http://localhost/deals/{deal.id}"
    hook = app.test_client()

    def deliver(kind: str, obj: dict, secret: str = WEBHOOK_SECRET, eid: str = ""):
        payload = stripe_event(kind, obj, eid)
        headers = {"Stripe-Signature": stripe_signature(payload, secret), "Content-Type": "application/json"}
        return hook.post("/api/payments/webhook", data=payload, headers=headers)

    session = fake_stripe.sessions[pid]
    assert deliver("checkout.session.async_payment_failed", session).json["outcome"] == "declined"
    fake_stripe.complete(pid, send=False)
    assert deliver("checkout.session.completed", session, "whsec_other").status_code == 400
    ok = deliver("checkout.session.completed", session, eid="evt_ok")
    assert ok.json["outcome"] == "paid"
    assert deliver("checkout.session.completed", session, eid="evt_ok").json["outcome"] == "duplicate"
    assert c.get(f"/api/orders/{oid}").json["status"] == "paid"
    # A second order left unpaid until after its deadline, its session closed by the shop, then paid anyway
    # (the payment raced the close): refunded through the API, reported once.
    set_payment_window_ms(svc.gate, deal.id, 50)
    late = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    late_pid = c.post(f"/api/orders/{late}/pay", headers=ORIGIN).json["payment_id"]
    time.sleep(0.1)
    assert (
        deliver("checkout.session.expired", {**fake_stripe.sessions[late_pid], "status": "expired"}).json["outcome"]
        == "expired"
    )
    fake_stripe.complete(late_pid, send=False)
    assert (
        deliver("checkout.session.completed", fake_stripe.sessions[late_pid], eid="evt_l").json["outcome"] == "refund"
    )
    assert deliver("checkout.session.completed", fake_stripe.sessions[late_pid], eid="evt_l").json["outcome"] == (
        "duplicate"
    )
    refunds = [x for x in fake_stripe.calls if x["path"] == "/v1/refunds"]
    assert {x["headers"]["Idempotency-Key"] for x in refunds} == {f"refund-{late_pid}"}
    assert {x["form"]["payment_intent"] for x in refunds} == {fake_stripe.sessions[late_pid]["payment_intent"]}
    with db.read() as s:
        rows = s.execute(text("SELECT reason, refund_id FROM refunds WHERE order_id = :o"), {"o": late}).all()
    assert len(rows) == 1 and rows[0][0] == "expired" and rows[0][1].startswith("re_")
    assert c.get(f"/api/orders/{late}").json["status"] == "expired"


def test_the_check_job_decides_payments_whose_webhook_never_came(db, stripe_settings, fake_stripe) -> None:
    """Past pay_by, an order with an open payment is held until the provider was asked: paid if it was paid,
    else the session is closed at Stripe first and only then the order expires."""
    from shared.payments import build_provider
    from shared.payments.check import check_payments
    from shared.payments.decision import Decisions
    from web import create_app
    from worker.expiry import sweep

    app = create_app(stripe_settings)
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5, payment_window=120, price="5.00")
    set_payment_window_ms(svc.gate, deal.id, 300)
    c = login_client(app, db, make_users(db, 1)[0])
    paid, unpaid, never = (c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"] for _ in "abc")
    paid_pid = c.post(f"/api/orders/{paid}/pay", headers=ORIGIN).json["payment_id"]
    unpaid_pid = c.post(f"/api/orders/{unpaid}/pay", headers=ORIGIN).json["payment_id"]
    assert fake_stripe.complete(paid_pid, send=False)  # paid in time; its webhook is never sent
    time.sleep(0.4)
    sweep(svc.gate, [deal.id])  # the deadline passed: only the order without a payment expires
    state = {o: svc.gate.find_order(o, deal.id).state for o in (paid, unpaid, never)}
    assert state == {paid: "accepted", unpaid: "accepted", never: "expired"}
    kicked: list[int] = []
    decisions = Decisions(db=svc.db, gate=svc.gate, settings=svc.settings,
                          provider=build_provider(svc.settings, svc.redis), kick=kicked.append)  # fmt: skip
    report = check_payments(decisions, [deal.id])
    assert report.decided == {paid: "paid", unpaid: "expired"} and not report.errors
    assert svc.gate.find_order(paid, deal.id).state == "paid"
    assert svc.gate.find_order(unpaid, deal.id).state == "expired"
    assert fake_stripe.sessions[unpaid_pid]["status"] == "expired"  # closed at Stripe before it expired here
    assert not fake_stripe.complete(unpaid_pid)  # so no success can follow
    assert check_payments(decisions, [deal.id]).decided == {}  # nothing left open
    with db.read() as s:
        assert s.execute(text("SELECT count(*) FROM refunds WHERE deal_id = :d"), {"d": deal.id}).scalar() == 0
    assert int(svc.redis.get(svc.keys.deal(deal.id).stock)) == 4


def test_an_open_payment_is_held_at_most_the_hold_then_expires_and_a_late_success_is_refunded(
    db, stripe_settings, fake_stripe
) -> None:
    """The provider unreachable for the whole hold: the order expires anyway, a success after it goes back."""
    from web import create_app
    from worker.expiry import sweep

    app = create_app(stripe_settings.with_(payment_hold_seconds=1))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5, payment_window=120, price="5.00")
    set_payment_window_ms(svc.gate, deal.id, 500)
    c = login_client(app, db, make_users(db, 1)[0])
    oid = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    pid = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN).json["payment_id"]
    time.sleep(0.7)
    assert sweep(svc.gate, [deal.id]).expired == {}  # held
    time.sleep(1.1)
    assert sweep(svc.gate, [deal.id]).expired == {deal.id: 1}  # the hold is over
    fake_stripe.complete(pid, send=False)
    payload = stripe_event("checkout.session.completed", fake_stripe.sessions[pid])
    r = app.test_client().post(
        "/api/payments/webhook",
        data=payload,
        headers={"Stripe-Signature": stripe_signature(payload), "Content-Type": "application/json"},
    )
    assert r.json.get("outcome") == "refund", r.json
    with db.read() as s:
        assert s.execute(text("SELECT reason FROM refunds WHERE order_id = :o"), {"o": oid}).scalar() == "expired"


def test_stripe_without_keys_answers_503_not_500(db, settings) -> None:
    from web import create_app

    app = create_app(settings.with_(ratelimit_enabled=False, payment_provider="stripe"))
    svc = app.extensions["flashdeal"]
    deal = make_deal(db, svc.gate, stock=5, limit=5, payment_window=120)
    c = login_client(app, db, make_users(db, 1)[0])
    oid = c.post(f"/api/deals/{deal.id}/orders", json={"quantity": 1}).json["order_id"]
    r = c.post(f"/api/orders/{oid}/pay", headers=ORIGIN)
    assert r.status_code == 503 and r.json["error"]["code"] == "payments_unavailable"
    # No secret: an event "signed" with the empty secret is not even looked at.
    payload = stripe_event("checkout.session.completed", {"id": "cs_forged", "object": "checkout.session"})
    forged = app.test_client().post(
        "/api/payments/webhook",
        data=payload,
        headers={"Stripe-Signature": stripe_signature(payload, ""), "Content-Type": "application/json; charset=utf-8"},
    )
    assert forged.status_code == 503 and c.get(f"/api/orders/{oid}").json["status"] == "accepted"
