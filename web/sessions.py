"""Session setup: Flask-Session on Redis, idle timeout and absolute lifetime, starting and ending a session.

Who is asking (current user, login and admin required, roles) is web/access.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Flask, g, request, session
from flask_session.base import ServerSideSession, ServerSideSessionInterface
from flask_session.redis import RedisSession

from shared.keys import Keys
from shared.redis import DirectCalls, bytes_client
from shared.settings import Settings

COOKIE_NAME = "flashdeal_session"
PUBLIC_READS = re.compile(r"/api/deals(/[0-9]+)?")  # JSON endpoints that never use the session


def is_public_read(request: Any) -> bool:
    """A deal list or detail read: it never looks at the session, so the session is never opened."""
    return request.method in ("GET", "HEAD") and PUBLIC_READS.fullmatch(request.path) is not None


class SessionStore(ServerSideSessionInterface):
    """Flask-Session's server-side sessions, stored in Redis through a per-thread connection (DirectCalls).

    Why not Flask-Session's RedisSessionInterface: it accepts only a ``redis.Redis`` and silently
    replaces anything else (a ``RedisCluster``) with a client of localhost:6379 (flask-session 0.8,
    ``RedisSessionInterface.__init__``). Its base class keeps what matters (session ids, cookie,
    permanence, serialization); the three storage calls below are the whole Redis part, one code path
    for every topology: DirectCalls routes each key to its node on a cluster. Why DirectCalls and not
    the client: every logged-in request reads its session, so the read is on the order path and skips
    redis-py's client layer like the gate does; the rare writes use the same connection.
    """

    session_class = RedisSession
    ttl = True  # Redis expires the records itself: no clean-up job

    def __init__(self, app: Flask, direct: DirectCalls, key_prefix: str) -> None:
        super().__init__(app, key_prefix=key_prefix, permanent=True)
        self._direct = direct
        # Requests that never need the session, besides the public reads (web/order_token.py adds one).
        self.sessionless: list[Callable[[Any], bool]] = []

    def _retrieve_session_data(self, store_id: str) -> dict[str, Any] | None:
        raw = self._direct.call("GET", store_id, raw=True)
        return self.serializer.decode(raw) if raw else None

    def _delete_session(self, store_id: str) -> None:
        self._direct.call("DEL", store_id)  # safe to repeat (DirectCalls retries a dropped connection)

    def _upsert_session(self, session_lifetime: timedelta, session: ServerSideSession, store_id: str) -> None:
        # Safe to repeat: the same value and TTL again.
        ttl = max(int(session_lifetime.total_seconds()), 1)
        self._direct.call("SET", store_id, self.serializer.encode(session), "EX", ttl)

    def open_session(self, app: Flask, request: Any) -> Any:
        """Open the request's session; the public catalog reads skip the Redis read altogether."""
        if is_public_read(request) or any(skip(request) for skip in self.sessionless):
            # Flask opens the session before routing, for every request with a cookie. The deal
            # list and detail never look at it, and they are two thirds of a buyer's requests in
            # a sale: an empty, unsaved session spares them a Redis round trip.
            return self.session_class(sid="", permanent=self.permanent)
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        """Save as Flask-Session does; nothing to save when the session could not be opened."""
        if session is None:
            return  # Redis was unreachable when the request began: the error handler answered 503
        super().save_session(app, session, response)

    def load(self, sid: str) -> dict[str, Any] | None:
        """The stored data of session ``sid`` (unsigned cookie value), or None."""
        return self._retrieve_session_data(self._get_store_id(sid))


def session_state(data: Any, settings: Settings, now: float) -> str:
    """The lifetime rule: ``expired`` (absolute or idle), ``refresh`` (push the idle timeout) or ``valid``."""
    seen = float(data.get("seen", 0))
    too_old = now - float(data.get("login_at", 0)) >= settings.session_absolute_seconds
    if too_old or now - seen >= settings.session_idle_seconds:
        return "expired"
    return "refresh" if now - seen >= settings.session_refresh_seconds else "valid"


def init_sessions(app: Flask, settings: Settings) -> None:
    """Configure Flask-Session on Redis and enforce the lifetimes on every request."""
    app.config.update(
        SESSION_PERMANENT=True,
        # The Redis TTL is the idle timeout; it is pushed forward by before_request below.
        PERMANENT_SESSION_LIFETIME=settings.session_idle_seconds,
        # Rewriting the session on every request costs a fifth of the order path (measured: ~3,400
        # against ~4,200 orders/s through the LB); we refresh it only when older than session_refresh_seconds.
        SESSION_REFRESH_EACH_REQUEST=False,
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
    )
    app.session_interface = SessionStore(
        app, DirectCalls(bytes_client(settings)), Keys(settings.key_prefix).session_prefix
    )

    @app.before_request
    def _enforce_lifetimes() -> None:
        if COOKIE_NAME not in request.cookies or is_public_read(request):
            # Not touching the session keeps cookie-less requests (probes, anonymous reads) and
            # the public deal reads free of the session's bookkeeping and of a needless
            # "Vary: Cookie" (their answer is the same for everyone).
            return
        uid = session.get("uid")
        if uid is None:
            return
        now = time.time()
        state = session_state(session, settings, now)
        if state == "expired":
            # Expired on the server whatever the cookie says: drop the record.
            session.clear()
            g.session_expired = True
        elif state == "refresh":
            session["seen"] = now  # marks the session modified: saved with a fresh TTL


def login_session(app: Flask, user_id: int, role: str) -> None:
    """Start an authenticated session under a new session id (no fixation)."""
    app.session_interface.regenerate(session)  # type: ignore[attr-defined]
    session.clear()
    now = time.time()
    session.update(uid=user_id, role=role, login_at=now, seen=now)
    session.permanent = True
    session.modified = True
    g.logged_in = True  # web/order_token.py issues the order token with this answer


def logout_session() -> None:
    """End the session: the server-side record is deleted and the cookie removed (the order token's too)."""
    session.clear()
    g.logged_out = True  # web/order_token.py clears the order token cookie
