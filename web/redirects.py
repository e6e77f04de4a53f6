"""Where the shop may send a browser: one rule for every redirect target that comes from a request.

A ``next`` value is read the way a browser will read the ``Location`` header we put it in (the
WHATWG URL standard): leading and trailing C0 controls and spaces are stripped, tabs and
newlines anywhere are removed, and a backslash is a slash. What is left must be a path on this
origin: it starts with one ``/`` and is not ``//host`` (a scheme-relative URL). Anything else, or
anything that cannot be read at all, is the deal list. The path that passes is percent-encoded
(non-ASCII, controls, spaces, quotes), so the header always holds plain ASCII and never fails.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from flask import url_for

MAX_TARGET = 2048  # longer "next" values are no path of ours
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
# RFC 3986 path, query and fragment characters, plus "%" so existing escapes stay as they are.
_KEEP = "/?#[]@!$&'()*+,;=:-._~%"


def normalise(target: str) -> str:
    """The URL string a browser would parse from ``target`` (WHATWG: strip, drop tab/newline, ``\\`` is ``/``)."""
    return _TAB_OR_NEWLINE.sub("", target.strip(_C0_OR_SPACE)).replace("\\", "/")


def local_path(target: str | None) -> str | None:
    """``target`` as a percent-encoded path on this origin, or None when a browser would leave the shop."""
    if not target or len(target) > MAX_TARGET:
        return None
    url = normalise(target)
    if not url.startswith("/") or url.startswith("//"):
        return None
    try:
        parts = urlsplit(url)
        encoded = quote(url, safe=_KEEP, errors="strict")
    except (ValueError, UnicodeError):
        return None  # e.g. a lone surrogate: not a path anyone could follow
    if parts.scheme or parts.netloc:
        return None
    return encoded


def safe_next(target: str | None) -> str:
    """Where to go after login: ``target`` when it stays on the shop, else the deal list."""
    return local_path(target) or url_for("pages.deals_page")
