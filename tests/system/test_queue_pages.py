"""The waiting room in a real Chromium: join the pre-queue (solving the proof of work), wait, be let in, buy."""

from __future__ import annotations

import re
from typing import Any

from shared.queue import QueueRules
from tests.browser_helpers import log_in_on_page, page_context, page_gate
from tests.helpers import email_of, make_deal, make_users


def test_join_the_pre_queue_wait_be_let_in_and_buy(browser: Any, web_server, db, settings) -> None:
    from playwright.sync_api import expect

    server = web_server()
    gate = page_gate(settings)
    deal = make_deal(
        db,
        gate,
        stock=3,
        limit=1,
        starts_in=6,
        lasts=900,
        title="Queued sneakers",
        queue=QueueRules(rate=2, pow_bits=8),
    )
    (buyer,) = make_users(db, 1)
    ctx = page_context(browser, server.url)
    page = ctx.new_page()
    log_in_on_page(page, email_of(db, buyer))

    page.goto(f"/deals/{deal.id}")
    page.locator("#queue-link").click()
    page.wait_for_url(re.compile(rf"/deals/{deal.id}/queue$"))
    page.get_by_role("button", name="Join the waiting room").click()
    # Before the start: in the line, the place drawn at the start.
    expect(page.locator("#queue-state")).to_have_attribute("data-state", "waiting", timeout=20_000)
    expect(page.locator("#queue-position")).to_contain_text("drawn at random")
    # The sale starts, the inlet lets the buyer in at the next poll.
    expect(page.locator("#queue-state")).to_have_attribute("data-state", "admitted", timeout=30_000)
    # Without the pass the order is refused, whatever the page does (the sale is open now).
    r = page.request.post(f"/api/deals/{deal.id}/orders", data={"quantity": 1}, headers={"X-Requested-With": "fetch"})
    assert r.status == 403 and r.json()["error"]["code"] == "queue_pass_required"
    page.locator("#queue-buy").click()
    page.wait_for_url(re.compile(rf"/deals/{deal.id}$"))
    expect(page.locator("#buy")).to_be_enabled(timeout=20_000)
    page.locator("#buy").click()
    expect(page.locator("#order-panel")).to_be_visible()
    expect(page.locator("#order-id")).not_to_be_empty()
    assert gate.remaining([deal.id])[deal.id] == 2
    ctx.close()
