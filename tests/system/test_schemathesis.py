"""Schemathesis over /openapi.json against a real web node behind the shop's nginx: anonymous, buyer, admin.

Schemathesis' own engine (its CLI: the coverage phase, then fuzzing) with its checks: no server
error; every answer conforms to the document (status declared, content type, headers, body
schema); a schema-valid request is accepted (the document's state-rule 422s excepted, see
tests/schemathesis.toml); an undeclared method gets a 405 with ``Allow``; a missing required
header is refused. Bounded: three runs of SECONDS_PER_RUN each, over a thousand cases in all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.granian import WebNode
from shared.gate import Gate
from shared.keys import Keys
from shared.redis import text_client
from shared.settings import Settings
from tests.environment import RUN_PREFIX, base_env
from tests.helpers import ORIGIN, PASSWORD, LoadBalancer, email_of, make_deal, make_users

CHECKS = ["all"]  # every check Schemathesis has (response conformance, methods, positive and negative data, auth)
# The shop, its logged-in buyer and admin and the open deal are module fixtures: without this mark the
# per-test wipe (tests/fixtures/services.py) would truncate their users and delete their sessions before the test runs.
pytestmark = pytest.mark.shared_state


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real web node (granian) behind deploy/nginx.conf on free ports; the LB's URL."""
    env = base_env()
    env.update(RATELIMIT_ENABLED="false", TRUSTED_PROXIES="1")
    node = WebNode(env)
    lb = None
    try:
        lb = LoadBalancer(Path(tmp_path_factory.mktemp("nginx")), [node.port])
        yield lb.url
    finally:
        if lb is not None:
            lb.stop()
        node.stop()


def _session(db, url: str, role: str) -> requests.Session:
    (uid,) = make_users(db, 1, role=role)
    s = requests.Session()
    r = s.post(f"{url}/api/auth/login", json={"email": email_of(db, uid), "password": PASSWORD}, timeout=10)
    assert r.status_code == 200, r.text
    s.headers.update(ORIGIN)  # the proof of origin the document declares for bodyless calls
    return s


@pytest.fixture(scope="module")
def identities(shop: str, db) -> dict[str, requests.Session]:
    """A logged-in buyer and a logged-in admin; an open deal, so not every id is unknown."""
    settings = Settings.from_env(base_env())
    make_deal(db, Gate(text_client(settings), Keys(RUN_PREFIX)), stock=1000, limit=5)
    return {"buyer": _session(db, shop, "buyer"), "admin": _session(db, shop, "admin")}


CONFIG = Path(__file__).with_name("schemathesis.toml")
CLI = str(Path(sys.executable).with_name("schemathesis"))
SECONDS_PER_RUN = 30  # the fuzzing phase runs until this budget is spent: three runs, about a minute


def _schemathesis(url: str, workdir: Path, *extra: str) -> tuple[int, str]:
    """One Schemathesis run (its own engine: coverage, then fuzzing) over the served document."""
    cmd = [
        CLI, "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
        "--mode", "all", "--phases", "coverage,fuzzing", "--checks", ",".join(CHECKS),
        "--generation-deterministic", "--generation-with-security-parameters", "false",
        "--max-examples", "5", "--max-time", str(SECONDS_PER_RUN), "--request-timeout", "15",
        # Every event without the provider's HMAC of its body is refused (400), and no schema can generate
        # one: the webhook's signature checks are tests/integration/test_payments_api.py and test_payment_providers.py.
        "--exclude-path", "/api/payments/webhook", *extra,
    ]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1"}
    # Run in a temporary directory: Schemathesis keeps a cache folder in its working directory.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS_PER_RUN + 90, env=env, cwd=workdir)
    found = re.search(r"(\d+) generated", r.stdout)
    return (int(found.group(1)) if found else 0), r.stdout[-6000:] + r.stderr[-2000:] if r.returncode else ""


def test_api_conforms_to_its_openapi_document(
    shop: str, identities: dict[str, requests.Session], tmp_path: Path
) -> None:
    """Anonymous (every operation), then as a buyer and as an admin (their sessions kept: no login or logout)."""
    runs = {"anonymous": ()}
    for who, session in identities.items():
        assert session.get(f"{shop}/api/me", timeout=10).status_code == 200, f"the {who} is not logged in"
        cookie = f"flashdeal_session={session.cookies['flashdeal_session']}"
        runs[who] = (
            "--header",
            f"Cookie: {cookie}",
            "--exclude-path",
            "/api/auth/logout",
            "--exclude-path",
            "/api/auth/login",
        )
    total, failures = 0, []
    for who, extra in runs.items():
        generated, failed = _schemathesis(shop, tmp_path, *extra)
        total += generated
        if failed:
            failures.append(f"--- as {who}:\n{failed}")
    assert failures == [], "\n".join(failures)
    assert total >= 300, total  # a few hundred cases at least
    for who, session in identities.items():
        assert session.get(f"{shop}/api/me", timeout=10).status_code == 200, f"the {who} was logged out"
