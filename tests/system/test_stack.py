"""The whole stack as `make up` runs it: honcho + Procfile (nginx, web x3, 2 worker nodes, beat, Flower)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from shared.db import Database
from shared.deals import NewDeal, create_deal, open_now
from shared.gate import Gate
from shared.keys import Keys
from shared.redis import text_client
from shared.settings import Settings
from tests.environment import ROOT, RUN_PREFIX, base_env
from tests.helpers import PASSWORD, unique_email

pytestmark = [pytest.mark.slow, pytest.mark.shared_state]

LB = "http://127.0.0.1:8080"
WEB = {1: "http://127.0.0.1:8001", 2: "http://127.0.0.1:8002", 3: "http://127.0.0.1:8003"}
FLOWER = "http://127.0.0.1:5555"
WORKER_METRICS = ("http://127.0.0.1:9101/metrics", "http://127.0.0.1:9102/metrics")
PORTS = (8080, 8001, 8002, 8003, 5555, 9101, 9102)
CELERY = str(Path(sys.executable).parent / "celery")


@dataclass
class Stack:
    """The running stack: its environment, Flower credentials and log."""

    proc: subprocess.Popen
    env: dict[str, str]
    flower_auth: tuple[str, str]
    log: Path
    pids: list[int] = field(default_factory=list)

    def log_tail(self, n: int = 60) -> str:
        """The last lines honcho printed (for failure messages)."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ok(url: str, **kw: object) -> bool:
    try:
        return requests.get(url, timeout=2, **kw).status_code == 200  # type: ignore[arg-type]
    except requests.RequestException:
        return False


def _broker_url(redis_url: str) -> str:
    """Same Redis, its own database: Celery's broadcast (ping, Flower) then sees only this stack's nodes."""
    return urlparse(redis_url)._replace(path="/9").geturl()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start everything through `scripts/manage.py run` (what `make up` execs) and stop it all at the end."""
    busy = [p for p in PORTS if _port_busy(p)]
    if busy:
        pytest.fail(f"ports {busy} are in use: stop the running stack (make up) before the stack tests")
    tmp = tmp_path_factory.mktemp("stack")
    user, password = "ops", secrets.token_urlsafe(12)
    env = base_env()
    env.update(
        FLOWER_BASIC_AUTH=f"{user}:{password}",
        CELERY_QUEUE=f"{RUN_PREFIX}stack",
        CELERY_BROKER_URL=_broker_url(Settings.from_env().redis_url),
        # Limits on, far above what these tests send: the limiter's keys show which client address
        # the nodes see (test_lb_sets_x_forwarded_for_and_nodes_trust_one_hop).
        RATELIMIT_ENABLED="true",
        RATELIMIT_ORDER="10000/second",
        RATELIMIT_ORDER_IP="10000/second",
        RATELIMIT_LOGIN="1000/minute",
        RATELIMIT_LOGIN_IP="1000/minute",
        RATELIMIT_SIGNUP_IP="1000/minute",
        FLASHDEAL_METRICS_ROOT=str(tmp / "metrics"),
        PYTHONUNBUFFERED="1",
        DRAIN_CLAIM_IDLE_MS="2000",
    )
    subprocess.run([sys.executable, "scripts/manage.py", "seed"], cwd=ROOT, env=env, check=True, capture_output=True)
    log = tmp / "stack.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "scripts/manage.py", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    st = Stack(proc, env, (user, password), log)
    try:
        deadline = time.monotonic() + 150
        probes = [f"{LB}/healthz", *(f"{u}/healthz" for u in WEB.values()), *WORKER_METRICS]
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the stack exited with {proc.returncode}:\n{st.log_tail()}")
            if all(_ok(u) for u in probes) and _ok(f"{FLOWER}/api/workers", auth=st.flower_auth):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the stack did not come up in 150 s:\n{st.log_tail()}")
            time.sleep(0.5)
        st.pids = [int(p) for p in re.findall(r"started \(pid=(\d+)\)", log.read_text())]
        yield st
    finally:
        _stop(st)


def _stop(st: Stack) -> None:
    """Ctrl-C equivalent for honcho, then SIGKILL whatever is left of every process group it started."""
    st.pids = st.pids or [int(p) for p in re.findall(r"started \(pid=(\d+)\)", st.log.read_text())]
    if st.proc.poll() is None:
        st.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            st.proc.wait(25)
    for pgid in [*st.pids, st.proc.pid]:  # honcho starts each process in its own session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        st.proc.wait(5)


def _signup_login(base: str) -> requests.Session:
    """A buyer signed up and logged in through `base`; the session cookie lives in the returned Session."""
    s = requests.Session()
    email = unique_email("stack")
    r = s.post(
        f"{base}/api/auth/signup", json={"email": email, "password": PASSWORD, "name": "Stack Buyer"}, timeout=10
    )
    assert r.status_code == 201, r.text
    r = s.post(f"{base}/api/auth/login", json={"email": email, "password": PASSWORD}, timeout=10)
    assert r.status_code == 200, r.text
    return s


def _open_deal(stock: int, limit: int, payment_window: int = 0) -> int:
    """A deal open now, made with the shared functions (the same the CLI and admin API use)."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    settings = Settings.from_env(base_env())
    db = Database(settings, pool_size=1)
    client = text_client(settings)
    gate = Gate(client, Keys(settings.key_prefix))
    now = datetime.now(UTC)
    with db.transaction() as s:
        deal_id = create_deal(s, NewDeal(f"Stack {uuid.uuid4().hex[:6]}", Decimal("9.90"), stock, limit, now,
                                         now + timedelta(hours=1), payment_window_seconds=payment_window)
                              ).id  # fmt: skip
    open_now(db, gate, deal_id)
    db.engine.dispose()
    return deal_id


def _wait(predicate, timeout: float, interval: float = 0.25) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_session_from_one_node_works_through_the_lb_and_on_every_node(stack: Stack) -> None:
    buyer = _signup_login(WEB[1])  # the session is created by web1 alone
    me = buyer.get(f"{WEB[1]}/api/me", timeout=5).json()
    for _ in range(6):  # round robin: through the LB every node answers some of these
        r = buyer.get(f"{LB}/api/me", timeout=5)
        assert r.status_code == 200 and r.json()["id"] == me["id"]
    for base in (WEB[2], WEB[3]):
        r = buyer.get(f"{base}/api/me", timeout=5)
        assert r.status_code == 200 and r.json()["id"] == me["id"], base
    assert requests.get(f"{LB}/api/me", timeout=5).status_code == 401  # and no cookie, no session

    # An order through the LB is admitted by the gate and persisted by a worker node.
    deal_id = _open_deal(stock=100, limit=5)
    r = buyer.post(f"{LB}/api/deals/{deal_id}/orders", json={"quantity": 2}, timeout=5)
    assert r.status_code == 202, r.text
    order_id = r.json()["order_id"]

    def confirmed() -> bool:
        got = buyer.get(f"{LB}/api/orders/{order_id}", timeout=5)
        return got.status_code == 200 and got.json()["status"] == "confirmed"

    assert _wait(confirmed, 30), f"order never confirmed:\n{stack.log_tail()}"


def test_demo_deal_paid_through_the_dev_checkout_and_an_unpaid_order_expires(stack: Stack) -> None:
    """The issue's acceptance path on the whole stack: buy the demo deal, pay at the dev checkout, see it paid."""
    from sqlalchemy import select

    from scripts.manage import DEMO_TITLE
    from shared.models import Deal, Order

    settings = Settings.from_env(base_env())
    db = Database(settings, pool_size=1)
    with db.read() as s:
        demo = s.scalar(select(Deal.id).where(Deal.title == DEMO_TITLE, Deal.status != "ended"))
    buyer = _signup_login(LB)
    r = buyer.post(f"{LB}/api/deals/{demo}/orders", json={"quantity": 1}, timeout=5)
    assert r.status_code == 202, r.text
    order_id = r.json()["order_id"]
    pay = buyer.post(f"{LB}/api/orders/{order_id}/pay", json={}, timeout=5)
    assert pay.status_code == 200 and pay.json()["provider"] == "dev", pay.text
    # The checkout is the provider's: no session; the node that serves it sends the signed event to its webhook.
    paid = requests.post(LB + pay.json()["checkout_url"], json={"card": "4242424242424242"}, timeout=15)
    assert paid.json() == {"result": "paid", "order_status": "paid"}, paid.text
    assert buyer.get(f"{LB}/api/orders/{order_id}", timeout=5).json()["status"] == "paid"

    def persisted_paid() -> bool:
        with db.read() as s:
            return s.scalar(select(Order.status).where(Order.id == uuid.UUID(order_id))) == "paid"

    assert _wait(persisted_paid, 30), stack.log_tail()

    # An unpaid order of a two-second window: beat's sweep gives the units back, and someone else buys them.
    other = _signup_login(LB)
    deal_id = _open_deal(stock=2, limit=2, payment_window=2)
    assert buyer.post(f"{LB}/api/deals/{deal_id}/orders", json={"quantity": 2}, timeout=5).status_code == 202
    assert other.post(f"{LB}/api/deals/{deal_id}/orders", json={"quantity": 1}, timeout=5).status_code == 409

    def stock_back() -> bool:
        return requests.get(f"{LB}/api/deals/{deal_id}", timeout=5).json()["remaining_stock"] == 2

    assert _wait(stock_back, 15), stack.log_tail()
    assert other.post(f"{LB}/api/deals/{deal_id}/orders", json={"quantity": 2}, timeout=5).status_code == 202
    db.engine.dispose()


def test_lb_sets_x_forwarded_for_and_nodes_trust_one_hop(stack: Stack) -> None:
    """A forged X-Forwarded-For through the LB: the nodes still key the rate limit on the real client address."""
    from shared.redis import text_client

    rds = text_client(Settings.from_env(stack.env))
    forged = [f"198.51.100.{i}" for i in range(1, 7)]
    for ip in forged:  # round robin: every node answers some of these
        body = {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "wrong-password-1"}
        r = requests.post(f"{LB}/api/auth/login", json=body, headers={"X-Forwarded-For": ip}, timeout=10)
        assert r.status_code == 401, r.text
    keys = list(rds.scan_iter(match=f"LIMITS:LIMITER/{RUN_PREFIX}*/login-ip/*", count=1000))
    assert any("/127.0.0.1/login-ip/" in k for k in keys), keys
    assert not any(ip in k for k in keys for ip in forged), keys
    r = requests.get(f"{LB}/lb-healthz", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_celery_inspect_ping_answers_from_both_nodes(stack: Stack) -> None:
    r = subprocess.run(
        [CELERY, "-A", "worker", "inspect", "ping", "--timeout", "5", "--json"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    replies = json.loads(r.stdout.strip().splitlines()[-1])
    nodes = {name.split("@")[0] for name in replies}
    assert {"worker1", "worker2"} <= nodes, replies
    assert all(reply == {"ok": "pong"} for reply in replies.values())


def test_the_banner_comes_again_when_ready_and_from_make_urls(stack: Stack) -> None:
    """The URLs and credentials are printed when the shop answers (the start-up logs scroll the first away)."""
    user, password = stack.flower_auth
    assert _wait(lambda: "flashdeal is ready:" in stack.log.read_text(errors="replace"), 30), stack.log_tail()
    ready = stack.log.read_text(errors="replace").split("flashdeal is ready:", 1)[1]
    assert "http://127.0.0.1:8080" in ready and f"(user {user!r}, password {password!r})" in ready
    urls_file = ROOT / "var" / "run" / "urls.txt"
    assert urls_file.stat().st_mode & 0o077 == 0  # it holds Flower's password: its owner only
    out = subprocess.run(["make", "-s", "urls"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=stack.env)
    assert out.returncode == 0 and "flashdeal is running:" in out.stdout and password in out.stdout, out.stderr


def test_flower_requires_auth_and_lists_both_nodes_and_drain_tasks(stack: Stack) -> None:
    assert requests.get(f"{FLOWER}/", timeout=5).status_code == 401
    assert requests.get(f"{FLOWER}/api/workers", timeout=5).status_code == 401
    assert requests.get(f"{FLOWER}/api/workers", auth=("ops", "wrong"), timeout=5).status_code == 401

    def both_nodes() -> bool:
        r = requests.get(f"{FLOWER}/api/workers", params={"refresh": "1"}, auth=stack.flower_auth, timeout=10)
        return r.status_code == 200 and {n.split("@")[0] for n in r.json()} >= {"worker1", "worker2"}

    assert _wait(both_nodes, 30)

    def drain_tasks_seen() -> bool:
        r = requests.get(f"{FLOWER}/api/tasks", params={"limit": "200"}, auth=stack.flower_auth, timeout=10)
        names = {t.get("name") for t in r.json().values()} if r.status_code == 200 else set()
        return bool(names & {"flashdeal.drain_active", "flashdeal.drain_deal"})

    assert _wait(drain_tasks_seen, 30), "Flower shows no drain task"
    assert requests.get(f"{FLOWER}/", auth=stack.flower_auth, timeout=5).status_code == 200
    # Flower took the password from FLOWER_BASIC_AUTH in its environment: no command line shows it.
    password = stack.flower_auth[1].encode()
    shown = [d.name for d in Path("/proc").iterdir() if d.name.isdigit() and password in _cmdline(d)]
    assert shown == [], f"processes {shown} have the Flower password on their command line"
    metrics = requests.get(f"{FLOWER}/metrics", timeout=5).text
    assert "flower_worker_online" in metrics


def test_metrics_on_every_web_node_and_worker_node(stack: Stack) -> None:
    buyer = _signup_login(LB)
    deal_id = _open_deal(stock=50, limit=5)
    for _ in range(3):
        assert buyer.post(f"{LB}/api/deals/{deal_id}/orders", json={"quantity": 1}, timeout=5).status_code == 202
    web_text = [requests.get(f"{u}/metrics", timeout=5).text for u in WEB.values()]
    assert requests.get(f"{LB}/metrics", timeout=5).status_code == 404  # scraped on each node, never public
    assert all("flashdeal_http_requests_total" in t for t in web_text)
    accepted = sum(
        float(m.group(1))
        for t in web_text
        for m in re.finditer(r'^flashdeal_admissions_total\{outcome="accepted"\} (\S+)$', t, re.M)
    )
    assert accepted >= 3

    def persisted() -> float:
        total = 0.0
        for url in WORKER_METRICS:
            for m in re.finditer(
                r'^flashdeal_orders_persisted_total\{kind="order"\} (\S+)$', requests.get(url).text, re.M
            ):
                total += float(m.group(1))
        return total

    assert _wait(lambda: persisted() >= 3, 30), "worker nodes report no persisted orders"
    text = requests.get(WORKER_METRICS[0], timeout=5).text
    assert re.search(rf'^flashdeal_stock_remaining\{{deal="{deal_id}"\}} 47\.0$', text, re.M), text[-2000:]
    assert re.search(rf'^flashdeal_outbox_pending\{{deal="{deal_id}"\}} ', text, re.M)
    assert "flashdeal_dead_letters " in text and "flashdeal_drain_duration_seconds_bucket" in text


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def _instance_pids(port: int) -> list[int]:
    """Processes of the granian instance on `port` (main and worker), not its supervising shells."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            any(a.endswith(b"granian") for a in argv)
            and not argv[0].endswith(b"sh")
            and b"--port" in argv
            and argv[argv.index(b"--port") + 1] == str(port).encode()
        ):
            pids.append(int(d.name))
    return pids


def test_killed_web_instance_is_routed_around(stack: Stack) -> None:
    deal_id = _open_deal(stock=100_000, limit=1000)
    buyers = [_signup_login(LB) for _ in range(4)]
    failures: list[str] = []
    served = {"before": 0, "after": 0}
    killed = threading.Event()
    stop_at = time.monotonic() + 9

    def shop(s: requests.Session) -> None:
        while time.monotonic() < stop_at:
            phase = "after" if killed.is_set() else "before"
            for method, path, body, want in (
                ("GET", "/api/me", None, (200,)),
                ("GET", f"/api/deals/{deal_id}", None, (200,)),
                # 200 too: nginx resends a keyed order whose node died mid-request, and if that node had
                # already admitted it, the next node answers the replay (the same order, not a second one).
                ("POST", f"/api/deals/{deal_id}/orders", {"quantity": 1}, (202, 200)),
            ):
                headers = {"Idempotency-Key": uuid.uuid4().hex} if method == "POST" else {}
                try:
                    r = s.request(method, LB + path, json=body, headers=headers, timeout=15)
                except requests.RequestException as exc:
                    failures.append(f"{method} {path}: {type(exc).__name__}")
                    continue
                if r.status_code not in want:
                    failures.append(f"{method} {path}: {r.status_code} {r.text[:120]}")
                else:
                    served[phase] += 1

    threads = [threading.Thread(target=shop, args=(b,)) for b in buyers]
    for t in threads:
        t.start()
    time.sleep(2)
    victims = _instance_pids(8002)
    assert victims, "no granian process found on :8002"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed.set()
    for t in threads:
        t.join(30)
    assert failures == [], failures[:10]
    assert served["before"] > 0 and served["after"] > 20, served
    # The other nodes never stopped, and the killed one is started again by scripts/proc.
    assert stack.proc.poll() is None
    assert _wait(lambda: _ok(f"{WEB[2]}/healthz"), 60), stack.log_tail()
    assert all(_ok(f"{LB}/api/me", cookies=buyers[0].cookies) for _ in range(6))
