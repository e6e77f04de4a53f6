"""Schemathesis over /openapi.json against a real web node behind the shop's nginx, as a buyer and as an admin.

Checks: no server error; every answer conforms to the document (status declared, content type,
headers, body schema); a schema-valid request is accepted; an undeclared method gets a 405 with
``Allow``. Bounded: about a dozen cases per operation and identity, a few hundred in all.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from shared.gate import Gate
from shared.keys import Keys
from shared.redis_client import text_client
from shared.settings import Settings
from tests.conftest import ROOT, RUN_PREFIX, Server, base_env, free_port, wait_http
from tests.helpers import ORIGIN, PASSWORD, email_of, make_deal, make_users
from tests.lb import LoadBalancer

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    unsupported_method,
    allow_header_conformance,
]
EXAMPLES_PER_OPERATION = 12  # x 14 operations x 2 identities: a few hundred cases


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real web node (granian) behind deploy/nginx.conf on free ports; the LB's URL."""
    port = free_port()
    env = base_env()
    env.update(RATELIMIT_ENABLED="false", TRUSTED_PROXIES="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--blocking-threads", "4", "web.wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    node = Server(port, proc)
    lb = None
    try:
        wait_http(node.url + "/healthz")
        lb = LoadBalancer(Path(tmp_path_factory.mktemp("nginx")), [port])
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


SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def _run_every_operation(url: str, session: requests.Session) -> tuple[int, list[str]]:
    """Each operation of the served document with its generated cases; (cases sent, failures)."""
    # Schemathesis' own pytest plugin (schema.parametrize) does not run under this pytest, so the
    # cases come from each operation's Hypothesis strategy, with the same checks.
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    sent = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @SETTINGS
        @given(case=operation.as_strategy())
        def run(case) -> None:
            nonlocal sent
            sent += 1
            case.call_and_validate(base_url=url, session=session, checks=CHECKS, timeout=15)

        try:
            run()
        except Exception as exc:  # a check failed: collect them all, then report
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    return sent, failures


@pytest.mark.parametrize("who", ["buyer", "admin"])
def test_api_conforms_to_its_openapi_document(shop: str, identities: dict[str, requests.Session], who: str) -> None:
    sent, failures = _run_every_operation(shop, identities[who])
    assert failures == [], "\n\n".join(failures)
    assert sent >= 100  # the bound is a few hundred cases in all, not a handful
