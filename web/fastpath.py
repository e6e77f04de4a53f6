"""The fast path: the requests of a sale answered without Flask's request cycle.

In a flash sale nearly every request is one of three: the deal list, a deal's detail and an
order attempt. Flask's request context, hooks and response objects cost more than the work
itself on our 2-core VM (docs/architecture.md, "Fast path"), so this WSGI middleware answers the common case
of those three directly, with the same functions as the Flask views:

- ``POST /api/deals/{id}/orders``: the buyer comes from the order token (web/order_token.py, an
  HMAC check, no I/O), else from Flask-Session's store with the same lifetime rule
  (``session_state``); the order, with its rate limits, goes through ``admit_order`` (one script and
  its WAIT: one round trip). Anything else (no token and no or an expired session, a session due
  for its idle refresh, any body the fast path does not accept as is, an unexpected error before
  the gate) is handed to Flask unchanged.
- ``GET /api/deals/{id}`` and ``GET /api/deals``: public reads that never use the session
  (``deal_detail`` and ``deal_list``); a query string that does not validate, or an unexpected
  error, is handed to Flask (a read has no effect, so running it again there is safe).

So the fast path can only answer what the views would answer, faster.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson
import redis
from flask import Flask
from pydantic import ValidationError

from shared.bounds import ID_PATTERN, parse_id
from web.admission import admit_order
from web.deals import deal_detail, deal_list
from web.errors import UNAVAILABLE_RETRY_AFTER, ApiError, error_body, outage
from web.limits import JoinLimits
from web.metrics import record_request
from web.order_token import COOKIE as ORDER_COOKIE
from web.order_token import ORDER_PATH, OrderTokens
from web.queue import join_answer, status_answer, ticket_cookie, ticket_user
from web.schemas import DealListQuery, OrderIn, QueueJoinIn
from web.services import Services
from web.sessions import COOKIE_NAME, SessionStore, session_state
from web.validation import MAX_BODY_BYTES

log = logging.getLogger(__name__)

# Flask's routes are /api/deals/<int:deal_id>[/orders] with the bounded id converter (web/ids.py):
# the same pattern and bound, so both paths take the same ids; anything else is Flask's 404.
DEAL_PATH = re.compile(rf"/api/deals/({ID_PATTERN})")
LIST_PATH = "/api/deals"
QUEUE_PATH = re.compile(rf"/api/deals/({ID_PATTERN})/queue")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
_ORDER_TOKEN = re.compile(r"[A-Za-z0-9._-]{16,200}")
# The metrics labels Flask's hooks use for these routes (their URL rules).
ORDER_ENDPOINT = "/api/deals/<int:deal_id>/orders"
DEAL_ENDPOINT = "/api/deals/<int:deal_id>"
LIST_ENDPOINT = "/api/deals"
QUEUE_ENDPOINT = "/api/deals/<int:deal_id>/queue"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Answer = tuple[int, bytes] | tuple[int, bytes, dict[str, str]]  # (status, JSON body[, extra headers])


def _cookie(header: str, wanted: str, shape: re.Pattern[str]) -> str | None:
    """Cookie ``wanted``'s value when it is a plain token of ``shape``, else None (Flask parses anything else).

    By hand because werkzeug's ``parse_cookie`` builds a MultiDict of every cookie (about a tenth
    of this path's CPU); our cookies are URL-safe tokens, so a quoted or odd value is simply handed over.
    """
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == wanted:
            return value if value and shape.fullmatch(value) else None
    return None


def _query_args(query: str) -> dict[str, str]:
    """Query-string arguments as werkzeug's ``request.args.to_dict()`` gives them (first value wins)."""
    args: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        args.setdefault(name, value)
    return args


def _error(exc: ApiError) -> Answer:
    return exc.status, orjson.dumps(error_body(exc.code, exc.message, exc.details)), exc.headers


def _answer(build: Callable[[], Answer]) -> Answer:
    """``build()``'s answer; an ApiError as its JSON error, a Redis outage (down, failing over, full) as its 503."""
    try:
        return build()
    except ApiError as exc:
        return _error(exc)
    except redis.RedisError as exc:
        answer = outage(exc)  # the rule of Flask's handlers (web/errors.py)
        if answer is None:
            raise
        status, body, headers = answer
        return status, orjson.dumps(body), headers


def _read(build: Callable[[], Answer], what: str) -> Answer | None:
    """``_answer`` for a public read; any other error hands the request to Flask (a read is safe to run again)."""
    try:
        return _answer(build)
    except Exception:
        log.debug("fast path: handing %s over to Flask", what, exc_info=True)
        return None


class FastPath:
    """WSGI middleware in front of the Flask app; see the module docstring for what it answers."""

    def __init__(self, app: Flask, inner: WSGIApp) -> None:
        self.inner = inner
        self.svc: Services = app.extensions["flashdeal"]
        store = app.session_interface
        assert isinstance(store, SessionStore)
        self.store = store
        self.tokens: OrderTokens = app.extensions["order_tokens"]
        settings = self.svc.settings
        self.enabled = self.orders = settings.fast_path
        # WAITING ROOM: with rate limits on, the fast path counts the join view's Flask-Limiter windows itself
        # (web/limits.py: JoinLimits); a limiter it cannot mirror leaves every join to Flask.
        self.join_limits = JoinLimits.of(settings) if settings.ratelimit_enabled else None
        self.joins = self.enabled and (not settings.ratelimit_enabled or self.join_limits is not None)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.enabled:
            start = time.perf_counter()
            routed = self._route(environ)
            if routed is not None:
                endpoint, method, (status, payload, *extra) = routed
                record_request(endpoint, method, status, time.perf_counter() - start)
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
                if method == "POST":
                    headers.append(("Vary", "Cookie"))  # as Flask-Session marks any answer that read the session
                for more in extra:
                    headers.extend(more.items())
                if status == 503 and not any(name == "Retry-After" for name, _ in headers):
                    headers.append(("Retry-After", UNAVAILABLE_RETRY_AFTER))
                start_response(f"{status} {HTTPStatus(status).phrase}", headers)
                return [payload]
        return self.inner(environ, start_response)

    def _route(self, environ: dict[str, Any]) -> tuple[str, str, Answer] | None:
        """(endpoint, method, answer) for a request the fast path answers, else None."""
        method = environ.get("REQUEST_METHOD")
        path = environ.get("PATH_INFO", "")
        if method == "GET":
            if path == LIST_PATH:
                answer = self._list(environ.get("QUERY_STRING", ""))
                return None if answer is None else (LIST_ENDPOINT, method, answer)
            match = DEAL_PATH.fullmatch(path)
            deal_id = None if match is None else parse_id(match.group(1))
            if deal_id is not None:
                answer = self._detail(deal_id)
                return None if answer is None else (DEAL_ENDPOINT, method, answer)
            match = QUEUE_PATH.fullmatch(path)
            deal_id = None if match is None else parse_id(match.group(1))
            if deal_id is not None:
                answer = self._queue_status(environ, deal_id)
                return None if answer is None else (QUEUE_ENDPOINT, method, answer)
        elif method == "POST" and self.orders:
            match = ORDER_PATH.fullmatch(path)
            deal_id = None if match is None else parse_id(match.group(1))
            if deal_id is not None:
                answer = self._order(environ, deal_id)
                return None if answer is None else (ORDER_ENDPOINT, method, answer)
        if method == "POST" and self.joins:
            match = QUEUE_PATH.fullmatch(path)
            deal_id = None if match is None else parse_id(match.group(1))
            if deal_id is not None:
                answer = self._queue_join(environ, deal_id)
                return None if answer is None else (QUEUE_ENDPOINT, method, answer)
        return None

    def _detail(self, deal_id: int) -> Answer | None:
        """GET /api/deals/{id}, as the ``get_deal`` view answers it."""
        return _read(lambda: (200, orjson.dumps(deal_detail(self.svc, deal_id))), "a deal read")

    def _list(self, query: str) -> Answer | None:
        """GET /api/deals, as the ``list_deals`` view answers it; a query Flask must word a 422 for is handed over."""

        def build() -> Answer:
            q = DealListQuery.model_validate(_query_args(query)) if query else DealListQuery()
            return 200, orjson.dumps(deal_list(self.svc, q))

        return _read(build, "the deal list")

    def _queue_status(self, environ: dict[str, Any], deal_id: int) -> Answer | None:
        """GET /api/deals/{id}/queue, as the queue ``room`` view answers a GET (every waiting buyer polls it).

        The buyer comes from the poll ticket (web/queue.py: one HMAC, no I/O), else from the session.
        """
        now = time.time()
        try:
            header = environ.get("HTTP_COOKIE", "")
            ticket = ticket_user(self.svc, header, now)
            user_id, renew = ticket if ticket is not None else (self._user(environ), True)
        except Exception:
            log.debug("queue fast path: handing over to Flask", exc_info=True)
            return None
        if user_id is None:
            return None
        cookie = ticket_cookie(self.svc, user_id, _cookie(header, COOKIE_NAME, _TOKEN), now) if renew else {}
        # A read for the buyer, and the inlet's step, which is safe to run again: any surprise goes to Flask.
        return _read(lambda: (200, orjson.dumps(status_answer(self.svc, user_id, deal_id)), cookie), "a queue poll")

    def _queue_join(self, environ: dict[str, Any], deal_id: int) -> Answer | None:
        """POST /api/deals/{id}/queue, as the queue ``room`` view answers a POST; anything unusual goes to Flask."""
        try:
            content_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
            length = environ.get("CONTENT_LENGTH", "")
            if content_type != "application/json" or not length.isdigit() or not 0 < int(length) <= MAX_BODY_BYTES:
                return None
            user_id = self._user(environ)
            if user_id is None:
                return None
            raw = environ["wsgi.input"].read(int(length))
            environ["wsgi.input"] = io.BytesIO(raw)  # consumed: Flask must be able to read it again
            body = QueueJoinIn.model_validate_json(raw)
            ip = environ.get("REMOTE_ADDR") or "127.0.0.1"
            if self.join_limits is not None and not self.join_limits.within(self.svc.direct, user_id, ip):
                return None  # over a limit: Flask-Limiter answers the 429 with its headers
        except Exception:
            log.debug("queue join fast path: handing over to Flask", exc_info=True)
            return None
        # A join is safe to run again (one place per buyer): any surprise goes to Flask.
        sid = _cookie(environ.get("HTTP_COOKIE", ""), COOKIE_NAME, _TOKEN)
        return _read(lambda: join_answer(self.svc, user_id, sid, deal_id, body), "a queue join")

    def _user(self, environ: dict[str, Any]) -> int | None:
        """The logged-in buyer of a valid session not due for its refresh, else None (Flask answers)."""
        sid = _cookie(environ.get("HTTP_COOKIE", ""), COOKIE_NAME, _TOKEN)
        data = self.store.load(sid) if sid else None
        if data is None or data.get("uid") is None:
            return None
        if session_state(data, self.svc.settings, time.time()) != "valid":
            return None
        return int(data["uid"])

    def _order(self, environ: dict[str, Any], deal_id: int) -> Answer | None:
        """POST /api/deals/{id}/orders, as the ``place_order`` view answers it."""
        try:
            found = self._read(environ)
        except Exception:
            log.debug("order fast path: handing over to Flask", exc_info=True)
            return None
        if found is None:
            return None
        user_id, quantity, renewed = found
        idem = environ.get("HTTP_IDEMPOTENCY_KEY")  # None: no header (a blank one is refused, not ignored)
        ip = environ.get("REMOTE_ADDR") or "127.0.0.1"

        def build() -> Answer:
            admitted = admit_order(self.svc, deal_id, user_id, quantity, idem, ip, environ.get("HTTP_QUEUE_PASS", ""))
            return admitted.http_status, orjson.dumps(admitted.body()), admitted.headers()

        try:
            status, payload, *extra = _answer(build)
        except Exception:
            # The gate may have run: answering is all that is left, in the shape Flask's handler uses.
            log.exception("unhandled error in the order fast path")
            return 500, orjson.dumps(error_body("internal_error", "Internal error; it has been logged."))
        headers = dict(extra[0]) if extra else {}
        if renewed:
            headers["Set-Cookie"] = renewed  # the session path renews the order token, as Flask's hook does
        return status, payload, headers

    def _buyer(self, environ: dict[str, Any], now: float) -> tuple[int, str] | tuple[None, str | None]:
        """(user id, "") from a valid order token; else (None, the session id to read, or None: Flask answers)."""
        cookies = environ.get("HTTP_COOKIE", "")
        user_id = self.tokens.buyer(_cookie(cookies, ORDER_COOKIE, _ORDER_TOKEN), now)
        if user_id is not None:
            return user_id, ""
        return None, _cookie(cookies, COOKIE_NAME, _TOKEN)

    def _read(self, environ: dict[str, Any]) -> tuple[int, int, str] | None:
        """(buyer, quantity, a renewed token's Set-Cookie or "") when the request is a plain one, else None."""
        content_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        length = environ.get("CONTENT_LENGTH", "")
        if content_type != "application/json" or not length.isdigit() or not 0 < int(length) <= MAX_BODY_BYTES:
            return None
        now = time.time()
        user_id, sid = self._buyer(environ, now)
        if user_id is None and not sid:
            return None
        raw = environ["wsgi.input"].read(int(length))
        # The body is consumed: whatever happens next, Flask must be able to read it again.
        environ["wsgi.input"] = io.BytesIO(raw)
        renewed = ""
        if user_id is None:
            # No valid order token: the session path (one Redis read), which also renews the token.
            data = self.store.load(sid)  # type: ignore[arg-type]
            if data is None or data.get("uid") is None:
                return None
            if session_state(data, self.svc.settings, now) != "valid":
                return None  # expired, or due for its idle refresh: Flask's hook does both
            user_id = int(data["uid"])
            renewed = self.tokens.set_cookie(user_id, now)  # no valid token was sent: this one is due
        try:
            body = OrderIn.model_validate_json(raw)
        except ValidationError:
            return None  # Flask's parse_body words the 400/422
        return user_id, body.quantity, renewed
