"""Login throttling, as the OWASP authentication cheat sheet describes it: one set of windows for every way in.

Three Flask-Limiter limits, shared by ``POST /api/auth/login`` and the login form (``POST /login``)
through shared scopes, so both count into the same windows:

- per (account, address) pair, failed attempts only (RATELIMIT_LOGIN, default ``5/minute;20/hour;
  100/day``): the back-off. An address guessing one account gets five tries a minute, then fewer
  and fewer (twenty an hour, a hundred a day); a success is not counted. A stranger's failures
  count against the stranger's own pair, so they never lock the owner out of their account.
- per address, every attempt (RATELIMIT_LOGIN_IP): one address spraying many accounts.
- per account across all addresses, failed attempts only (RATELIMIT_LOGIN_ACCOUNT): guessing
  spread over many addresses. A device that has logged in to this account before carries a signed
  *device cookie* for it (OWASP's "device cookies") and is exempt from this one, so even a
  distributed attack cannot lock the owner out on their own devices; it still has its pair window.

Failed means the password check failed (401); refused (429) and malformed (4xx) attempts cost nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, current_app, request
from flask_limiter.util import get_remote_address
from itsdangerous import BadSignature, URLSafeTimedSerializer

from web.limits import limiter
from web.services import services

F = TypeVar("F", bound=Callable[..., Any])

DEVICE_COOKIE = "flashdeal_device"
DEVICE_MAX_AGE_S = 90 * 86400
_DEVICE_SALT = "flashdeal.login-device"
MAX_EMAIL = 254


def attempted_email() -> str:
    """The account a login attempt names, normalised as accounts are (the API's JSON or the form's field)."""
    data = request.get_json(silent=True) if request.is_json else None
    raw = data.get("email") if isinstance(data, dict) else request.form.get("email")
    return str(raw or "").strip().lower()[:MAX_EMAIL]


def _account_id(email: str) -> str:
    # A digest, not the address itself: the counters' keys (and the device cookie) name no email.
    return hashlib.sha256(email.encode()).hexdigest()[:32]


def pair_key() -> str:
    """Rate-limit key of the (account, address) pair."""
    return f"login:{_account_id(attempted_email())}:{get_remote_address()}"


def account_key() -> str:
    """Rate-limit key of the account, whatever the address."""
    return f"login-account:{_account_id(attempted_email())}"


def _failed(resp: Response) -> bool:
    return resp.status_code == 401


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or "", salt=_DEVICE_SALT)


def known_device() -> bool:
    """True when the request carries this shop's device cookie for the account it tries."""
    cookie = request.cookies.get(DEVICE_COOKIE, "")
    if not cookie:
        return False
    try:
        accounts = _signer().loads(cookie, max_age=DEVICE_MAX_AGE_S)
    except BadSignature:
        return False
    return isinstance(accounts, list) and _account_id(attempted_email()) in accounts


def remember_device(resp: Response, email: str) -> None:
    """After a successful login: this device is known for this account (up to 5 accounts a device)."""
    try:
        accounts = _signer().loads(request.cookies.get(DEVICE_COOKIE, ""), max_age=DEVICE_MAX_AGE_S)
    except BadSignature:
        accounts = []
    account = _account_id(email.strip().lower()[:MAX_EMAIL])
    kept = [a for a in accounts if isinstance(a, str) and a != account][-4:] + [account]
    resp.set_cookie(
        DEVICE_COOKIE,
        _signer().dumps(kept),
        max_age=DEVICE_MAX_AGE_S,
        httponly=True,
        samesite="Lax",
        secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")),
    )


def _pair_limit() -> str:
    return services().settings.ratelimit_login


def _ip_limit() -> str:
    return services().settings.ratelimit_login_ip


def _account_limit() -> str:
    return services().settings.ratelimit_login_account


def login_limits(view: F) -> F:
    """The three login windows (see the module docstring), shared by every login view."""
    view = limiter.shared_limit(_ip_limit, scope="login-ip")(view)
    view = limiter.shared_limit(
        _account_limit, scope="login-account", key_func=account_key, deduct_when=_failed, exempt_when=known_device
    )(view)
    return limiter.shared_limit(_pair_limit, scope="login-pair", key_func=pair_key, deduct_when=_failed)(view)  # type: ignore[return-value]
