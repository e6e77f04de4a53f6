"""Helpers of the browser tests (tests/system/test_*pages.py): a browser context, the login form, screenshots."""

from __future__ import annotations

import os
import re
from typing import Any

import redis

from shared.gate import Gate
from shared.keys import Keys
from shared.settings import Settings
from tests.environment import ROOT
from tests.helpers import PASSWORD

SHOTS = ROOT / "docs" / "screenshots"
DESKTOP = {"width": 1100, "height": 760}
PHONE = {"width": 390, "height": 780}


def page_context(browser: Any, base_url: str, viewport: dict[str, int] = DESKTOP) -> Any:
    """A browser context on ``base_url``: English, UTC, 15 s timeouts."""
    ctx = browser.new_context(base_url=base_url, viewport=viewport, locale="en-GB", timezone_id="UTC")
    ctx.set_default_timeout(15_000)
    return ctx


def page_gate(settings: Settings) -> Gate:
    """A gate on this run's Redis, for the state a browser test sets up around the pages."""
    return Gate(redis.Redis.from_url(settings.redis_url, decode_responses=True), Keys(settings.key_prefix))


def shot(page: Any, name: str) -> None:
    """Save a screenshot of the page for the docs when UPDATE_SCREENSHOTS=1."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def log_in_on_page(page: Any, email: str) -> None:
    """Log in through the HTML form."""
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))
