"""Proof of origin for every state-changing API call, checked in one place for all of /api.

SameSite=Lax keeps the session cookie off cross-site form posts, but not off a post from a page
on a sibling subdomain (same site), and a bodyless call (logout, cancel, admin open and close)
has no JSON body whose content type would prove anything. So every POST, PUT, PATCH and DELETE
under /api must carry one of:

- ``Content-Type: application/json``: an HTML form cannot send it, and a cross-origin script
  that sets it must pass a CORS preflight, which we never grant;
- an ``X-Requested-With`` header (any value): likewise impossible for a form, preflighted for a script;
- ``X-CSRF-Token`` equal to the session's page token (web/csrf.py), for clients that prefer it.

Anything else is refused: a form or text body with 415 ``unsupported_media_type`` (the answer
the JSON endpoints always gave it), a request without a body type with 403 ``origin_required``.
The order fast path (web/fastpath.py) only takes JSON bodies, so whatever it answers itself
already carries the proof.
"""

from __future__ import annotations

import hmac
import re

from flask import Flask, request, session

from web.csrf import SESSION_KEY
from web.errors import ApiError
from web.validation import JSON_ONLY

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEADER = "X-Requested-With"
TOKEN_HEADER = "X-CSRF-Token"
# What counts as a value of HEADER (the OpenAPI document states the same pattern): visible ASCII, spaces
# and tabs, at least one visible character ("XMLHttpRequest", "fetch", ...).
HEADER_VALUE = re.compile(r"[\t ]*[!-~][\t !-~]*")


def has_proof_of_origin() -> bool:
    """True when the request shows it comes from our pages or an API client (see the module docstring)."""
    if request.mimetype == "application/json" or HEADER_VALUE.fullmatch(request.headers.get(HEADER, "")):
        return True
    sent = request.headers.get(TOKEN_HEADER, "")
    expected = str(session.get(SESSION_KEY) or "") if sent else ""
    # compare_digest: no timing hint about how many characters matched.
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def init_origin_check(app: Flask) -> None:
    """Refuse state-changing /api calls without proof of origin, before any view or limit runs."""

    @app.before_request
    def _require_origin() -> None:
        if request.method not in STATE_CHANGING or not request.path.startswith("/api/") or has_proof_of_origin():
            return
        if request.routing_exception is not None:
            # No such path, or not this method (404, 405 with Allow): that answer first, as for any client.
            # Nothing runs for such a request, so there is nothing a forged call could trigger.
            return
        if request.mimetype:
            # A form or text body: what a cross-site form sends. Answered as the JSON endpoints
            # always have (web/validation.py: require_json).
            raise ApiError(415, "unsupported_media_type", JSON_ONLY)
        message = f"Send JSON (Content-Type: application/json) or an {HEADER} header with this request."
        raise ApiError(403, "origin_required", message)
