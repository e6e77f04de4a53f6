"""The load generator: buyers that order, cancel, pay (dev provider) or let orders expire, recording a history."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Sequence

import requests

from faults.history import History, Kind, Op

TIMEOUT_S = 5.0  # beyond this the outcome is unknown (info): the request may still have run
ORIGIN = {"X-Requested-With": "fetch"}  # proof of origin of a bodyless state-changing call (web/origin.py)
CARD_PAYS = "4242424242424242"
# What a buyer does with an order once placed; the rest are left unpaid to expire at pay_by.
CANCEL_SHARE, PAY_SHARE = 0.25, 0.35


def login(base: str, email: str, password: str) -> requests.Session:
    """A session logged in at a web node, for every web node."""
    s = requests.Session()
    r = s.post(f"{base}/api/auth/login", json={"email": email, "password": password}, timeout=10)
    r.raise_for_status()
    # The session lives in Redis, so any node serves it: send its cookie to every node, not only to ``base``.
    cookies = [(c.name, c.value) for c in s.cookies]
    s.cookies.clear()
    for name, value in cookies:
        s.cookies.set(name, value)
    return s


def _code(r: requests.Response) -> str:
    """The error code of a JSON error answer, '' for any other."""
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def _outcome(status: int) -> str:
    """ok for 2xx, fail for a definite refusal (4xx), info for 5xx (the script may have run before the error)."""
    if status < 300:
        return "ok"
    return "fail" if status < 500 else "info"


class Buyer(threading.Thread):
    """One user's session: order, then cancel, pay or walk away, until ``stop`` is set."""

    def __init__(
        self,
        name: str,
        session: requests.Session,
        user_id: int,
        nodes: Sequence[str],
        deals: Sequence[int],
        history: History,
        stop: threading.Event,
        seed: int,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.s, self.user_id, self.nodes, self.deals = session, user_id, list(nodes), list(deals)
        self.history, self.stop, self.rng = history, stop, random.Random(seed)

    def _op(self, kind: Kind, deal_id: int, **kw) -> Op:  # type: ignore[no-untyped-def]
        return self.history.invoke(Op(kind, deal_id, self.user_id, self.name, **kw))

    def _post(self, op: Op, url: str, **kw) -> requests.Response | None:  # type: ignore[no-untyped-def]
        """POST; a timeout or a dropped connection completes ``op`` as info and returns None."""
        try:
            return self.s.post(url, timeout=TIMEOUT_S, **kw)
        except requests.RequestException as exc:
            History.complete(op, "info", error=type(exc).__name__)
            return None

    def order(self, base: str, deal_id: int) -> Op:
        """Place one order of one unit under a fresh Idempotency-Key."""
        op = self._op("order", deal_id, key=f"{self.name}-{uuid.uuid4().hex[:12]}", node=base)
        r = self._post(
            op, f"{base}/api/deals/{deal_id}/orders", json={"quantity": 1}, headers={"Idempotency-Key": op.key}
        )
        if r is not None:
            body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
            error = (body.get("error") or {}).get("code", "") if r.status_code >= 300 else ""
            History.complete(
                op, _outcome(r.status_code), r.status_code, dict(r.headers), error, body.get("order_id", "")
            )  # type: ignore[arg-type]
        return op

    def cancel(self, base: str, deal_id: int, order_id: str) -> Op:
        """Cancel an order (200 ok; 409 when already paid or expired: fail)."""
        op = self._op("cancel", deal_id, order_id=order_id, node=base)
        r = self._post(op, f"{base}/api/orders/{order_id}/cancel", headers=ORIGIN)
        if r is not None:
            History.complete(op, _outcome(r.status_code), r.status_code, dict(r.headers))  # type: ignore[arg-type]
        return op

    def pay(self, base: str, deal_id: int, order_id: str) -> Op:
        """Open the payment and pay it on the dev provider's checkout; ok once the answer says the order is paid."""
        op = self._op("pay", deal_id, order_id=order_id, node=base)
        r = self._post(op, f"{base}/api/orders/{order_id}/pay", headers=ORIGIN)
        if r is None:
            return op
        if r.status_code != 200:  # no payment opened: nothing was paid
            return History.complete(op, "fail", r.status_code, error=f"not_opened:{_code(r)}")
        r = self._post(op, base + r.json()["checkout_url"], json={"card": CARD_PAYS})
        if r is None:
            return op
        if r.status_code == 200:
            paid = r.json().get("order_status") == "paid"
            return History.complete(op, "ok" if paid else "fail", 200, dict(r.headers), "" if paid else "refunded")
        return History.complete(op, _outcome(r.status_code), r.status_code, dict(r.headers), _code(r))  # type: ignore[arg-type]

    def run(self) -> None:
        while not self.stop.is_set():
            base, deal_id = self.rng.choice(self.nodes), self.rng.choice(self.deals)
            op = self.order(base, deal_id)
            if op.outcome != "ok" or not op.order_id:
                if op.outcome != "ok":
                    self.stop.wait(0.02)
                continue
            roll = self.rng.random()
            if roll < CANCEL_SHARE:
                self.cancel(base, deal_id, op.order_id)
            elif roll < CANCEL_SHARE + PAY_SHARE:
                self.pay(base, deal_id, op.order_id)
