"""Paying in a real Chromium: pay within mm:ss, the dev checkout (declined, then paid), an order that expires.

Set ``UPDATE_SCREENSHOTS=1`` to rewrite the payment screenshots in docs/screenshots/.
"""

from __future__ import annotations

import re

from sqlalchemy import text

from harness.waits import wait_until
from shared.cache import invalidate_deal
from tests.browser_helpers import PHONE, log_in_on_page, page_context, page_gate, shot
from tests.helpers import CeleryProcs, email_of, make_deal, make_users, set_payment_window_ms


def test_pay_through_the_dev_checkout_and_watch_an_unpaid_order_expire(
    browser,
    web_server,
    db,
    settings,
    tmp_path,
) -> None:
    from playwright.sync_api import expect

    procs = CeleryProcs(tmp_path)
    try:
        procs.worker("pay1", wait=False)
        server = web_server({"CELERY_QUEUE": procs.queue})
        gate = page_gate(settings)
        deal = make_deal(
            db, gate, stock=2, limit=1, price="59.00", payment_window=300, title="Noise-cancelling headphones"
        )
        invalidate_deal(gate.redis, gate.keys, deal.id)
        buyer, late, admin = make_users(db, 2) + make_users(db, 1, role="admin")

        a_ctx = page_context(browser, server.url)
        a = a_ctx.new_page()
        log_in_on_page(a, email_of(db, buyer))
        a.goto(f"/deals/{deal.id}")
        a.locator("#buy").click()
        expect(a.locator("#order-state")).to_have_text(re.compile("accepted|confirmed"))
        expect(a.locator("#pay-countdown")).to_have_text(re.compile(r"Pay within 0[45]:\d\d"))
        expect(a.locator("#order-message")).to_contain_text("held until the time to pay runs out")
        shot(a, "deal-pay-within")

        a.get_by_role("button", name="Pay now").click()
        a.wait_for_url(re.compile(r"/payments/dev/checkout/devpi_"))
        expect(a.locator(".price")).to_contain_text("59.00 EUR")
        expect(a.locator("#checkout-countdown")).to_have_text(re.compile(r"Pay within 0[45]:\d\d"))
        a.get_by_label("Card number").fill("4000 0000 0000 0002")
        a.get_by_role("button", name=re.compile("^Pay ")).click()
        expect(a.locator("#checkout-message")).to_have_text("Card declined. Try another card while time remains.")
        shot(a, "checkout-declined")
        # Back on the deal page, the buyer sees the decline, the units still held, and pays again from there.
        a.goto(f"/deals/{deal.id}")
        expect(a.locator("#order-message")).to_contain_text("Card declined. Try again while time remains")
        expect(a.locator("#pay-countdown")).to_have_text(re.compile(r"Pay within 0[45]:\d\d"))
        shot(a, "deal-declined")
        a.get_by_role("button", name="Pay now").click()
        a.wait_for_url(re.compile(r"/payments/dev/checkout/devpi_"))
        a.get_by_label("Card number").fill("4242 4242 4242 4242")
        a.get_by_role("button", name=re.compile("^Pay ")).click()
        expect(a.locator("#checkout-message")).to_contain_text("your order is paid")
        a.wait_for_url(re.compile(rf"/deals/{deal.id}$"))
        expect(a.locator("#order-state")).to_have_text("paid")
        expect(a.locator("#order-message")).to_have_text("Paid. The order is yours.")
        expect(a.locator("#pay-box")).to_be_hidden()
        expect(a.locator("#cancel-order")).to_be_hidden()
        shot(a, "deal-paid")

        # A second buyer, on a phone, orders with only 4 s to pay, and does not.
        set_payment_window_ms(gate, deal.id, 4000)
        b_ctx = page_context(browser, server.url, PHONE)
        b = b_ctx.new_page()
        log_in_on_page(b, email_of(db, late))
        b.goto(f"/deals/{deal.id}")
        b.locator("#buy").click()
        expect(b.locator("#pay-countdown")).to_have_text(re.compile(r"Pay within 00:0[0-4]"))
        expect(b.locator("#remaining")).to_have_text("0")
        procs.beat()  # the sweep: the order expires by itself, no request involved
        expect(b.locator("#order-state")).to_have_text("expired", timeout=20_000)
        expect(b.locator("#order-message")).to_contain_text("the order expired and its units went back on sale")
        expect(b.locator("#remaining")).to_have_text("1", timeout=10_000)
        b.locator("#order-panel").scroll_into_view_if_needed()
        shot(b, "deal-expired-phone")

        def persisted() -> bool:
            with db.read() as s:
                rows = s.execute(text("SELECT status FROM orders WHERE deal_id = :d"), {"d": deal.id}).scalars()
                return sorted(rows) == ["expired", "paid"]

        assert wait_until(persisted, 30)
        orders = a_ctx.new_page()
        orders.goto("/orders")
        row = orders.locator(f'tr[data-order="{a.locator("#order-id").inner_text()}"]')
        expect(row.locator('[data-field="status"]')).to_have_text("paid")
        expect(row.locator('[data-field="pay-by"]')).to_have_text(re.compile(r"\d\d:\d\d"))
        expect(row.get_by_role("button", name=re.compile("Cancel"))).to_have_count(0)
        shot(orders, "my-orders-paid")

        adm_ctx = page_context(browser, server.url)
        adm = adm_ctx.new_page()
        log_in_on_page(adm, email_of(db, admin))
        adm.goto(f"/admin/deals/{deal.id}")
        expect(adm.locator('td[data-stat="paid"]')).to_have_text("1")
        expect(adm.locator('td[data-stat="expired"]')).to_have_text("1")
        expect(adm.locator('td[data-stat="remaining_stock"]')).to_have_text("1")
        shot(adm, "admin-progress-payments")
        for ctx in (a_ctx, b_ctx, adm_ctx):
            ctx.close()
    finally:
        procs.close()


def test_pay_with_stripe_checkout_from_the_deal_page_and_back_to_a_paid_order(
    browser,
    web_server,
    db,
    settings,
) -> None:
    """PAYMENT_PROVIDER=stripe: "Pay now" redirects to the Checkout Session's hosted page (the local stand-in),
    which sends the buyer back to the deal page; Stripe's signed event has made the order paid."""
    from playwright.sync_api import expect

    from tests.stripe_fake import WEBHOOK_SECRET, FakeStripe

    fake = FakeStripe()
    try:
        server = web_server(
            {
                "PAYMENT_PROVIDER": "stripe",
                "STRIPE_SECRET_KEY": "sk_test_flashdeal",
                "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "STRIPE_API_BASE": fake.url,
            }
        )
        fake.webhook_url = server.url + "/api/payments/webhook"
        gate = page_gate(settings)
        deal = make_deal(db, gate, stock=2, limit=1, price="59.00", payment_window=300, title="Espresso machine")
        with db.transaction() as s:
            s.execute(text("UPDATE products SET regular_price = 99.00 WHERE id = :p"), {"p": deal.product_id})
        invalidate_deal(gate.redis, gate.keys, deal.id)
        (buyer,) = make_users(db, 1)
        ctx = page_context(browser, server.url)
        page = ctx.new_page()
        log_in_on_page(page, email_of(db, buyer))
        page.goto(f"/deals/{deal.id}")
        expect(page.locator('[data-field="price"]')).to_contain_text("59.00 EUR")
        expect(page.locator('[data-field="regular-price"]')).to_contain_text("99.00 EUR")
        expect(page.locator('[data-field="discount"]')).to_have_text("−40%")
        page.locator("#buy").click()
        expect(page.locator("#pay-countdown")).to_have_text(re.compile(r"Pay within 0[45]:\d\d"))
        oid = page.locator("#order-id").inner_text()
        # My orders lists it as awaiting payment, with its deadline and a Pay action that goes to Checkout.
        page.goto("/orders")
        row = page.locator(f'tr[data-order="{oid}"]')
        expect(row.locator('[data-field="status"]')).to_have_text("awaiting payment", timeout=10_000)
        expect(row.locator('[data-field="pay-by"]')).to_have_text(re.compile(r"\d\d:\d\d"))
        expect(row.locator('[data-field="unit-price"]')).to_have_text("59.00 EUR")
        row.get_by_role("button", name=re.compile("^Pay")).click()
        page.wait_for_url(re.compile(re.escape(fake.url) + r"/pay/cs_test_"))
        expect(page.get_by_role("heading")).to_have_text("Pay 59.00 EUR")
        page.get_by_role("button", name="Pay 59.00 EUR").click()
        page.wait_for_url(f"{server.url}/deals/{deal.id}")
        expect(page.locator("#order-state")).to_have_text("paid")
        expect(page.locator("#order-message")).to_have_text("Paid. The order is yours.")
        assert fake.deliveries == [200]
        ctx.close()
    finally:
        fake.close()
