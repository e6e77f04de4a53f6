"""The order fast path: ``POST /api/deals/{id}/orders`` answered without Flask's request cycle.

In a flash sale nearly every request is an order attempt. Flask's request context, hooks and
response objects cost about three times the admission itself on our 2-core VM (README, "Order
fast path"), so this WSGI middleware answers the common case directly: a valid session, a valid
JSON body, within the order rate limits. The decision is the same code as the Flask view's: the
session comes from Flask-Session's store with the same lifetime rule (``session_state``), the
limits are Flask-Limiter's windows (``OrderLimits``) and the order goes through ``admit_order``.
Everything else (no or expired session, a session due for its idle refresh, any body the fast
path does not accept as is, a request over a rate limit, an unexpected error before the gate) is
handed to the Flask app unchanged, which answers it as it always did. So the fast path can only
answer what the view would answer, faster.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from flask import Flask
from pydantic import ValidationError

from web.errors import REDIS_DOWN, UNAVAILABLE, UNAVAILABLE_RETRY_AFTER, ApiError, error_body
from web.limits import OrderLimits
from web.metrics import record_request
from web.orders import admit_order
from web.schemas import OrderIn
from web.services import Services
from web.sessions import COOKIE_NAME, SessionStore, session_state
from web.validation import MAX_BODY_BYTES

log = logging.getLogger(__name__)

# Flask's route is /api/deals/<int:deal_id>/orders; anything less plain (leading zeros, huge
# numbers) is left to Flask's own URL matching.
ORDER_PATH = re.compile(r"/api/deals/([1-9][0-9]{0,17})/orders")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
ENDPOINT = "/api/deals/<int:deal_id>/orders"  # the metrics label Flask's hooks use for this route

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _session_id(header: str) -> str | None:
    """The session cookie's value when it is a plain token, else None (Flask parses anything else).

    By hand because werkzeug's ``parse_cookie`` builds a MultiDict of every cookie (about a tenth
    of this path's CPU); session ids are URL-safe tokens, so a quoted or odd value is simply handed over.
    """
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE_NAME:
            return value if value and _TOKEN.fullmatch(value) else None
    return None


class OrderFastPath:
    """WSGI middleware in front of the Flask app; see the module docstring for what it answers."""

    def __init__(self, app: Flask, inner: WSGIApp) -> None:
        self.inner = inner
        self.svc: Services = app.extensions["flashdeal"]
        store = app.session_interface
        assert isinstance(store, SessionStore)
        self.store = store
        settings = self.svc.settings
        # With rate limits on, the fast path counts the order view's Flask-Limiter windows itself
        # (web/limits.py: OrderLimits); a limiter it cannot mirror leaves every order to Flask.
        self.limits = OrderLimits.of(settings) if settings.ratelimit_enabled else None
        self.enabled = settings.order_fast_path and (not settings.ratelimit_enabled or self.limits is not None)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.enabled and environ.get("REQUEST_METHOD") == "POST":
            match = ORDER_PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None:
                start = time.perf_counter()
                answer = self._answer(environ, int(match.group(1)))
                if answer is not None:
                    status, payload = answer
                    record_request(ENDPOINT, "POST", status, time.perf_counter() - start)
                    headers = [
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(payload))),
                        ("Vary", "Cookie"),  # as Flask-Session marks any answer that read the session
                    ]
                    if status == 503:
                        headers.append(("Retry-After", UNAVAILABLE_RETRY_AFTER))
                    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
                    return [payload]
        return self.inner(environ, start_response)

    def _answer(self, environ: dict[str, Any], deal_id: int) -> tuple[int, bytes] | None:
        """(status, JSON body), or None to hand the request to Flask."""
        try:
            found = self._read(environ)
        except Exception:
            log.debug("order fast path: handing over to Flask", exc_info=True)
            return None
        if found is None:
            return None
        user_id, quantity = found
        idem = environ.get("HTTP_IDEMPOTENCY_KEY", "")
        try:
            admitted = admit_order(self.svc, deal_id, user_id, quantity, idem)
        except ApiError as exc:
            return exc.status, orjson.dumps(error_body(exc.code, exc.message, exc.details))
        except REDIS_DOWN as exc:
            log.warning("Redis unavailable: %s", exc)
            return 503, orjson.dumps(error_body("unavailable", UNAVAILABLE))
        except Exception:
            # The gate may have run: answering is all that is left, in the shape Flask's handler uses.
            log.exception("unhandled error in the order fast path")
            return 500, orjson.dumps(error_body("internal_error", "Internal error; it has been logged."))
        return 202, orjson.dumps(admitted.body())

    def _read(self, environ: dict[str, Any]) -> tuple[int, int] | None:
        """The buyer and quantity when the request is a plain one, else None (Flask answers it)."""
        content_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        length = environ.get("CONTENT_LENGTH", "")
        if content_type != "application/json" or not length.isdigit() or not 0 < int(length) <= MAX_BODY_BYTES:
            return None
        sid = _session_id(environ.get("HTTP_COOKIE", ""))
        if not sid:
            return None
        raw = environ["wsgi.input"].read(int(length))
        # The body is consumed: whatever happens next, Flask must be able to read it again.
        environ["wsgi.input"] = io.BytesIO(raw)
        data = self.store.load(sid)
        if data is None or data.get("uid") is None:
            return None
        if session_state(data, self.svc.settings, time.time()) != "valid":
            return None  # expired, or due for its idle refresh: Flask's hook does both
        try:
            body = OrderIn.model_validate_json(raw)
        except ValidationError:
            return None  # Flask's parse_body words the 400/422
        user_id = int(data["uid"])
        if self.limits is not None and not self.limits.within(
            self.svc.direct, user_id, environ.get("REMOTE_ADDR") or "127.0.0.1"
        ):
            return None  # over a limit: Flask-Limiter answers the 429 with its headers
        return user_id, body.quantity
