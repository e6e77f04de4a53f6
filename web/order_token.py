"""The order token: a short-lived signed cookie that proves the buyer on the order path without Redis.

Reading the session costs one Redis round trip, as much as the admission itself (docs/order-token.md).
On ``POST /api/deals/{id}/orders`` the buyer may instead be proven by ``flashdeal_order``, a pass of
kind ``order`` (shared/passes.py: HMAC-SHA256 under SECRET_KEY, bound to the user, for any deal,
valid ``ORDER_TOKEN_SECONDS``). The fast path and the Flask view both take it first, then the session.

- Issued at login (API and form) and renewed by any session-backed request (pages, ``/api/me``, the
  order view on the session path, the fast path's session path) when missing or past half its lifetime.
  Renewal needs a live session: the token never renews itself.
- Logout and an expired session clear the cookie; a copy of the token kept elsewhere stays valid
  until it expires (at most ORDER_TOKEN_SECONDS). A role change changes nothing on the order path
  (ordering needs no role); a password change does not end tokens already issued (same bound).
- Cookie: HttpOnly, SameSite=Lax, Secure when SESSION_COOKIE_SECURE, path ``/``; only the order
  route accepts it (a queue pass or any other kind is refused there, and it is refused everywhere else).
"""

from __future__ import annotations

import functools
import re
import time
from typing import Any

from flask import Flask, Response, current_app, g, request, session
from werkzeug.http import dump_cookie

from shared.bounds import ID_PATTERN
from shared.passes import MAX_PASS_LEN, Pass, PassSigner
from shared.settings import Settings
from web.sessions import COOKIE_NAME as SESSION_COOKIE
from web.sessions import SessionStore, is_public_read

COOKIE = "flashdeal_order"
# Why "/" and not only /api/deals, where it is read: the pages and /api/me renew it when it is past half its
# life, which they can only tell when they get it; under /api/deals alone they would re-issue it on every request.
COOKIE_PATH = "/"
KIND = "order"
ORDER_PATH = re.compile(rf"/api/deals/({ID_PATTERN})/orders")  # the one route that takes the token


class OrderTokens:
    """Issues, verifies and renews the order token of one app (one secret, one lifetime)."""

    def __init__(self, settings: Settings) -> None:
        self._signer = PassSigner(settings.secret_key, KIND)
        self.lifetime = settings.order_token_seconds
        self._secure = settings.session_cookie_secure
        # Why a cache: a buyer sends the same token with every attempt for minutes, and checking its
        # HMAC (itsdangerous derives the key, then signs again) was a fifth of the order path's CPU in
        # the profile (~40 us of ~200 us on the loaded 2-core VM). Keyed by the whole token, signature
        # included: only the exact bytes that verified once hit; the expiry is checked on every hit.
        # Bounded (lru_cache is thread-safe); a flood of junk tokens only evicts, costing a verify again.
        self._checked = functools.lru_cache(maxsize=65536)(self._signature_ok)

    def _signature_ok(self, token: str) -> Pass | None:
        found = self._signer.verify(token, 0)  # signature, kind and shape; the expiry is the caller's
        return found if found is not None and found.deal_id is None else None

    def buyer(self, token: str | None, now: float) -> int | None:
        """The user id a valid token proves, else None (HMAC only: no I/O)."""
        # A token is ~80 characters; a longer value is never one, and must not fill the cache.
        found = self._checked(token) if token and len(token) <= MAX_PASS_LEN else None
        return found.user_id if found is not None and found.expires_at > now else None

    def due(self, token: str | None, user_id: int, now: float) -> bool:
        """True when ``user_id`` should get a new token: none, another user's, or past half its lifetime."""
        found = self._signer.verify_for(token, user_id, None, now) if token else None
        return found is None or found.deal_id is not None or found.expires_at - now < self.lifetime / 2

    def set_cookie(self, user_id: int, now: float) -> str:
        """A Set-Cookie header value carrying a fresh token for ``user_id``."""
        value = self._signer.issue(user_id, None, int(now) + self.lifetime)
        return self._cookie(value, self.lifetime)

    def clear_cookie(self) -> str:
        """A Set-Cookie header value removing the token."""
        return self._cookie("", 0)

    def _cookie(self, value: str, max_age: int) -> str:
        return dump_cookie(
            COOKIE, value, max_age=max_age, path=COOKIE_PATH, secure=self._secure, httponly=True, samesite="Lax"
        )


def order_tokens() -> OrderTokens:
    """The current app's order tokens."""
    return current_app.extensions["order_tokens"]


def token_buyer() -> int | None:
    """The buyer the request's order token proves, else None (the Flask view's twin of the fast path's check)."""
    return order_tokens().buyer(request.cookies.get(COOKIE), time.time())


def init_order_tokens(app: Flask, settings: Settings) -> None:
    """Issue the token at login, renew it on session-backed requests, clear it at logout."""
    tokens = OrderTokens(settings)
    app.extensions["order_tokens"] = tokens

    def _proven_order(req: Any) -> bool:
        # An order attempt with a valid token never reads the session, in the Flask view as in the fast path.
        return (
            req.method == "POST"
            and ORDER_PATH.fullmatch(req.path) is not None
            and tokens.buyer(req.cookies.get(COOKIE), time.time()) is not None
        )

    store = app.session_interface
    assert isinstance(store, SessionStore)
    store.sessionless.append(_proven_order)

    @app.after_request
    def _renew_order_token(resp: Response) -> Response:
        if g.get("logged_out") or g.get("session_expired"):
            resp.headers.add("Set-Cookie", tokens.clear_cookie())
            return resp
        # Only requests that opened the session anyway (the same rule as its lifetime hook): the
        # token must not cost a cookie-less or public request a Redis read.
        if not g.get("logged_in") and (SESSION_COOKIE not in request.cookies or is_public_read(request)):
            return resp
        uid = session.get("uid")
        now = time.time()
        if uid is not None and tokens.due(request.cookies.get(COOKIE), int(uid), now):
            resp.headers.add("Set-Cookie", tokens.set_cookie(int(uid), now))
        return resp
