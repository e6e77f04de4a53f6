"""CSRF tokens for the HTML forms, checked on every page POST.

Two holders, and no server-side state for anonymous visitors:

- a logged-in buyer's token lives in the session (it has a server-side record anyway), one random
  token per session, so a new login (a new session) invalidates every earlier form;
- an anonymous visitor (the login and signup forms) gets a *signed double-submit cookie* (OWASP's
  CSRF cheat sheet): a random value signed with SECRET_KEY and timestamped (itsdangerous, Flask's
  own signer), sent both as an HttpOnly cookie and in the form. A cross-site page can neither read
  the cookie nor forge a signed value, and the token costs Redis nothing, so a loop of page views
  leaves no state behind. The cookie is dropped at login (web/sessions.py: login_session).

The JSON API needs none of this: it refuses form and text content types, which a cross-site
HTML form cannot get around (web/origin.py).
"""

from __future__ import annotations

import hmac
import secrets

from flask import Response, abort, current_app, g, request, session
from itsdangerous import BadSignature, URLSafeTimedSerializer

FIELD = "csrf_token"
SESSION_KEY = "csrf"
COOKIE = "flashdeal_form"
MAX_AGE_S = 2 * 3600  # an anonymous form older than this asks for a reload
_SALT = "flashdeal.form-csrf"


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or "", salt=_SALT)


def _valid_signed(value: str) -> bool:
    """True for a token this shop signed within MAX_AGE_S."""
    try:
        _signer().loads(value, max_age=MAX_AGE_S)
    except BadSignature:  # SignatureExpired is one
        return False
    return True


def csrf_token() -> str:
    """The token for a form on this page: the session's (logged in) or the visitor's signed cookie (anonymous)."""
    if session.get("uid") is not None:
        token = session.get(SESSION_KEY)
        if not token:
            token = secrets.token_urlsafe(32)
            session[SESSION_KEY] = token
        return str(token)
    token = g.get("csrf_cookie") or request.cookies.get(COOKIE, "")
    if not token or not _valid_signed(token):
        token = _signer().dumps(secrets.token_urlsafe(16))
    g.csrf_cookie = token
    return token


def set_csrf_cookie(resp: Response) -> None:
    """Send the anonymous visitor's signed token as a cookie when this page used it; drop it once logged in."""
    token = g.get("csrf_cookie")
    if token and token != request.cookies.get(COOKIE):
        resp.set_cookie(
            COOKIE,
            token,
            max_age=MAX_AGE_S,
            httponly=True,
            samesite="Lax",
            secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")),
        )
    elif session.get("uid") is not None and COOKIE in request.cookies:
        resp.delete_cookie(COOKIE)


def check_csrf() -> None:
    """Abort with 400 unless the posted form carries the right token (see the module docstring)."""
    sent = request.form.get(FIELD, "")
    if session.get("uid") is not None:
        expected = str(session.get(SESSION_KEY) or "")
    else:
        cookie = request.cookies.get(COOKIE, "")
        expected = cookie if cookie and _valid_signed(cookie) else ""
    # compare_digest: no timing hint about how many characters matched.
    if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, description="This form has expired or did not come from this site. Reload the page and try again.")
