"""Accounts blueprint: signup, login, logout, me."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from shared.accounts import EmailTaken, authenticate, create_user
from shared.models import User
from web.access import login_required, require_user
from web.errors import ApiError
from web.limits import SIGNUP_SCOPE, limiter, signup_ip_limit
from web.login_throttle import login_limits, remember_device
from web.openapi import doc
from web.schemas import LoginIn, SignupIn, UserOut
from web.services import services
from web.sessions import login_session, logout_session
from web.validation import parse_body

bp = Blueprint("auth", __name__, url_prefix="/api")


def _user_out(user: User) -> dict[str, Any]:
    return UserOut(id=user.id, email=user.email, name=user.name, role=user.role).model_dump()  # type: ignore[arg-type]


@bp.post("/auth/signup")
@limiter.shared_limit(signup_ip_limit, scope=SIGNUP_SCOPE)
@doc("Create a buyer account", body=SignupIn, responses={201: UserOut, 409: None, 422: None, 429: None})
def signup() -> Any:
    """Create a buyer account."""
    data = parse_body(SignupIn)
    try:
        with services().db.transaction() as s:
            user = create_user(s, data.email, data.password, data.name)
    except EmailTaken:
        raise ApiError(409, "email_taken", "An account with this email already exists.") from None
    return jsonify(_user_out(user)), 201


@bp.post("/auth/login")
@login_limits
@doc("Log in; sets the session cookie", body=LoginIn, responses={200: UserOut, 401: None, 422: None, 429: None})
def login() -> Any:
    """Check the password and start a session under a new id."""
    data = parse_body(LoginIn)
    with services().db.read() as s:
        user = authenticate(s, data.email, data.password)
    if user is None:
        raise ApiError(401, "invalid_credentials", "Wrong email or password.")
    login_session(current_app, user.id, user.role)
    resp = jsonify(_user_out(user))
    remember_device(resp, data.email)
    return resp


@bp.post("/auth/logout")
@doc("Log out; the server-side session is deleted", responses={204: None})
def logout() -> Any:
    """End the session (204 even without one: logging out is idempotent)."""
    logout_session()
    return "", 204


@bp.get("/me")
@login_required
@doc("The logged-in user", responses={200: UserOut, 401: None}, auth="session")
def me() -> Any:
    """Return the logged-in user."""
    uid = require_user()
    with services().db.read() as s:
        user = s.get(User, uid)
    if user is None:
        logout_session()
        raise ApiError(401, "unauthorized", "This account no longer exists.")
    return jsonify(_user_out(user))
