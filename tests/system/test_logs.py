"""Worker and beat logs: routine periodic tasks at DEBUG, everything else as Celery logs it."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import uuid

import pytest
from celery.app import trace

from tests.environment import ROOT, base_env
from worker.celery_app import app
from worker.logs import quiet_routine_tasks


@pytest.fixture()
def quiet(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    quiet_routine_tasks(entry["task"] for entry in app.conf.beat_schedule.values())
    caplog.set_level(logging.INFO)
    return caplog


def _succeeded(name: str) -> None:
    trace.info(trace.LOG_SUCCESS, {"id": "x", "name": name, "return_value": "{}", "runtime": 0.001})


def test_routine_task_lines_are_dropped_at_info(quiet: pytest.LogCaptureFixture) -> None:
    for name in ("flashdeal.tick", "flashdeal.drain_active", "flashdeal.reconcile", "flashdeal.expire_due"):
        _succeeded(name)
        trace.info(trace.LOG_RECEIVED, {"id": "x", "name": name})
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "tick", "flashdeal.tick")
    assert quiet.records == []


def test_other_tasks_and_failures_stay_visible(quiet: pytest.LogCaptureFixture) -> None:
    _succeeded("flashdeal.drain_deal")  # kicked by web nodes while orders arrive: real activity
    trace.info(trace.LOG_RETRY, {"id": "z", "name": "flashdeal.tick", "exc": "Retry in 1s"})
    logging.getLogger("celery.app.trace").error("Task %(name)s[%(id)s] raised", {"name": "flashdeal.tick", "id": "y"})
    assert [r.levelname for r in quiet.records] == ["INFO", "INFO", "ERROR"]


def test_routine_lines_come_back_at_debug(quiet: pytest.LogCaptureFixture) -> None:
    quiet.set_level(logging.DEBUG)
    _succeeded("flashdeal.tick")
    assert [r.levelname for r in quiet.records] == ["DEBUG"]


def test_beat_at_info_prints_no_line_per_second(tmp_path) -> None:
    """A real beat process at -l INFO for a few seconds: its every-second sends are not announced."""
    env = base_env() | {"CELERY_QUEUE": f"fdtest-logs-{uuid.uuid4().hex[:6]}"}
    log = tmp_path / "beat.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "beat",
            "-l",
            "INFO",
            "-s",
            str(tmp_path / "sched"),
            "-f",
            str(log),
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "beat: Starting" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.2)
        time.sleep(3.5)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    text = log.read_text()
    assert "beat: Starting" in text
    assert "Sending due task" not in text, text[-2000:]
