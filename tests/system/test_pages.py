"""Storefront pages: form CSRF and auth with the Flask client, then buyer journeys in a real Chromium.

Browser tests drive Debian's Chromium through Playwright (``executable_path``; Playwright's own
browser download is never used). Set ``UPDATE_SCREENSHOTS=1`` to rewrite docs/screenshots/*.png.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from shared.cache import invalidate_deal
from shared.order_ids import new_order_id
from tests.browser_helpers import PHONE, log_in_on_page, page_context, page_gate, shot
from tests.helpers import PASSWORD, email_of, make_deal, make_users
from web.pages import countdown_text

pytestmark = pytest.mark.shared_state  # module-scoped fixtures build the state its tests share


# ---- helpers -------------------------------------------------------------------------------


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


# ---- pages through the Flask client ----------------------------------------------------------


def test_login_form_requires_the_csrf_token(client, db) -> None:
    email = email_of(db, make_users(db, 1)[0])
    token = _token(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"email": email, "password": PASSWORD})
    assert r.status_code == 400 and "did not come from this site" in r.get_data(as_text=True)
    r = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": "forged"})
    assert r.status_code == 400
    assert client.get("/api/me").status_code == 401
    r = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/orders"})
    assert r.status_code == 303 and r.headers["Location"] == "/orders"
    assert client.get("/api/me").json["email"] == email
    # Logging in issued a new session: the old token no longer works, the page shows a fresh one.
    assert client.post("/logout", data={"csrf_token": token}).status_code == 400
    fresh = _token(client.get("/orders").get_data(as_text=True))
    assert fresh != token
    assert client.post("/logout", data={"csrf_token": fresh}).status_code == 303
    assert client.get("/api/me").status_code == 401


def test_login_refuses_bad_password_and_foreign_redirects(client, db) -> None:
    email = email_of(db, make_users(db, 1)[0])
    token = _token(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"email": email, "password": "wrong-pass-1", "csrf_token": token})
    assert r.status_code == 401 and "Wrong email or password." in r.get_data(as_text=True)
    data = {"email": email, "password": PASSWORD, "csrf_token": token, "next": "//evil.example/x"}
    r = client.post("/login", data=data)
    assert r.status_code == 303 and r.headers["Location"] == "/"


def test_login_form_is_rate_limited_per_account(settings, db) -> None:
    from web import create_app

    app = create_app(
        settings.with_(ratelimit_enabled=True, ratelimit_login="2/minute", ratelimit_login_ip="1000/minute")
    )
    c = app.test_client()
    email = email_of(db, make_users(db, 1)[0])
    token = _token(c.get("/login").get_data(as_text=True))
    codes = [
        c.post("/login", data={"email": email, "password": "wrong-pass-1", "csrf_token": token}).status_code
        for _ in range(3)
    ]
    assert codes == [401, 401, 429]
    r = c.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 429 and "Too many attempts" in r.get_data(as_text=True)
    assert r.mimetype == "text/html"


def test_signup_form_validates_and_logs_in(client) -> None:
    token = _token(client.get("/signup").get_data(as_text=True))
    r = client.post("/signup", data={"email": "nope", "password": "short", "name": "", "csrf_token": token})
    body = r.get_data(as_text=True)
    assert r.status_code == 422
    assert body.count('aria-invalid="true"') == 3 and 'id="email-error"' in body
    email = f"page-{uuid.uuid4().hex[:10]}@example.com"
    r = client.post("/signup", data={"email": email, "password": PASSWORD, "name": "Pat", "csrf_token": token})
    assert r.status_code == 303
    assert client.get("/api/me").json["email"] == email
    assert "Signed in as <strong>Pat</strong>" in client.get("/").get_data(as_text=True)


def test_page_guards_and_headers(client, db, settings) -> None:
    deal = make_deal(db, page_gate(settings), stock=2)
    r = client.get(f"/deals/{deal.id}")
    assert r.status_code == 200 and "Log in to buy" in r.get_data(as_text=True)
    assert "Set-Cookie" not in r.headers  # anonymous readers of a hot deal page create no session
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store"
    assert client.get("/deals/99999999").status_code == 404
    r = client.get("/orders")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=/orders")
    uid = make_users(db, 1)[0]
    token = _token(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"email": email_of(db, uid), "password": PASSWORD, "csrf_token": token})
    assert client.get(f"/admin/deals/{deal.id}").status_code == 403
    # The JSON API still refuses form posts (its own CSRF defence) and is untouched by the page token.
    assert client.post(f"/api/deals/{deal.id}/orders", data={"quantity": "1"}).status_code == 415


def test_pages_render_from_the_data_functions_never_the_api_views(client, db, settings, monkeypatch) -> None:
    """The deal list and my orders are built from deal_list and buyer_orders, not by calling a view and parsing JSON."""
    import web.deals
    import web.orders

    def boom(*_a: Any, **_kw: Any) -> Any:
        raise AssertionError("a page called an API view")

    monkeypatch.setattr(web.deals, "list_deals", boom)
    monkeypatch.setattr(web.orders, "my_orders", boom)
    gate = page_gate(settings)
    deal = make_deal(db, gate, stock=3, title=f"Page data {uuid.uuid4().hex[:6]}")
    (uid,) = make_users(db, 1)
    oid = gate.admit(deal.id, uid, 1, new_order_id(deal.id)).order_id
    listed = client.get("/?status=open&per_page=100")
    assert listed.status_code == 200 and deal.title in listed.get_data(as_text=True)
    token = _token(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"email": email_of(db, uid), "password": PASSWORD, "csrf_token": token})
    mine = client.get("/orders")
    assert mine.status_code == 200 and deal.title in mine.get_data(as_text=True)
    assert client.get(f"/api/orders/{oid}").json["status"] == "accepted"  # the order the page listed


def test_deal_list_and_countdowns(client) -> None:
    r = client.get("/?utm_source=mail&status=active")
    assert r.status_code == 302 and r.headers["Location"] == "/?status=active"
    assert client.get("/?status=active").status_code == 200
    assert client.get("/?status=bogus").status_code == 422
    now = datetime(2026, 1, 1, tzinfo=UTC)
    deal = {"status": "scheduled", "starts_at": "2026-01-01T00:01:05+00:00", "ends_at": "2026-01-03T02:00:00+00:00"}
    assert countdown_text(deal, now) == "Starts in 1m 05s"
    assert countdown_text({**deal, "status": "open"}, now) == "Ends in 2d 2h 00m"
    assert countdown_text({**deal, "status": "sold_out", "ends_at": "2026-01-01T03:00:09+00:00"}, now) == (
        "Ends in 3h 00m 09s"
    )
    assert countdown_text({**deal, "status": "ended"}, now) == ""


def test_forms_work_across_web_nodes(web_server, db) -> None:
    """The token lives in the Redis session: a form from node A posts to node B (any node behind the LB)."""
    import requests

    a, b = web_server(), web_server()
    email = email_of(db, make_users(db, 1)[0])
    s = requests.Session()
    token = _token(s.get(a.url + "/login").text)
    r = s.post(
        b.url + "/login", data={"email": email, "password": PASSWORD, "csrf_token": token}, allow_redirects=False
    )
    assert r.status_code == 303
    page = s.get(a.url + "/orders")
    assert page.status_code == 200 and "My orders" in page.text
    r = s.post(b.url + "/logout", data={"csrf_token": _token(page.text)}, allow_redirects=False)
    assert r.status_code == 303
    assert s.get(a.url + "/api/me").status_code == 401


# ---- browser -------------------------------------------------------------------------------


_RECORD_STATES = """() => {
  window.__states = [];
  const el = document.getElementById('order-state');
  new MutationObserver(() => { const t = el.textContent; if (window.__states.at(-1) !== t) window.__states.push(t); })
    .observe(el, {childList: true, characterData: true, subtree: true});
}"""


def test_buyer_journey_open_buy_confirm_sold_out_cancel(browser, web_server, db, settings, tmp_path) -> None:
    """Sign up, watch the sale open, buy, see it confirmed; a second buyer sees sold out; cancel gives stock back."""
    from playwright.sync_api import expect

    from harness.waits import wait_until
    from tests.helpers import CeleryProcs

    procs = CeleryProcs(tmp_path)
    try:
        worker = procs.worker("pages1", wait=False)  # boots while the browser works
        server = web_server({"CELERY_QUEUE": procs.queue})
        gate = page_gate(settings)
        a_ctx = page_context(browser, server.url)
        a = a_ctx.new_page()

        # Buyer A signs up through the form.
        a.goto("/signup")
        shot(a, "signup")
        a.get_by_label("Your name").fill("Ada")
        a.get_by_label("Email").fill(f"ada-{uuid.uuid4().hex[:8]}@example.com")
        a.get_by_label("Password").fill(PASSWORD)
        a.get_by_role("button", name="Sign up").click()
        expect(a.locator(".who")).to_contain_text("Ada")

        # A deal with one unit opens a few seconds from now.
        deal = make_deal(db, gate, stock=1, limit=1, price="129.00", starts_in=8, lasts=900, title="Espresso machine")
        other = make_deal(
            db, gate, stock=40, limit=2, price="19.90", starts_in=-60, lasts=1800, title="Wireless earbuds"
        )
        for d in (deal, other):
            invalidate_deal(gate.redis, gate.keys, d.id)  # helpers write the database directly, as no admin would
        a.goto("/?per_page=100")
        card = a.locator(f'.deal-card[data-deal="{deal.id}"]')
        expect(card.locator('[data-field="status"]')).to_have_text("Coming soon")
        expect(card.locator('[data-field="countdown"]')).to_contain_text("Starts in")
        shot(a, "deals")
        card.get_by_role("link", name="Espresso machine").click()

        expect(a.locator("#deal-status")).to_have_text("Coming soon")
        expect(a.locator("#buy")).to_be_disabled()
        expect(a.locator("#sale-message")).to_have_text("The sale has not started yet.")
        a.evaluate("window.__sameDocument = true")
        # The page flips to open by itself: no reload (the marker survives).
        expect(a.locator("#deal-status")).to_have_text("On sale", timeout=20_000)
        expect(a.locator("#buy")).to_be_enabled()
        expect(a.locator("#sale-message")).to_have_text("The sale is open. You can buy now.")
        assert a.evaluate("window.__sameDocument") is True

        worker.wait_for("ready.", timeout=60)
        a.evaluate(_RECORD_STATES)
        order_polls: list[str] = []
        a.on("request", lambda r: order_polls.append(r.url) if "/api/orders/" in r.url else None)
        a.locator("#buy").click()
        expect(a.locator("#order-state")).to_have_text("confirmed", timeout=30_000)
        polls_when_confirmed = len(order_polls)
        assert a.evaluate("window.__states")[:1] == ["accepted"]  # shown before the worker persisted it
        expect(a.locator("#order-message")).to_have_text("Order confirmed.")
        expect(a.locator("#remaining")).to_have_text("0")
        order_id = a.locator("#order-id").inner_text()
        with db.read() as s:
            assert s.execute(text("SELECT status FROM orders WHERE id = :i"), {"i": order_id}).scalar() == "confirmed"
        shot(a, "deal-confirmed")

        # Buyer B (on a phone) sees the deal sold out.
        b_ctx = page_context(browser, server.url, PHONE)
        b = b_ctx.new_page()
        log_in_on_page(b, email_of(db, make_users(db, 1)[0]))
        b.goto(f"/deals/{deal.id}")
        expect(b.locator("#deal-status")).to_have_text("Sold out")
        expect(b.locator("#sale-message")).to_contain_text("Sold out: every unit has been claimed.")
        expect(b.locator("#buy")).to_be_disabled()
        shot(b, "deal-sold-out-phone")

        # An admin watches the sale live.
        adm_ctx = page_context(browser, server.url)
        adm = adm_ctx.new_page()
        log_in_on_page(adm, email_of(db, make_users(db, 1, role="admin")[0]))
        adm.goto(f"/admin/deals/{deal.id}")
        expect(adm.locator('td[data-stat="confirmed"]')).to_have_text("1")
        expect(adm.locator('td[data-stat="remaining_stock"]')).to_have_text("0")
        shot(adm, "admin-progress")

        # A's orders page lists the order with a cancel button.
        orders = a_ctx.new_page()
        orders.goto("/orders")
        row = orders.locator(f'tr[data-order="{order_id}"]')
        expect(row.locator('[data-field="status"]')).to_have_text("confirmed")
        expect(row.get_by_role("button", name=re.compile("Cancel"))).to_be_visible()
        shot(orders, "my-orders")
        orders.close()

        assert len(order_polls) == polls_when_confirmed  # a confirmed order is no longer polled

        # A cancels on the deal page; the stock comes back for A and, without a reload, for B.
        a.locator("#cancel-order").click()
        expect(a.locator("#order-state")).to_have_text("canceled")
        expect(a.locator("#remaining")).to_have_text("1")
        expect(b.locator("#remaining")).to_have_text("1")
        expect(b.locator("#deal-status")).to_have_text("On sale")
        expect(b.locator("#buy")).to_be_enabled()
        expect(b.locator("#sale-message")).to_have_text("Stock is back: you can buy again.")
        expect(adm.locator('td[data-stat="canceled"]')).to_have_text("1", timeout=20_000)
        expect(adm.locator('td[data-stat="remaining_stock"]')).to_have_text("1")

        def persisted_canceled() -> bool:
            with db.read() as s:
                return (
                    s.execute(text("SELECT status FROM orders WHERE id = :i"), {"i": order_id}).scalar() == "canceled"
                )

        assert wait_until(persisted_canceled, 20)
        for ctx in (a_ctx, b_ctx, adm_ctx):
            ctx.close()
    finally:
        procs.close()


def test_double_click_and_retry_place_one_order(browser, web_server, db, settings) -> None:
    """A double click, and a retry after a lost answer, reuse one Idempotency-Key: exactly one order."""
    from playwright.sync_api import expect

    gate = page_gate(settings)
    server = web_server()
    deal = make_deal(db, gate, stock=5, limit=3, title="Mechanical keyboard")
    k = gate.keys.deal(deal.id)
    ctx = page_context(browser, server.url)
    page = ctx.new_page()
    log_in_on_page(page, email_of(db, make_users(db, 1)[0]))
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.headers.get("idempotency-key", "")) if r.method == "POST" else None)

    page.goto(f"/deals/{deal.id}")
    expect(page.locator("#buy")).to_be_enabled()
    page.locator("#buy").dblclick()
    expect(page.locator("#order-state")).to_have_text("accepted")
    page.wait_for_timeout(1500)  # past the button's cool-down: a late second order would have landed by now
    assert gate.redis.hlen(k.orders) == 1 and gate.redis.xlen(k.outbox) == 1
    assert int(gate.redis.get(k.stock)) == 4
    assert len(sent) >= 1 and len(set(sent)) == 1 and sent[0]

    # The answer to the next order is lost on the way back: the page retries with the same key.
    lost: list[int] = []

    def lose_first_answer(route: Any) -> None:
        if not lost:
            lost.append(route.fetch().status)  # reaches the server: the order is placed
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/api/deals/*/orders", lose_first_answer)
    sent.clear()
    page.locator("#buy").click()
    expect(page.locator("#order-state")).to_have_text("accepted")
    expect(page.locator("#order-message")).to_contain_text("Order accepted")
    assert lost == [202] and len(sent) == 2 and sent[0] == sent[1]
    assert gate.redis.hlen(k.orders) == 2 and gate.redis.xlen(k.outbox) == 2  # the retry replayed: no third order
    assert int(gate.redis.get(k.stock)) == 3

    # The per-user limit (3) is reached with a quantity of 2: a clear message, nothing placed.
    page.unroute("**/api/deals/*/orders")
    page.wait_for_timeout(1100)
    page.get_by_label("Quantity").fill("2")
    page.locator("#buy").click()
    expect(page.locator("#order-message")).to_have_text("You have reached the limit of 3 per buyer for this deal.")
    assert gate.redis.hlen(k.orders) == 2

    # Cancel one from "My orders": its stock comes back.
    page.goto("/orders")
    page.locator("button.cancel").first.click()
    expect(page.locator("#orders-message")).to_have_text("Order canceled. The stock went back on sale.")
    assert int(gate.redis.get(k.stock)) == 4
    ctx.close()


def test_scheduled_deal_refuses_with_a_clear_message(browser, web_server, db, settings) -> None:
    """Login page screenshot, and a deal that has not started: the button stays off and says why."""
    from playwright.sync_api import expect

    gate = page_gate(settings)
    server = web_server()
    deal = make_deal(db, gate, stock=3, starts_in=3600, title="Winter jacket")
    ctx = page_context(browser, server.url)
    page = ctx.new_page()
    page.goto(f"/deals/{deal.id}")
    expect(page.get_by_role("link", name="Log in to buy")).to_be_visible()
    page.get_by_role("link", name="Log in to buy").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Email").fill(email_of(db, make_users(db, 1)[0]))
    page.get_by_label("Password").fill("not-the-password-1")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    shot(page, "login-error")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(rf"/deals/{deal.id}$"))  # back to the deal after logging in
    expect(page.locator("#countdown")).to_contain_text("Starts in 59m")
    expect(page.locator("#buy")).to_be_disabled()
    # Even a forced request is refused by the gate, and the page says why.
    page.evaluate("document.getElementById('buy-form').requestSubmit()")
    expect(page.locator("#order-message")).to_contain_text("The sale has not started yet. Starts in")
    ctx.close()
