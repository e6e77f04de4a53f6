"""The reference scenario: each buyer logs in once, then loops deal list -> deal detail -> order, no think time.

Run by ``python -m bench.reference`` (which starts the LB stack, creates the deal and the buyers and sets):
  BENCH_DEAL_ID     the deal to browse and buy
  BENCH_USERS_FILE  one buyer email a line (password BENCH_PASSWORD)
  BENCH_409_DIR     where each process writes its count of expected 409 answers on exit
By hand: locust -f bench/locustfile.py --headless -u 300 -r 100 -t 60s --host http://127.0.0.1:8080 Buyer
``Ceiling`` measures the generator itself: the same users on nginx's own /lb-healthz (no web node involved).
A 409 (sold_out / limit_exceeded / deal_not_open) is an expected answer of a flash sale, not an error: it is
marked as a success and counted apart; anything else that is not 202 is a real failure.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task

DEAL_ID = int(os.environ.get("BENCH_DEAL_ID", "1"))
PASSWORD = os.environ.get("BENCH_PASSWORD", "bench-password-1")
_EMAILS: list[str] = []
EXPECTED_409: Counter[str] = Counter()


def _emails() -> list[str]:
    """The buyers' emails, read once per process."""
    if not _EMAILS:
        path = os.environ.get("BENCH_USERS_FILE")
        _EMAILS.extend(Path(path).read_text().split() if path else ["buyer@flashdeal.example.com"])
    return _EMAILS


class Buyer(FastHttpUser):
    """One buyer: log in once, then list -> detail -> order in a tight loop."""

    wait_time = constant(0)

    def on_start(self) -> None:
        """Log in through the API (the session cookie is kept by the client)."""
        email = random.choice(_emails())
        with self.client.post(
            "/api/auth/login", json={"email": email, "password": PASSWORD}, name="POST /api/auth/login",
            catch_response=True,
        ) as resp:  # fmt: skip
            if resp.status_code != 200:
                resp.failure(f"login {resp.status_code}")

    @task
    def browse_and_buy(self) -> None:
        """Deal list, deal detail, one order."""
        self.client.get("/api/deals", name="GET /api/deals")
        self.client.get(f"/api/deals/{DEAL_ID}", name="GET /api/deals/{id}")
        with self.client.post(
            f"/api/deals/{DEAL_ID}/orders", json={"quantity": 1}, name="POST /api/deals/{id}/orders",
            catch_response=True,
        ) as resp:  # fmt: skip
            if resp.status_code == 202:
                resp.success()
            elif resp.status_code == 409:
                EXPECTED_409[_code(resp.text)] += 1
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code}")


class Ceiling(FastHttpUser):
    """Calibration: how many requests/s this Locust process can make at all on this machine."""

    wait_time = constant(0)

    @task
    def lb_health(self) -> None:
        """Answered by nginx itself."""
        self.client.get("/lb-healthz", name="GET /lb-healthz (nginx only)")


def _code(body: str | None) -> str:
    """The error code of a 409 body."""
    try:
        return json.loads(body or "{}")["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "unknown"


@events.quitting.add_listener
def _write_409s(environment: Any, **_: Any) -> None:
    """Leave this process's count of expected 409s for the runner."""
    out = os.environ.get("BENCH_409_DIR")
    if out:
        Path(out, f"{os.getpid()}.json").write_text(json.dumps(dict(EXPECTED_409)))
