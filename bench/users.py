"""Bench buyers: bulk-inserted with one cheap argon2 hash, logged in through the real API in parallel."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from argon2 import PasswordHasher
from sqlalchemy import insert, select

from shared.db import Database
from shared.models import User

PASSWORD = "bench-password-1"
# Login still runs a real argon2id verify, with the parameters stored in the hash. The product's defaults cost
# ~0.5 s of CPU per login on this 2-core box: 5,000 buyers would spend minutes logging in before the sale.
# The bench's users (and the test suite's, tests/helpers.py) carry a cheap hash instead (the login path and its
# code are unchanged).
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def make_users(db: Database, count: int, tag: str | None = None) -> list[tuple[int, str]]:
    """Insert ``count`` buyers sharing one password; returns (id, email) pairs."""
    tag = tag or uuid.uuid4().hex[:8]
    pw = CHEAP_HASHER.hash(PASSWORD)
    emails = [f"b{i}-{tag}@bench.example.com" for i in range(count)]
    with db.transaction() as s:
        for start in range(0, count, 1000):
            chunk = emails[start : start + 1000]
            rows = [{"email": e, "password_hash": pw, "name": "bench", "role": "buyer"} for e in chunk]
            s.execute(insert(User), rows)
        found = s.execute(select(User.id, User.email).where(User.email.like(f"%-{tag}@bench.example.com"))).all()
    by_email = {e: i for i, e in found}
    return [(by_email[e], e) for e in emails]


def login_cookies(base: str, emails: list[str], threads: int = 16) -> list[dict[str, str]]:
    """Log each buyer in through ``POST /api/auth/login``; returns the cookies each login set, in order."""

    def login(email: str) -> dict[str, str]:
        with requests.Session() as http:
            r = http.post(f"{base}/api/auth/login", json={"email": email, "password": PASSWORD}, timeout=30)
            r.raise_for_status()
            return dict(r.cookies.items())

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(login, emails))


def login_all(base: str, emails: list[str], threads: int = 16) -> list[str]:
    """Log each buyer in through ``POST /api/auth/login``; returns the session cookie values in order."""
    return [c["flashdeal_session"] for c in login_cookies(base, emails, threads)]
