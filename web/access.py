"""Who is asking: the current user and role, login and admin required, the admin role checked in PostgreSQL.

The session remembers the role it logged in with, which is enough to show or hide the admin
links; it is never enough to act as an admin: a demoted or deleted admin would keep admin
rights for the session's whole life. Every admin action asks PostgreSQL, through a per-process
cache of ROLE_CACHE_SECONDS so that an admin page polling its stats costs one read per moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, session

from shared.models import User
from web.errors import ApiError
from web.services import services

ROLE_CACHE_SECONDS = 2.0
# user id -> (valid until, role or None for a deleted user). Plain dict operations: atomic under the GIL.
_roles: dict[int, tuple[float, str | None]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def current_user_id() -> int | None:
    """The logged-in user's id, or None."""
    uid = session.get("uid")
    return int(uid) if uid is not None else None


def current_role() -> str | None:
    """The logged-in user's role as the session remembers it, or None (never enough to act as an admin)."""
    return session.get("role")


def require_user() -> int:
    """The logged-in user's id, or a 401 error."""
    uid = current_user_id()
    if uid is None:
        message = "Your session has expired; log in again." if g.get("session_expired") else "Log in first."
        raise ApiError(401, "unauthorized", message)
    return uid


def stored_role(user_id: int) -> str | None:
    """The role PostgreSQL holds for the user (None when the account is gone), at most ROLE_CACHE_SECONDS old."""
    now = time.monotonic()
    cached = _roles.get(user_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    with services().db.read() as s:
        user = s.get(User, user_id)
        role = None if user is None else user.role
    _roles[user_id] = (now + ROLE_CACHE_SECONDS, role)
    return role


def is_admin() -> bool:
    """True when the logged-in user is an admin now, per PostgreSQL."""
    uid = current_user_id()
    # A session that logged in as a buyer needs no lookup: promotion takes effect at the next login.
    return uid is not None and current_role() == "admin" and stored_role(uid) == "admin"


def login_required(fn: F) -> F:
    """View decorator: 401 unless logged in."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_user()
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def admin_required(fn: F) -> F:
    """View decorator: 401 unless logged in, 403 unless an admin (asked of PostgreSQL: the session grants nothing)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_user()
        if not is_admin():
            raise ApiError(403, "forbidden", "Admins only.")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
