"""The bounds every input is held to at the edge, so no value PostgreSQL would refuse reaches it.

One rule each, used by the API schemas, the URL converter, the fast path, the pages and the CLI.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from decimal import Decimal

MAX_ID = 2**63 - 1  # PostgreSQL bigint, the type of every id column
# An id as it may appear in a URL: no sign, no leading zero, at most as many digits as MAX_ID.
ID_PATTERN = r"[1-9][0-9]{0,18}"

# Deal windows: well inside what PostgreSQL and Python's datetime both read back. A date of
# year 9999 in a zone west of UTC is year 10000 in UTC: PostgreSQL stores it, psycopg cannot
# read it, and the row would break every query that returns it.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

# Numeric(12, 2): ten digits before the point.
MAX_PRICE = Decimal("9999999999.99")

_LINE_BREAKS = frozenset("\n\r\t")


def parse_id(text: str) -> int | None:
    """The id a URL segment names, or None when it is not a bigint id (caller answers 404)."""
    if not (1 <= len(text) <= 19 and text.isascii() and text.isdigit() and text[0] != "0"):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` cannot be stored as text, or None.

    Control characters (NUL among them: PostgreSQL's text cannot hold it) and lone surrogates
    (they have no UTF-8 encoding) are refused; ``multiline`` text may hold line breaks and tabs.
    """
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "must be valid Unicode text"
        if category == "Cc" and not (multiline and ch in _LINE_BREAKS):
            return "must not contain control characters"
    return None


def check_text(value: str, *, multiline: bool = False) -> str:
    """``value`` unchanged, or ValueError naming the problem (pydantic turns it into a 422)."""
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        raise ValueError(problem)
    return value


NAME_MAX = 100  # a user's display name: users.name is VARCHAR(100) (shared/models.py)


def name_problem(name: str) -> str | None:
    """Why ``name`` (stripped) is not acceptable as a display name, or None (signup and the CLI)."""
    if not 1 <= len(name.strip()) <= NAME_MAX:
        return f"must be 1 to {NAME_MAX} characters"
    return text_problem(name)


PASSWORD_MIN, PASSWORD_MAX = 8, 128
# The rule of a new account's password in words (signup's OpenAPI description, the CLI's --help);
# password_problem below is the check itself, and web/schemas.py spells it as a JSON Schema pattern too.
PASSWORD_RULE = (
    f"{PASSWORD_MIN} to {PASSWORD_MAX} characters, letters mixed with digits or symbols, no control characters"
)


def password_problem(password: str) -> str | None:
    """Why ``password`` is not acceptable for a new account, or None (signup, pages and the CLI)."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"
    problem = text_problem(password)
    if problem is not None:
        return problem
    if not any(c.isalpha() for c in password) or all(c.isalpha() for c in password):
        return "must mix letters with digits or symbols"
    return None


def utc_in_range(when: datetime) -> datetime:
    """``when`` (which must carry a zone) in UTC, or ValueError when outside [EARLIEST, LATEST)."""
    if when.tzinfo is None:
        raise ValueError("must carry a time zone (Z or +hh:mm)")
    try:
        utc = when.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)")
    return utc
