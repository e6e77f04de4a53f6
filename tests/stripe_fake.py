"""A local server speaking the part of Stripe's API the shop uses, for the real ``stripe`` package.

Checkout Sessions (create with an idempotency key, retrieve, expire), refunds, a stand-in hosted page
(``GET/POST /pay/<session>``) that completes the session and sends the buyer to its ``success_url``, and
events signed as Stripe signs them (``Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "t.payload")``), posted to
``webhook_url`` when it is set. ``delay_s`` makes every API answer late (a slow provider).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import requests

WEBHOOK_SECRET = "whsec_test_" + "a" * 24


def stripe_signature(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for payload, computed as Stripe does."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def stripe_event(kind: str, obj: dict[str, Any], event_id: str = "") -> bytes:
    """A Stripe event about an object, as JSON bytes."""
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return json.dumps(event).encode()


class FakeStripe:
    """The local Stripe: records every API request in ``calls``; sessions by id in ``sessions``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, str] = {}
        self.webhook_url = ""
        self.delay_s = 0.0
        self.deliveries: list[int] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                fake.handle(self, "GET", {})

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                fake.handle(self, "POST", {k: v[0] for k, v in parse_qs(body).items()})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- the API ---------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str, form: dict[str, str]) -> None:
        path = h.path.split("?")[0]
        if path.startswith("/pay/"):
            self.hosted_page(h, method, path.removeprefix("/pay/"))
            return
        self.calls.append({"method": method, "path": path, "form": form, "headers": dict(h.headers)})
        if self.delay_s:
            time.sleep(self.delay_s)
        parts = path.strip("/").split("/")
        key = h.headers.get("Idempotency-Key", "")
        with self.lock:
            if method == "POST" and path == "/v1/checkout/sessions":
                status, obj = 200, self.create_session(form, key)
            elif parts[:3] == ["v1", "checkout", "sessions"] and len(parts) >= 4 and parts[3] in self.sessions:
                s = self.sessions[parts[3]]
                if len(parts) == 5 and parts[4] == "expire" and method == "POST":
                    if s["status"] != "open":
                        status, obj = 400, _error(f"Only open sessions can be expired (this one is {s['status']}).")
                    else:
                        s["status"] = "expired"
                        status, obj = 200, s
                else:
                    status, obj = 200, s
            elif method == "POST" and path == "/v1/refunds":
                rid = "re_" + uuid.uuid5(uuid.NAMESPACE_URL, key).hex[:24]
                status, obj = 200, {"id": rid, "object": "refund", "payment_intent": form.get("payment_intent"),
                                    "status": "succeeded"}  # fmt: skip
            else:
                status, obj = 404, _error(f"Unrecognized request URL ({method}: {path}).")
        _answer(h, status, "application/json", json.dumps(obj).encode())

    def create_session(self, form: dict[str, str], key: str) -> dict[str, Any]:
        if key in self.by_key:  # Stripe replays an idempotent request
            return self.sessions[self.by_key[key]]
        sid = "cs_test_" + uuid.uuid4().hex
        meta = {k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[")}
        amount = int(form["line_items[0][price_data][unit_amount]"]) * int(form["line_items[0][quantity]"])
        session = {
            "id": sid,
            "object": "checkout.session",
            "url": f"{self.url}/pay/{sid}",
            "status": "open",
            "payment_status": "unpaid",
            "mode": form.get("mode"),
            "amount_total": amount,
            "currency": form["line_items[0][price_data][currency]"],
            "metadata": meta,
            "client_reference_id": form.get("client_reference_id"),
            "payment_intent": None,
            "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
            "expires_at": int(form["expires_at"]) if "expires_at" in form else int(time.time()) + 86400,
        }
        self.sessions[sid] = session
        self.by_key[key] = sid
        return session

    # ---- what the buyer and Stripe do ------------------------------------------------------------

    def complete(self, sid: str, send: bool = True) -> bool:
        """The buyer pays on the hosted page: the session completes (False when it is no longer open)."""
        with self.lock:
            s = self.sessions[sid]
            if s["status"] != "open":
                return False
            s.update(status="complete", payment_status="paid", payment_intent="pi_" + uuid.uuid4().hex[:24])
            obj = dict(s)
        if send:
            self.send("checkout.session.completed", obj)
        return True

    def send(self, kind: str, obj: dict[str, Any], event_id: str = "") -> int:
        """Post a signed event to webhook_url; its status code (recorded in ``deliveries``)."""
        payload = stripe_event(kind, obj, event_id)
        r = requests.post(
            self.webhook_url,
            data=payload,
            headers={"Stripe-Signature": stripe_signature(payload), "Content-Type": "application/json; charset=utf-8"},
            timeout=30,
        )
        self.deliveries.append(r.status_code)
        return r.status_code

    def hosted_page(self, h: BaseHTTPRequestHandler, method: str, sid: str) -> None:
        s = self.sessions.get(sid)
        if s is None:
            _answer(h, 404, "text/plain", b"no such session")
            return
        if method == "POST":
            paid = self.complete(sid)
            target = s["success_url"] if paid else s["cancel_url"]
            h.send_response(303)
            h.send_header("Location", target)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        amount = f"{s['amount_total'] / 100:.2f} {s['currency'].upper()}"
        page = (
            "<!doctype html><title>Stripe Checkout (stand-in)</title>"
            f"<h1>Pay {html.escape(amount)}</h1><p id='state'>{html.escape(s['status'])}</p>"
            f"<form method='post' action='/pay/{html.escape(sid)}'><button type='submit'>Pay {html.escape(amount)}"
            "</button></form>"
        )
        _answer(h, 200, "text/html; charset=utf-8", page.encode())


def _error(message: str) -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "message": message}}


def _answer(h: BaseHTTPRequestHandler, status: int, ctype: str, data: bytes) -> None:
    try:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up (its timeout): as Stripe's server, nothing to do
