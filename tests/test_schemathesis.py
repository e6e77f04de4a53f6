"""Schemathesis over /openapi.json against a real web node, as a logged-in buyer and as an admin.

Checks: no server error, and every answer conforms to the document (status declared, content
type, headers, body schema). Bounded: a few hundred cases in all, well under two minutes.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import ORIGIN, PASSWORD, email_of, make_deal, make_users

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 12  # x about 14 operations x 2 identities: a few hundred cases


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One real web node (granian) for the whole module, with a deal that exists and is open."""
    import subprocess
    import sys

    from tests.conftest import ROOT, Server, base_env, free_port, wait_http

    port = free_port()
    env = base_env()
    env["RATELIMIT_ENABLED"] = "false"
    proc = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--blocking-threads", "4", "web.wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = Server(port, proc)
    try:
        wait_http(server.url + "/healthz")
        yield server
    finally:
        server.stop()


def _session(db, node, role: str) -> requests.Session:
    (uid,) = make_users(db, 1, role=role)
    s = requests.Session()
    r = s.post(f"{node.url}/api/auth/login", json={"email": email_of(db, uid), "password": PASSWORD}, timeout=10)
    assert r.status_code == 200, r.text
    s.headers.update(ORIGIN)  # what our pages send; the document declares no other proof for bodyless calls
    return s


@pytest.fixture(scope="module")
def identities(node, db):
    """A logged-in buyer and a logged-in admin; one open deal with id 1 or more."""
    from shared.gate import Gate
    from shared.keys import Keys
    from shared.redis_client import text_client
    from shared.settings import Settings
    from tests.conftest import RUN_PREFIX, base_env

    st = Settings.from_env(base_env())
    make_deal(db, Gate(text_client(st), Keys(RUN_PREFIX)), stock=1000, limit=5)
    return {"buyer": _session(db, node, "buyer"), "admin": _session(db, node, "admin")}


SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def _run_every_operation(node, session: requests.Session) -> tuple[int, list[str]]:
    """Each operation of the served document with its generated cases; (cases sent, failures)."""
    # Schemathesis' own pytest plugin (schema.parametrize) does not run under this pytest, so the
    # cases come from each operation's Hypothesis strategy, with the same checks.
    schema = schemathesis.openapi.from_url(f"{node.url}/openapi.json")
    sent = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @SETTINGS
        @given(case=operation.as_strategy())
        def run(case) -> None:
            nonlocal sent
            sent += 1
            case.call_and_validate(base_url=node.url, session=session, checks=CHECKS, timeout=15)

        try:
            run()
        except Exception as exc:  # a check failed: collect them all, then report
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    return sent, failures


@pytest.mark.parametrize("who", ["buyer", "admin"])
def test_api_conforms_to_its_openapi_document(node, identities, who) -> None:
    sent, failures = _run_every_operation(node, identities[who])
    assert failures == [], "\n\n".join(failures)
    assert sent >= 100  # the bound is a few hundred cases in all, not a handful
