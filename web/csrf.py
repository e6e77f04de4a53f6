"""CSRF tokens for the HTML forms: one random token per session, checked on every page POST.

The JSON API needs none of this: it refuses form and text content types, which a cross-site
HTML form cannot get around. Page forms are plain form posts, so they carry this token.
"""

from __future__ import annotations

import hmac
import secrets

from flask import abort, request, session

FIELD = "csrf_token"
SESSION_KEY = "csrf"


def csrf_token() -> str:
    """The session's token, created on first use (stored server-side with the session)."""
    token = session.get(SESSION_KEY)
    if not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_KEY] = token
    return str(token)


def check_csrf() -> None:
    """Abort with 400 unless the posted form carries the session's token."""
    expected = str(session.get(SESSION_KEY) or "")
    sent = request.form.get(FIELD, "")
    # compare_digest: no timing hint about how many characters matched.
    if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, description="This form has expired or did not come from this site. Reload the page and try again.")
