"""The admin role, checked against PostgreSQL for admin actions (cached for a moment at most).

The session remembers the role it logged in with, which is enough to show or hide the admin
links; it is never enough to act as an admin: a demoted or deleted admin would keep admin
rights for the session's whole life. Every admin action asks PostgreSQL, through a per-process
cache of ROLE_CACHE_SECONDS so that an admin page polling its stats costs one read per moment.
"""

from __future__ import annotations

import time

from shared.models import User
from web.services import services
from web.sessions import current_role, current_user_id

ROLE_CACHE_SECONDS = 2.0
# user id -> (valid until, role or None for a deleted user). Plain dict operations: atomic under the GIL.
_roles: dict[int, tuple[float, str | None]] = {}


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
