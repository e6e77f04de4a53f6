"""Accounts: creating users and checking passwords (argon2 via argon2-cffi)."""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.models import User

_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """A hash to verify against when the email is unknown, so a login takes the same time either way.

    Made at the first login, not at import: an argon2id hash costs 64 MiB and tens of milliseconds.
    """
    return _hasher.hash("flashdeal-timing-equaliser")


class EmailTaken(Exception):
    """The email is already registered."""


def hash_password(password: str) -> str:
    """Hash a password with argon2id."""
    return _hasher.hash(password)


def create_user(session: Session, email: str, password: str, name: str, role: str = "buyer") -> User:
    """Insert a user; raises EmailTaken on a duplicate email. The caller commits."""
    user = User(email=email.strip().lower(), password_hash=hash_password(password), name=name, role=role)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        raise EmailTaken(email) from exc
    return user


def authenticate(session: Session, email: str, password: str) -> User | None:
    """Return the user if the password matches, else None."""
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    try:
        _hasher.verify(user.password_hash if user else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    return user
