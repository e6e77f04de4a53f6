"""Fixtures: real Redis and PostgreSQL, a key prefix per run, servers as real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import requests

from shared.db import Database
from shared.migrations import upgrade
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RUN_PREFIX = f"t{uuid.uuid4().hex[:8]}:"


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def base_env() -> dict[str, str]:
    """Environment for processes started by tests: same services, this run's key prefix."""
    settings = Settings.from_env()
    env = dict(os.environ)
    env.update(
        FLASHDEAL_ENV="test",
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        CELERY_BROKER_URL=settings.celery_broker_url,
        FLASHDEAL_KEY_PREFIX=RUN_PREFIX,
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings of this test run: the test database and a private key prefix."""
    s = Settings.from_env().with_(env="test", key_prefix=RUN_PREFIX)
    if not s.database_url.rsplit("/", 1)[-1].startswith("flashdeal_test"):
        pytest.exit(f"refusing to run tests against {s.database_url}: use a flashdeal_test database (make test does)")
    return s


@pytest.fixture(scope="session", autouse=True)
def database(settings: Settings) -> Iterator[None]:
    """A fresh schema, built by the real migrations."""
    with psycopg.connect(_libpq(settings.database_url), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    upgrade(settings.database_url)
    yield


@pytest.fixture(scope="session", autouse=True)
def redis_cleanup(settings: Settings) -> Iterator[None]:
    """Delete this run's keys at the end."""
    yield
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match=f"{RUN_PREFIX}*", count=1000):
        client.delete(key)


@pytest.fixture(autouse=True)
def isolated(request: pytest.FixtureRequest, settings: Settings) -> None:
    """Every test starts on empty tables and no Redis keys of this run, as Warehouse's suite does.

    Why: ``tick``, ``drain_active`` and reconcile act on every deal there is, so a test that runs them would
    otherwise act on the deals of every test before it. Ids keep growing (no RESTART IDENTITY), so a key
    left behind by an earlier test can never meet a new row with its id. Modules whose module-scoped
    fixtures build state for all their tests (a running stack, seeded pages) say ``pytestmark =
    pytest.mark.shared_state`` and are cleaned before and after, not between, their tests.
    """
    if request.node.get_closest_marker("shared_state") is not None:
        return
    wipe(settings)


@pytest.fixture(scope="module", autouse=True)
def isolated_module(request: pytest.FixtureRequest, settings: Settings) -> None:
    """A ``shared_state`` module starts clean too (autouse: before its own module-scoped fixtures)."""
    if request.node.get_closest_marker("shared_state") is not None:
        wipe(settings)


def wipe(settings: Settings) -> None:
    """Empty every table but Alembic's and delete this run's Redis keys."""
    with psycopg.connect(_libpq(settings.database_url), autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
        ]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{RUN_PREFIX}*", count=5000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])


@pytest.fixture(scope="session")
def db(settings: Settings) -> Database:
    """The test database."""
    return Database(settings)


@pytest.fixture(scope="session")
def rds(settings: Settings) -> redis.Redis:
    """A text Redis client."""
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


@pytest.fixture()
def app(settings: Settings):
    """A web app on the real services, rate limits off unless a test turns them on."""
    from web import create_app

    return create_app(settings.with_(ratelimit_enabled=False))


@pytest.fixture()
def client(app):
    """Flask test client."""
    return app.test_client()


def unique_email(tag: str = "u") -> str:
    """A fresh email address."""
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


PASSWORD = "correct-horse-9"


@pytest.fixture()
def signup(client) -> Callable[..., dict]:
    """Sign a user up through the API and return its JSON plus the password."""

    def make(email: str | None = None, name: str = "Test User") -> dict:
        email = email or unique_email()
        r = client.post("/api/auth/signup", json={"email": email, "password": PASSWORD, "name": name})
        assert r.status_code == 201, r.json
        return {**r.json, "password": PASSWORD}

    return make


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Wait until url answers (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise TimeoutError(url)


class Server:
    """A web node running as a real granian process."""

    def __init__(self, port: int, proc: subprocess.Popen) -> None:
        self.port = port
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop the process."""
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM a process this test started, SIGKILL it if it has not gone within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture()
def web_server() -> Iterator[Callable[..., Server]]:
    """Start web nodes as real processes; all are stopped at the end of the test."""
    started: list[Server] = []

    def start(extra_env: dict[str, str] | None = None, workers: int = 1) -> Server:
        port = free_port()
        env = base_env()
        env.setdefault("RATELIMIT_ENABLED", "false")
        env.update(extra_env or {})
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "wsgi",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--blocking-threads",
                "4",
                "web.wsgi:app",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = Server(port, proc)
        started.append(server)
        wait_http(server.url + "/healthz")
        return server

    yield start
    for s in started:
        s.stop()
