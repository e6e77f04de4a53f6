"""Project tasks behind the Makefile: migrate, seed the demo data, run the stack."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from scripts.ensure_services import redact  # noqa: E402
from scripts.local_redis.cluster import ClusterPorts, ClusterTopology  # noqa: E402
from scripts.local_redis.sentinel import SentinelPorts, SentinelTopology  # noqa: E402
from shared.accounts import EmailTaken, create_user  # noqa: E402
from shared.db import Database  # noqa: E402
from shared.deals import NewDeal, load_deal, publish_deal  # noqa: E402
from shared.gate import Gate  # noqa: E402
from shared.migrations import upgrade  # noqa: E402
from shared.models import Deal  # noqa: E402
from shared.queue import QueueRules  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.wiring import build  # noqa: E402

DEMO_ADMIN = ("admin@flashdeal.example.com", "flashdeal-admin-1", "Demo Admin")
DEMO_BUYER = ("buyer@flashdeal.example.com", "flashdeal-buyer-1", "Demo Buyer")
DEMO_TITLE = "Demo deal: noise-cancelling headphones"
DEMO_PAYMENT_WINDOW_S = 300  # the demo buyer pays through the dev checkout within 5 minutes
DEMO_QUEUE_TITLE = "Demo queued deal: limited sneakers"
DEMO_QUEUE_STARTS_IN = timedelta(minutes=5)  # its pre-queue is open from the seed on: join, wait for the draw
DEMO_QUEUE = QueueRules(rate=5, opens_before_seconds=900, pow_bits=12)


def migrate() -> None:
    """Apply the Alembic migrations."""
    upgrade(Settings.from_env().database_url)
    print("[manage] database migrated")


def seed() -> None:
    """Create the demo admin, buyer and an open demo deal with a payment window (idempotent)."""
    stores = build(Settings.from_env())
    db, gate = stores.db, stores.gate
    for email, password, name in (DEMO_ADMIN, DEMO_BUYER):
        try:
            with db.transaction() as s:
                create_user(s, email, password, name, role="admin" if email == DEMO_ADMIN[0] else "buyer")
        except EmailTaken:
            pass
    print(f"[manage] demo deal {seed_demo_deal(db, gate, stores.settings.deal_load_ahead_seconds)} seeded")
    queued = seed_demo_queue_deal(db, gate, stores.settings.deal_load_ahead_seconds)
    print(f"[manage] demo deal {queued} with a waiting room seeded (/deals/{queued}/queue)")


def seed_demo_deal(db: Database, gate: Gate, load_ahead_seconds: int) -> int:
    """The open demo deal (created unless one is running), loaded into the gate; returns its id."""
    with db.read() as s:
        deal = s.scalar(select(Deal).where(Deal.title == DEMO_TITLE, Deal.status != "ended"))
        if deal is not None:
            load_deal(s, gate, deal)  # a no-op while it is live; rebuilt if Redis lost it
            return deal.id
    now = datetime.now(UTC)
    spec = NewDeal(
        DEMO_TITLE, Decimal("49.00"), 100, 2, now, now + timedelta(days=1), payment_window_seconds=DEMO_PAYMENT_WINDOW_S
    )
    return publish_deal(db, gate, spec, load_ahead_seconds, open_now=True).id


def seed_demo_queue_deal(db: Database, gate: Gate, load_ahead_seconds: int) -> int:
    """The demo deal with a waiting room (created unless one is running): its pre-queue is open; returns its id."""
    with db.read() as s:
        deal = s.scalar(select(Deal).where(Deal.title == DEMO_QUEUE_TITLE, Deal.status != "ended"))
        if deal is not None:
            load_deal(s, gate, deal)  # a no-op while it is live; rebuilt if Redis lost it
            return deal.id
    start = datetime.now(UTC) + DEMO_QUEUE_STARTS_IN
    spec = NewDeal(DEMO_QUEUE_TITLE, Decimal("89.00"), 50, 1, start, start + timedelta(days=1), queue=DEMO_QUEUE)
    return publish_deal(db, gate, spec, load_ahead_seconds).id


URLS_FILE = ROOT / "var" / "run" / "urls.txt"  # the banner of the running stack, for `make urls` (mode 0600)
READY_URL = "http://127.0.0.1:8080/healthz"


def banner(env: os._Environ[str] | dict[str, str], heading: str) -> str:
    """The URLs and credentials of the stack, as `make up` prints them."""
    user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
    sentinel = (
        [
            f"  Redis Sentinel        {env['REDIS_SENTINELS']} (master {env.get('REDIS_SENTINEL_MASTER')})",
            f"  Celery broker         {redact(env.get('CELERY_BROKER_URL', ''))}",
        ]
        if _sentinel_topology(env)
        else [
            f"  Redis Cluster         {env['REDIS_CLUSTER_NODES']}",
            f"  Celery broker         {redact(env.get('CELERY_BROKER_URL', ''))}",
        ]
        if _cluster_topology(env)
        else []
    )
    return "\n".join(
        [
            "",
            heading,
            "  shop (load balancer)  http://127.0.0.1:8080",
            "  web nodes             http://127.0.0.1:8001  :8002  :8003",
            f"  Flower                http://127.0.0.1:5555  (user {user!r}, password {password!r})",
            f"  demo admin            {DEMO_ADMIN[0]} / {DEMO_ADMIN[1]}",
            f"  demo buyer            {DEMO_BUYER[0]} / {DEMO_BUYER[1]}",
            "  metrics               http://127.0.0.1:8001/metrics (web, also :8002 :8003)  :9101 :9102 (workers)",
            *sentinel,
            "  Ctrl-C stops everything; `make urls` prints this again.",
            "",
        ]
    )


def _announce_when_ready(text: str, timeout_s: float = 180.0) -> None:
    """Print the banner again once the shop answers: the start-up logs have scrolled it away by then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(READY_URL, timeout=1) as r:  # noqa: S310 (our own loopback LB)
                if r.status == 200:
                    print(text, flush=True)
                    return
        except OSError:
            pass
        time.sleep(1)


def run() -> None:
    """Run every process of the Procfile under honcho; Ctrl-C stops them all."""
    env = os.environ
    if not env.get("FLOWER_BASIC_AUTH"):
        env["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_urlsafe(12)}"
    print(banner(env, "flashdeal is starting:"), flush=True)
    URLS_FILE.parent.mkdir(parents=True, exist_ok=True)
    # The file holds Flower's password: only its owner may read it (created so, never widened).
    fd = os.open(URLS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(banner(env, "flashdeal is running:"))
    threading.Thread(target=_announce_when_ready, args=(banner(env, "flashdeal is ready:"),), daemon=True).start()
    os.chdir(ROOT)
    venv_bin = str(ROOT / ".venv" / "bin")
    # /usr/sbin: where Debian puts nginx, often missing from a non-root PATH.
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", ""), "/usr/sbin"])
    # The web nodes sit behind exactly one trusted hop, our nginx: take the client IP from it.
    env.setdefault("TRUSTED_PROXIES", "1")
    honcho = [str(ROOT / ".venv" / "bin" / "honcho"), "start", "-f", "Procfile"]
    topology = _local_sentinel_topology(env) or _local_cluster_topology(env)
    # honcho runs as a child: this process prints the banner again when the shop is up, and stops the
    # Sentinel topology or the cluster that ensure_services started under var/ when the stack stops.
    child = subprocess.Popen(honcho, env=env)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: child.send_signal(signal.SIGINT))
    try:
        rc = child.wait()
    finally:
        URLS_FILE.unlink(missing_ok=True)
        if topology is not None:
            print("[manage] stopping the Redis nodes started under var/", flush=True)
            topology.stop(graceful=True)
    sys.exit(rc)


def urls() -> None:
    """Print the running stack's URLs and credentials again (`make urls`)."""
    if not URLS_FILE.exists():
        sys.exit("flashdeal is not running here (start it with: make up)")
    print(URLS_FILE.read_text())


def _sentinel_topology(env: os._Environ[str] | dict[str, str]) -> bool:
    return env.get("FLASHDEAL_REDIS_TOPOLOGY", "").strip().lower() == "sentinel" and bool(env.get("REDIS_SENTINELS"))


def _local_sentinel_topology(env: os._Environ[str] | dict[str, str]) -> SentinelTopology | None:
    """The topology ensure_services started under var/ (the default ports), if that is the one in use."""
    ports = SentinelPorts.default()
    if not _sentinel_topology(env) or env.get("REDIS_SENTINELS") != ports.sentinels_setting:
        return None
    return SentinelTopology(ROOT / "var" / "redis-sentinel", ports)


def _cluster_topology(env: os._Environ[str] | dict[str, str]) -> bool:
    return env.get("FLASHDEAL_REDIS_TOPOLOGY", "").strip().lower() == "cluster" and bool(env.get("REDIS_CLUSTER_NODES"))


def _local_cluster_topology(env: os._Environ[str] | dict[str, str]) -> ClusterTopology | None:
    """The cluster ensure_services started under var/ (the default ports), if that is the one in use."""
    ports = ClusterPorts.default()
    if not _cluster_topology(env) or env.get("REDIS_CLUSTER_NODES") != ports.nodes_setting:
        return None
    return ClusterTopology(ROOT / "var" / "redis-cluster", ports)


COMMANDS = {"migrate": migrate, "seed": seed, "run": run, "urls": urls}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: manage.py {{{'|'.join(COMMANDS)}}}")
    COMMANDS[sys.argv[1]]()
