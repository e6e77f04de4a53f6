"""Rate limits (Flask-Limiter on Redis storage), per user and per IP."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from flask import Flask, session
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import RateLimitItem, parse_many
from limits.strategies import FixedWindowRateLimiter

from shared.keys import Keys
from shared.redis import DirectCalls, limits_storage_options, limits_storage_uri
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


def signup_ip_limit() -> str:
    """Signups per client IP (the API and the signup page count in one window)."""
    return services().settings.ratelimit_signup_ip


# Flask-Limiter scope shared by POST /api/auth/signup and POST /signup: one window per IP for both.
SIGNUP_SCOPE = "signup"


def user_key() -> str:
    """Rate-limit key of the logged-in user (falls back to the IP)."""
    uid = session.get("uid")
    return f"user:{uid}" if uid is not None else f"ip:{get_remote_address()}"


JOIN_ENDPOINT = "queue.room"  # Flask-Limiter's scope for the waiting room's view (its limits count joins only)


@dataclass(frozen=True)
class OrderWindow:
    """One order rate-limit window, counted by the admission script (shared/lua/admit.lua) in the deal's slot."""

    scope: str  # "user" or "ip": whose attempts it counts
    amount: int
    seconds: int
    text: str  # as Flask-Limiter words it in a 429: "30 per 1 second"


@functools.lru_cache(maxsize=16)
def order_windows(per_user: str, per_ip: str) -> tuple[OrderWindow, ...]:
    """The order limits (RATELIMIT_ORDER, RATELIMIT_ORDER_IP), parsed by ``limits`` as Flask-Limiter parses them.

    Why not Flask-Limiter on the order view: its counters are one command each in slots of their own,
    a round trip on top of the admission's; the script counts the same fixed windows in the same
    round trip (docs/order-token.md). The windows are per deal: a counter must share the deal's slot.
    """
    return tuple(
        OrderWindow(scope, item.amount, item.get_expiry(), str(item))
        for scope, spec in (("user", per_user), ("ip", per_ip))
        for item in parse_many(spec)
    )


@dataclass(frozen=True)
class JoinLimits:
    """The waiting room join view's Flask-Limiter limits, checked outside Flask by the join fast path.

    Same library objects, same counters: the items are parsed by ``limits`` (Flask-Limiter's
    engine), the keys built by ``RateLimitItem.key_for`` and the storage's ``prefixed_key`` with
    the identifiers Flask-Limiter passes for a route limit (its key prefix, the key function's
    value, then the endpoint as scope), and the counters bumped by the storage's own fixed-window
    script. Only the transport differs: all counters in one round trip on a DirectCalls
    connection, where Flask-Limiter makes one redis-py call per limit.
    """

    storage: Any
    key_prefix: str  # RATELIMIT_KEY_PREFIX, which Flask-Limiter puts first among the identifiers
    per_user: tuple[RateLimitItem, ...]
    per_ip: tuple[RateLimitItem, ...]

    @classmethod
    def of(cls, settings: Settings) -> JoinLimits | None:
        """The join limits of the limiter init_limits just bound; None unless it is a fixed window on Redis."""
        if not isinstance(limiter.limiter, FixedWindowRateLimiter) or not hasattr(limiter.storage, "lua_incr_expire"):
            return None
        prefix = Keys(settings.key_prefix).ratelimit_prefix
        per_user, per_ip = settings.ratelimit_queue_join, settings.ratelimit_queue_join_ip
        return cls(limiter.storage, prefix, tuple(parse_many(per_user)), tuple(parse_many(per_ip)))

    def within(self, direct: DirectCalls, user_id: int, ip: str) -> bool:
        """Count one join in every window; False when any window is over its limit."""
        user, addr = (self.key_prefix, f"user:{user_id}", JOIN_ENDPOINT), (self.key_prefix, ip, JOIN_ENDPOINT)
        hits = [(item, user) for item in self.per_user] + [(item, addr) for item in self.per_ip]
        script = self.storage.lua_incr_expire
        counts = direct.scripts(
            *((script, [self.storage.prefixed_key(item.key_for(*ids))], [item.get_expiry(), 1]) for item, ids in hits)
        )
        return all(int(n) <= item.amount for n, (item, _ids) in zip(counts, hits, strict=True))
