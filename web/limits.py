"""Rate limits (Flask-Limiter on Redis storage), per user and per IP."""

from __future__ import annotations

from flask import Flask, request, session
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from shared.keys import Keys
from shared.settings import Settings
from web.services import services

# Created unbound; init_limits binds it to each app (one app per process in production).
limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)


def init_limits(app: Flask, settings: Settings) -> None:
    """Bind the limiter to the app with Redis storage."""
    app.config.update(
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_STORAGE_URI=settings.redis_url,
        RATELIMIT_KEY_PREFIX=Keys(settings.key_prefix).ratelimit_prefix,
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_STRATEGY="fixed-window",
        # Redis down must not stop sales: the gate itself will fail loudly if Redis is gone.
        RATELIMIT_SWALLOW_ERRORS=True,
    )
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
