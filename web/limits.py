"""Rate limits (Flask-Limiter on Redis storage), per user and per IP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, request, session
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import RateLimitItem, parse_many
from limits.strategies import FixedWindowRateLimiter

from shared.keys import Keys
from shared.redis_client import DirectCalls, limits_storage_options, limits_storage_uri
from shared.settings import Settings
from web.services import services

# Created unbound; init_limits binds it to each app (one app per process in production).
limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)


def init_limits(app: Flask, settings: Settings) -> None:
    """Bind the limiter to the app with Redis storage."""
    app.config.update(
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_STORAGE_URI=limits_storage_uri(settings),
        RATELIMIT_STORAGE_OPTIONS=limits_storage_options(settings),
        RATELIMIT_KEY_PREFIX=Keys(settings.key_prefix).ratelimit_prefix,
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_STRATEGY="fixed-window",
        # Redis down must not stop sales: the gate itself will fail loudly if Redis is gone.
        RATELIMIT_SWALLOW_ERRORS=True,
    )
    # Why clear first: Flask-Limiter 4.1's init_app merges RATELIMIT_STORAGE_OPTIONS into the limiter's own
    # dict (``_storage_options.update``), and the limiter is this module's, shared by every app of the process.
    # A second app (tests build many) kept the first one's options: a cluster app's require_full_coverage
    # made every later single-Redis app's counters fail (swallowed: no limit at all).
    limiter._storage_options.clear()
    limiter.init_app(app)


def login_ip_limit() -> str:
    """Login attempts per client IP."""
    return services().settings.ratelimit_login_ip


def login_user_limit() -> str:
    """Login attempts per account (email)."""
    return services().settings.ratelimit_login


def login_email_key() -> str:
    """Rate-limit key of a login attempt: the email it tries."""
    data = request.get_json(silent=True)
    email = data.get("email") if isinstance(data, dict) else None
    return f"login:{str(email).strip().lower()[:254]}" if email else f"login-ip:{get_remote_address()}"


def signup_ip_limit() -> str:
    """Signups per client IP (the API and the signup page count in one window)."""
    return services().settings.ratelimit_signup_ip


# Flask-Limiter scope shared by POST /api/auth/signup and POST /signup: one window per IP for both.
SIGNUP_SCOPE = "signup"


def order_ip_limit() -> str:
    """Order attempts per client IP."""
    return services().settings.ratelimit_order_ip


def order_user_limit() -> str:
    """Order attempts per logged-in user."""
    return services().settings.ratelimit_order


def user_key() -> str:
    """Rate-limit key of the logged-in user (falls back to the IP)."""
    uid = session.get("uid")
    return f"user:{uid}" if uid is not None else f"ip:{get_remote_address()}"


ORDER_ENDPOINT = "orders.place_order"  # Flask-Limiter's scope for limits declared on the order view
JOIN_ENDPOINT = "queue.room"  # the same for the waiting room's view (its limits count joins only)


@dataclass(frozen=True)
class OrderLimits:
    """The order view's Flask-Limiter limits, checked outside Flask by the order fast path.

    Same library objects, same counters: the items are parsed by ``limits`` (Flask-Limiter's
    engine), the keys built by ``RateLimitItem.key_for`` and the storage's ``prefixed_key`` with
    the identifiers Flask-Limiter passes for a route limit (its key prefix, the key function's
    value, then the endpoint as scope), and the counters bumped by the storage's own fixed-window
    script. Only the transport differs: all counters in one round trip on a DirectCalls
    connection, where Flask-Limiter makes one redis-py call per limit (README, "Fast path").
    ``tests/test_fastpath.py`` checks that both paths count into the same windows.
    """

    storage: Any
    key_prefix: str  # RATELIMIT_KEY_PREFIX, which Flask-Limiter puts first among the identifiers
    per_user: tuple[RateLimitItem, ...]
    per_ip: tuple[RateLimitItem, ...]
    endpoint: str = ORDER_ENDPOINT  # the view whose limits these are (Flask-Limiter's scope)

    @classmethod
    def of(cls, settings: Settings) -> OrderLimits | None:
        """The order limits of the limiter init_limits just bound; None unless it is a fixed window on Redis."""
        return cls._bound(settings, settings.ratelimit_order, settings.ratelimit_order_ip, ORDER_ENDPOINT)

    @classmethod
    def of_joins(cls, settings: Settings) -> OrderLimits | None:
        """The same for the waiting room's join view (web/queue.py), which the fast path answers too."""
        return cls._bound(settings, settings.ratelimit_queue_join, settings.ratelimit_queue_join_ip, JOIN_ENDPOINT)

    @classmethod
    def _bound(cls, settings: Settings, per_user: str, per_ip: str, endpoint: str) -> OrderLimits | None:
        if not isinstance(limiter.limiter, FixedWindowRateLimiter) or not hasattr(limiter.storage, "lua_incr_expire"):
            return None
        prefix = Keys(settings.key_prefix).ratelimit_prefix
        return cls(limiter.storage, prefix, tuple(parse_many(per_user)), tuple(parse_many(per_ip)), endpoint)

    def within(self, direct: DirectCalls, user_id: int, ip: str) -> bool:
        """Count one order attempt in every window; False when any window is over its limit."""
        user, addr = (self.key_prefix, f"user:{user_id}", self.endpoint), (self.key_prefix, ip, self.endpoint)
        hits = [(item, user) for item in self.per_user] + [(item, addr) for item in self.per_ip]
        script = self.storage.lua_incr_expire
        counts = direct.scripts(
            *((script, [self.storage.prefixed_key(item.key_for(*ids))], [item.get_expiry(), 1]) for item, ids in hits)
        )
        return all(int(n) <= item.amount for n, (item, _ids) in zip(counts, hits, strict=True))
