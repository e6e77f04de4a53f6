"""Secrets stay secret: no password in messages or on a command line; the Makefile's eval lines are quoted."""

from __future__ import annotations

import subprocess
import sys

from shared.settings import Settings
from tests.environment import ROOT, base_env

SCRIPT = str(ROOT / "scripts" / "ensure_services.py")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_unreachable_service_messages_do_not_show_the_password() -> None:
    env = base_env()
    env["REDIS_URL"] = "redis://app:s3cret-Redis-pw@127.0.0.1:1/0"
    r = _run(env)
    assert r.returncode != 0 and "127.0.0.1:1" in r.stderr
    assert "s3cret-Redis-pw" not in r.stderr + r.stdout and "app:***@" in r.stderr
    env = base_env()
    env["DATABASE_URL"] = "postgresql+psycopg://postgres:s3cret-Pg-pw@127.0.0.1:1/flashdeal"
    r = _run(env)
    assert r.returncode != 0 and "s3cret-Pg-pw" not in r.stderr + r.stdout and "postgres:***@" in r.stderr


def test_export_lines_survive_eval_with_shell_metacharacters() -> None:
    # PostgreSQL here trusts local connections, so any password reaches it; this one is hostile to a
    # shell: evaluated unquoted, the substitutions would run and the value would not arrive as it is.
    password = "p'a\"s$(echo${IFS}ran)`echo${IFS}ran`;x"
    url = Settings.from_env().database_url
    scheme, rest = url.split("://", 1)
    hostile = f"{scheme}://postgres:{password}@{rest.split('@', 1)[1]}"
    env = base_env()
    env["DATABASE_URL"] = hostile
    dbname = url.rsplit("/", 1)[1]
    script = f'eval "$({sys.executable} {SCRIPT} {dbname})" && printf %s "$DATABASE_URL"'
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == hostile  # the value arrives exactly as it was: nothing was run or split
    assert password not in r.stderr
