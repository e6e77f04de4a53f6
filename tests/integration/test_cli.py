"""`celery -A worker flashdeal ...` end to end: the real celery command, real Redis and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select

from shared.accounts import create_user
from shared.bounds import NAME_MAX
from shared.db import Database
from shared.keys import Keys
from shared.models import DeadLetter, Order, User
from shared.order_record import order_record
from shared.settings import Settings
from tests.environment import ROOT, base_env
from tests.helpers import unique_email
from worker.cli import flashdeal

CELERY = str(Path(sys.executable).parent / "celery")
STATS_FIELDS = {"total_stock", "remaining_stock", "accepted", "confirmed", "canceled", "pending"}


class Result:
    """What one command did: exit code, stdout, stderr."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(*args: str, ok: bool = True, real: bool = False, stdin: str | None = None) -> Result:
    """Run one flashdeal command; never a traceback, whatever the outcome.

    ``real=True`` runs the actual ``celery -A worker flashdeal`` command (entry point, Celery's
    CLI, a fresh process: ~2 s each on this machine); otherwise the same click group runs in
    this process with the same environment, so the suite stays fast.
    """
    if real:
        p = subprocess.run(
            [CELERY, "-A", "worker", "flashdeal", *args], cwd=ROOT, env=base_env(), capture_output=True, text=True,
            timeout=60, input=stdin or "",
        )  # fmt: skip
        r = Result(p.returncode, p.stdout, p.stderr)
    else:
        out = CliRunner().invoke(flashdeal, list(args), input=stdin or "", env=base_env(), catch_exceptions=True)
        if out.exception is not None and not isinstance(out.exception, SystemExit):
            raise out.exception
        r = Result(out.exit_code, out.stdout, out.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    if ok:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def create_open_deal(stock: int = 10, limit: int = 3, real: bool = False) -> dict:
    """A deal created and opened through the CLI."""
    r = cli("deal", "create", "--title", f"CLI deal {uuid.uuid4().hex[:6]}", "--price", "19.90", "--stock", str(stock),
            "--limit", str(limit), "--open-now", "--json", real=real)  # fmt: skip
    return json.loads(r.stdout)


def test_help_lists_every_command() -> None:
    out = cli("--help", real=True).stdout
    for group in ("admin", "deal", "reconcile", "dlq"):
        assert group in out
    assert {"create", "open", "close", "stats"} <= set(cli("deal", "--help").stdout.split())
    assert {"list", "retry", "drop"} <= set(cli("dlq", "--help").stdout.split())


def test_the_cli_and_the_api_state_the_one_password_rule(client) -> None:
    """``admin create --help`` and signup's OpenAPI description both say shared/bounds.py's PASSWORD_RULE."""
    from shared.bounds import PASSWORD_MAX, PASSWORD_MIN, PASSWORD_RULE

    assert " ".join(cli("admin", "create", "--help").stdout.split()).count(PASSWORD_RULE) == 1
    field = client.get("/openapi.json").json["components"]["schemas"]["SignupIn"]["properties"]["password"]
    assert field["description"].startswith(PASSWORD_RULE)
    assert (field["minLength"], field["maxLength"]) == (PASSWORD_MIN, PASSWORD_MAX)


PW = "s3cret-admin-pw"


def test_admin_create(db: Database) -> None:
    email = unique_email("admin")
    r = cli("admin", "create", "--email", email, "--name", "Ops", stdin=f"{PW}\n")
    assert email in r.stdout and PW not in r.stdout + r.stderr
    with db.read() as s:
        user = s.scalar(select(User).where(User.email == email))
        assert user is not None and user.role == "admin" and user.name == "Ops"
    dup = cli("admin", "create", "--email", email, stdin=f"{PW}\n", ok=False)
    assert dup.returncode == 1 and "already registered" in dup.stderr
    bad = cli("admin", "create", "--email", "not-an-email", stdin=f"{PW}\n", ok=False)
    assert bad.returncode == 2 and "--email" in bad.stderr
    weak = cli("admin", "create", "--email", unique_email(), stdin="short\n", ok=False)
    assert weak.returncode == 1 and "password" in weak.stderr
    # The display name follows signup's rule (shared/bounds.py name_problem): within users.name, no control characters.
    for name in ("x" * (NAME_MAX + 1), "   ", "bad\x07name"):
        r = cli("admin", "create", "--email", unique_email(), "--name", name, stdin=f"{PW}\n", ok=False)
        assert r.returncode == 2 and "--name" in r.stderr, (name, r.stderr)


def test_admin_password_is_never_an_argument(db: Database) -> None:
    """No --password option; stdin gives it (a second, identical line confirms it; a different one is refused)."""
    gone = cli("admin", "create", "--email", unique_email(), "--password", PW, ok=False)
    assert gone.returncode == 2 and "No such option" in gone.stderr
    email = unique_email("admin")
    assert email in cli("admin", "create", "--email", email, stdin=f"{PW}\n{PW}\n", real=True).stdout
    differ = cli("admin", "create", "--email", unique_email(), stdin=f"{PW}\nother-password\n", ok=False)
    assert differ.returncode == 1 and "differ" in differ.stderr
    empty = cli("admin", "create", "--email", unique_email(), stdin="", ok=False)
    assert empty.returncode == 1 and "standard input" in empty.stderr
    with db.read() as s:
        assert s.scalar(select(User.role).where(User.email == email)) == "admin"


def test_admin_password_from_a_hidden_prompt_on_a_terminal(db: Database) -> None:
    """On a terminal: asked twice with echo off (the password never appears on the screen)."""
    import os
    import pty
    import select as select_mod

    email = unique_email("admin")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real command, its stdin/stdout/stderr the terminal
        os.chdir(ROOT)
        os.execve(CELERY, [CELERY, "-A", "worker", "flashdeal", "admin", "create", "--email", email], base_env())
    screen = b""
    deadline = time.monotonic() + 60
    answered = 0
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select_mod.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break  # the child exited and closed the terminal
            if not chunk:
                break
            screen += chunk
            prompts = screen.count(b"assword: ")
            while answered < prompts:
                os.write(fd, f"{PW}\n".encode())
                answered += 1
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, screen
    assert answered == 2 and PW.encode() not in screen, screen
    with db.read() as s:
        assert s.scalar(select(User.role).where(User.email == email)) == "admin"


def test_deal_create_open_now_and_stats(settings: Settings) -> None:
    deal = create_open_deal(stock=10, limit=3, real=True)
    assert deal["status"] == "open" and deal["remaining_stock"] == 10 and deal["per_user_limit"] == 3
    assert deal["price"] == "19.90"
    stats = json.loads(cli("deal", "stats", str(deal["id"]), "--json").stdout)
    assert STATS_FIELDS | {"id", "title"} <= set(stats)
    assert stats["id"] == deal["id"] and stats["title"] == deal["title"]
    assert stats["total_stock"] == 10 and stats["remaining_stock"] == 10 and stats["accepted"] == 0
    human = cli("deal", "stats", str(deal["id"])).stdout
    assert "remaining_stock" in human and "10" in human
    # The gate holds the deal: the stock key is live in Redis.
    rds = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert rds.get(Keys(settings.key_prefix).deal(deal["id"]).stock) == "10"


def test_deal_create_scheduled_then_open_and_close(app, settings: Settings) -> None:
    starts = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    ends = starts + timedelta(hours=1)
    end_z = ends.isoformat().replace("+00:00", "Z")
    r = cli("deal", "create", "--title", "Later", "--price", "5", "--stock", "3", "--limit", "1",
            "--starts-at", starts.isoformat(), "--ends-at", end_z, "--json")  # fmt: skip
    deal = json.loads(r.stdout)
    assert deal["status"] == "scheduled"
    assert datetime.fromisoformat(deal["starts_at"]) == starts and datetime.fromisoformat(deal["ends_at"]) == ends

    keys, rds = Keys(settings.key_prefix), redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client = app.test_client()
    assert client.get(f"/api/deals/{deal['id']}").status_code == 200  # fills the deal cache
    assert rds.exists(keys.deal_cache(deal["id"]))
    version = int(rds.get(keys.deal_list_version) or 0)

    opened = cli("deal", "open", str(deal["id"]))
    assert f"deal {deal['id']}" in opened.stdout and "open" in opened.stdout
    # The CLI invalidated the cache, so every web node shows the change at once.
    assert not rds.exists(keys.deal_cache(deal["id"]))
    assert int(rds.get(keys.deal_list_version) or 0) > version
    assert client.get(f"/api/deals/{deal['id']}").json["status"] == "open"

    closed = json.loads(cli("deal", "close", str(deal["id"]), "--json").stdout)
    assert closed["status"] == "ended"
    assert client.get(f"/api/deals/{deal['id']}").json["status"] == "ended"
    again = cli("deal", "open", str(deal["id"]), ok=False)
    assert again.returncode == 1 and "ended" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--price", "abc", "--open-now"], "--price"),
        (["--price", "-1", "--open-now"], "--price"),
        (["--price", "1.999", "--open-now"], "--price"),
        (["--price", "1"], "--open-now"),
        (["--price", "1", "--starts-at", "tomorrow", "--ends-at", "2030-01-01T00:00:00Z"], "--starts-at"),
        (["--price", "1", "--starts-at", "2030-01-02T00:00:00Z", "--ends-at", "2030-01-01T00:00:00Z"], "--ends-at"),
        (["--price", "1", "--starts-at", "2020-01-01T00:00:00Z", "--ends-at", "2020-01-02T00:00:00Z"], "--ends-at"),
        (["--price", "1", "--open-now", "--starts-at", "2030-01-01T00:00:00Z"], "exclude"),
        (["--price", "1", "--open-now", "--payment-window", "-1"], "--payment-window"),
        (["--price", "1", "--open-now", "--payment-window", "86401"], "--payment-window"),
        (["--price", "5", "--open-now", "--regular-price", "4"], "--regular-price"),
        (["--price", "5", "--open-now", "--regular-price", "x"], "--regular-price"),
    ],
)
def test_deal_create_rejects_bad_arguments(args: list[str], message: str) -> None:
    r = cli("deal", "create", "--title", "Bad", "--stock", "1", "--limit", "1", *args, ok=False)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_unknown_ids_and_bad_ids() -> None:
    for args in (["deal", "stats", "999999"], ["deal", "open", "999999"], ["deal", "close", "999999"],
                 ["reconcile", "999999"]):  # fmt: skip
        r = cli(*args, ok=False)
        assert r.returncode == 1 and "999999 does not exist" in r.stderr, (args, r.stderr)
    r = cli("deal", "stats", "abc", ok=False, real=True)
    assert r.returncode == 2
    r = cli("dlq", "drop", "not-a-uuid", ok=False)
    assert r.returncode == 2 and "UUID" in r.stderr
    r = cli("dlq", "drop", str(uuid.uuid4()), ok=False)
    assert r.returncode == 1 and "no dead letter" in r.stderr


def test_reconcile_reports_and_repairs_drift(settings: Settings) -> None:
    deal = create_open_deal(stock=10)
    stock_key = Keys(settings.key_prefix).deal(deal["id"]).stock
    rds = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    report = json.loads(cli("reconcile", str(deal["id"]), "--json").stdout)
    assert report["deals"][0]["drift"] == 0 and report["drifted"] == []

    rds.set(stock_key, 7)  # as if Redis lost three units
    report = json.loads(cli("reconcile", str(deal["id"]), "--json").stdout)
    assert report["deals"][0]["drift"] == -3 and report["drifted"] == [deal["id"]]
    assert "DRIFT -3" in cli("reconcile", str(deal["id"])).stdout
    assert rds.get(stock_key) == "7"  # reporting changes nothing

    repaired = cli("reconcile", str(deal["id"]), "--repair")
    assert "repaired" in repaired.stdout
    assert rds.get(stock_key) == "10"
    everything = json.loads(cli("reconcile", "--json").stdout)
    assert any(d["deal_id"] == deal["id"] and d["drift"] == 0 for d in everything["deals"])


def test_dlq_list_retry_drop(db: Database) -> None:
    deal = create_open_deal(stock=10)
    with db.transaction() as s:
        user_id = create_user(s, unique_email("dlq"), "correct-horse-9", "DLQ").id
    good, other = uuid.uuid4(), uuid.uuid4()
    now_ms = int(time.time() * 1000)
    payload = {"t": "o", "u": str(user_id), "q": "1", "p": "19.90", "ts": str(now_ms)}
    with db.transaction() as s:
        for n, oid in enumerate((good, other)):
            letter = {**payload, "id": str(oid)}
            s.add(
                DeadLetter(
                    order_id=oid,
                    deal_id=deal["id"],
                    entry_id=f"{now_ms}-{n}",
                    payload=letter,
                    reason="simulated",
                    attempts=3,
                )
            )

    listed = json.loads(cli("dlq", "list", "--deal", str(deal["id"]), "--json").stdout)
    assert {r["order_id"] for r in listed} == {str(good), str(other)}
    assert all(r["attempts"] == 3 and r["reason"] for r in listed)
    assert str(good) in cli("dlq", "list").stdout

    dropped = cli("dlq", "drop", str(other))
    assert str(other) in dropped.stdout
    retried = json.loads(cli("dlq", "retry", "--deal", str(deal["id"]), "--json").stdout)
    assert retried["persisted"] == [str(good)] and retried["still_failing"] == {}
    with db.read() as s:
        assert s.get(Order, good).status == "confirmed"
        assert s.get(Order, other) is None
    assert "no dead letters" in cli("dlq", "list", "--deal", str(deal["id"])).stdout
    assert "retried 0" in cli("dlq", "retry", "--deal", str(deal["id"])).stdout


def test_services_down_is_one_line_error() -> None:
    env = base_env() | {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/0"}
    r = subprocess.run([CELERY, "-A", "worker", "flashdeal", "deal", "stats", "1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot reach PostgreSQL" in r.stderr


def test_deal_create_with_a_payment_window_and_stats_count_paid_and_expired(settings: Settings) -> None:
    from shared.gate import Gate
    from shared.redis import text_client
    from worker.drain import DrainOptions, drain_deal
    from worker.expiry import sweep

    r = cli("deal", "create", "--title", f"Pay {uuid.uuid4().hex[:6]}", "--price", "5", "--stock", "5", "--limit", "2",
            "--open-now", "--payment-window", "600", "--regular-price", "8.00", "--json")  # fmt: skip
    deal = json.loads(r.stdout)
    assert deal["payment_window_seconds"] == 600 and {"paid", "expired"} <= set(deal)
    assert (deal["price"], deal["regular_price"], deal["currency"]) == ("5.00", "8.00", "EUR")
    gate = Gate(text_client(settings), Keys(settings.key_prefix))
    db = Database(settings)
    with db.transaction() as s:
        a, b = (create_user(s, unique_email(), "pass-word-9", "P").id for _ in range(2))
    paid = gate.admit(deal["id"], a, 2, str(uuid.uuid4())).order_id
    late = gate.admit(deal["id"], b, 1, str(uuid.uuid4())).order_id
    gate.settle(deal["id"], "pay", paid, "evt-cli", "pi_cli")
    gate.redis.zadd(gate.keys.deal(deal["id"]).due, {late: 0})  # as if its deadline had passed
    gate.redis.hset(gate.keys.deal(deal["id"]).orders, late, order_record(b, 1, "5.00", 0, "accepted", 1))
    assert sweep(gate, [deal["id"]]).expired == {deal["id"]: 1}
    drain_deal(db, gate.redis, gate.keys, deal["id"], "cli", DrainOptions(budget_s=5.0))
    stats = json.loads(cli("deal", "stats", str(deal["id"]), "--json").stdout)
    assert (stats["paid"], stats["expired"], stats["remaining_stock"], stats["pending"]) == (1, 1, 3, 0)


def test_deal_create_with_a_queue_then_rate_pause_resume(settings: Settings) -> None:
    r = cli("deal", "create", "--title", f"CLI queued {uuid.uuid4().hex[:6]}", "--price", "5.00", "--stock", "4",
            "--limit", "1", "--open-now", "--queue-rate", "3", "--queue-pow-bits", "6", "--json")  # fmt: skip
    deal = json.loads(r.stdout)
    assert deal["queue"]["rate"] == 3 and deal["queue"]["paused"] is False and deal["queue"]["waiting"] == 0
    k = Keys(settings.key_prefix).deal(deal["id"])
    rds = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert rds.hget(k.state, "queue") == "1" and rds.hget(k.queue, "pow") == "6"
    cli("deal", "queue", str(deal["id"]), "--rate", "8")
    cli("deal", "queue", str(deal["id"]), "--pause")
    stats = json.loads(cli("deal", "stats", str(deal["id"]), "--json").stdout)
    assert stats["queue"]["rate"] == 8 and stats["queue"]["paused"] is True
    cli("deal", "queue", str(deal["id"]), "--resume")
    assert rds.hget(k.queue, "paused") == "0"
    assert cli("deal", "queue", str(deal["id"]), ok=False).returncode != 0  # nothing to change: usage error
    plain = create_open_deal()
    r = cli("deal", "queue", str(plain["id"]), "--rate", "2", ok=False)
    assert r.returncode != 0 and "has no queue" in r.stderr + r.stdout
