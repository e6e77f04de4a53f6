"""Celery tasks: thin wrappers that call the plain functions in ``worker/`` and ``shared/``.

Each is ``<name>_task`` here and ``flashdeal.<name>`` to Celery; ``<name>`` is the plain function it wraps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import asdict
from typing import Any

import redis
from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.deals import tick
from shared.retire import retire_ended
from worker.celery_app import app
from worker.context import get_context
from worker.drain import DrainOptions, drain_deal, prune_consumers
from worker.expiry import SweepReport, sweep, sweep_deal
from worker.reconcile import reconcile

log = logging.getLogger(__name__)

# PostgreSQL or Redis unreachable: the entries stay pending in the stream and the task comes back later.
TRANSIENT = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)
RETRY_BACKOFF_MAX = 30
# Beat runs flashdeal.drain_active every second: no drain flag needs to outlive that by much.
SAFETY_NET_MS = 1000
# On RabbitMQ quorum queues Celery delays a task by whole seconds (native delayed delivery refuses a
# countdown under 1 s): there the follow-up look comes a second later; the kick and follow-up flags
# expire about then, so an admission may kick a drain meanwhile (a few more tasks, nothing late). On
# Redis a countdown may be any fraction.
MIN_COUNTDOWN_S = 1.0 if str(app.conf.broker_url).startswith(("amqp://", "pyamqp://")) else 0.0


def _consumer(task: Task) -> str:
    """This process's consumer name in the group: node name plus pid (one per pool process)."""
    return f"{task.request.hostname or 'local'}:{os.getpid()}"


@app.task(
    name="flashdeal.drain_deal",
    bind=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX,
    retry_jitter=True,
    max_retries=12,
)
def drain_deal_task(self: Task, deal_id: int, follow_up: bool = False) -> dict[str, Any]:
    """Persist one deal's outbox (sent by web nodes at most once per kick interval per deal)."""
    ctx = get_context()
    deal_id = int(deal_id)
    dk = ctx.keys.deal(deal_id)

    def fan_out() -> None:
        # A full batch means a backlog: bring one more node in, at most once per kick interval. A flag of
        # its own, because the kick flag is held by this very task while it drains.
        if ctx.redis.set(dk.fanout, "1", nx=True, px=ctx.settings.drain_kick_ms):
            drain_deal_task.apply_async((deal_id,))

    if follow_up:
        ctx.redis.delete(dk.follow_up)  # this is the scheduled look: the next one may be booked from now on
    # Workers sweep too, not only beat: a deal being drained gets its due orders expired first, and the
    # expiries are in the outbox this very drain reads.
    sweep_deal(ctx.gate, deal_id, time.monotonic() + 0.2, SweepReport(), ctx.settings.expiry_sweep_batch)
    # Hold the kick flag while this task runs, so admissions do not queue tasks for what it is about to
    # drain anyway (on a busy machine a task outlives the flag's 100 ms). The drain deletes the flag
    # before its last look at the stream, as it always did.
    ctx.redis.set(dk.kick, "draining", px=int(ctx.settings.drain_budget_seconds * 1000) + SAFETY_NET_MS)
    try:
        result = drain_deal(
            ctx.db,
            ctx.redis,
            ctx.keys,
            deal_id,
            _consumer(self),
            DrainOptions.from_settings(ctx.settings, ctx.settings.drain_budget_seconds, follow_up=True),
            on_backlog=fan_out,
        )
    except TRANSIENT:
        _hold_kick(deal_id, self.request.retries)
        raise
    if result.more:
        drain_deal_task.apply_async((deal_id,))  # budget spent: yield the process, carry on in a fresh task
    elif result.follow_up:
        # A trickle: one look per kick interval persists what came in meanwhile, so batches grow with the
        # rate instead of one transaction per few orders. At most one look is booked per deal (the
        # follow-up flag); the kick flag stays set meanwhile, so admissions send no task of their own.
        # Both flags expire after the safety-net interval: if the booked look is lost, beat's drain of
        # every live deal (each second) takes over and the next admission kicks again.
        ctx.redis.set(dk.kick, "follow-up", px=SAFETY_NET_MS)
        if ctx.redis.set(dk.follow_up, "1", nx=True, px=SAFETY_NET_MS):
            countdown = max(ctx.settings.drain_kick_ms / 1000, MIN_COUNTDOWN_S)
            drain_deal_task.apply_async((deal_id, True), countdown=countdown)
    return result.as_dict()


def _hold_kick(deal_id: int, retries: int) -> None:
    """While a retry is pending, hold the deal's kick flag so web nodes do not queue one more task per interval."""
    ctx = get_context()
    with contextlib.suppress(redis.RedisError):  # Redis may be the thing that is down: nothing to hold then
        ctx.redis.set(ctx.keys.deal(deal_id).kick, "retry", px=1000 * min(2**retries, RETRY_BACKOFF_MAX))


@app.task(name="flashdeal.drain_active", bind=True)
def drain_active_task(self: Task) -> dict[str, Any]:
    """Safety net run by beat every second: drain every live deal a little."""
    ctx = get_context()
    opts = DrainOptions.from_settings(ctx.settings, min(ctx.settings.drain_budget_seconds, 1.0))
    done: dict[str, Any] = {}
    try:
        for deal_id in ctx.gate.live_deal_ids():
            res = drain_deal(ctx.db, ctx.redis, ctx.keys, deal_id, _consumer(self), opts)
            if res.entries or res.unreplicated:
                done[str(deal_id)] = res.as_dict()
            if res.more:
                drain_deal_task.apply_async((deal_id,))
            if random.random() < 1 / 60:  # about once a minute per deal
                prune_consumers(ctx.redis, ctx.keys, deal_id)
    except TRANSIENT as exc:
        # No retry here: beat sends this task again in a second, and the entries wait in the stream.
        log.warning("drain_active: %s unavailable (%s); entries stay pending", type(exc).__name__, exc)
        return {"deals": done, "error": str(exc)[:200]}
    return {"deals": done}


@app.task(name="flashdeal.expire_due")
def expire_due_task() -> dict[str, Any]:
    """Beat runs this every second: every live deal's unpaid orders past pay_by give their units back."""
    ctx = get_context()
    report = sweep(ctx.gate, batch=ctx.settings.expiry_sweep_batch)
    for deal_id in report.kicked:
        drain_deal_task.apply_async((deal_id,))  # the expiries wait in the outbox: PostgreSQL follows at once
    for deal_id in report.more:
        expire_due_deal_task.apply_async((deal_id,))  # a storm: carry on in a task of its own
    return {"expired": {str(k): v for k, v in report.expired.items()}}


@app.task(name="flashdeal.expire_due_deal")
def expire_due_deal_task(deal_id: int) -> dict[str, Any]:
    """Sweep one deal (sent when a sweep of every deal ran out of time on it)."""
    ctx = get_context()
    report = sweep(ctx.gate, [int(deal_id)], budget_s=2.0, batch=ctx.settings.expiry_sweep_batch)
    for d in report.kicked:
        drain_deal_task.apply_async((d,))
    for d in report.more:
        expire_due_deal_task.apply_async((d,))
    return {"expired": {str(k): v for k, v in report.expired.items()}}


@app.task(name="flashdeal.tick")
def tick_task() -> dict[str, Any]:
    """Move deals along their lifecycle (load ahead, open, sold out, ended, retired); beat runs it every second."""
    ctx = get_context()
    report = tick(ctx.db, ctx.gate, ctx.settings.deal_load_ahead_seconds)
    # Ended deals leave Redis once settled, so every cost that walks the live deals (drain_active, reconcile,
    # metrics, "my orders") follows today's sales, not the shop's history.
    retired = retire_ended(ctx.db, ctx.gate, ctx.settings.deal_retire_after_seconds)
    moved = {k: v for k, v in asdict(report).items() if v}
    if moved or retired.retired:  # the task's own "succeeded" line is at DEBUG (worker/logs.py): moves stay visible
        log.info("tick: %s", {**moved, **({"retired": retired.retired} if retired.retired else {})})
    return {
        **asdict(report),
        "retired": retired.retired,
        "retire_waiting": {str(k): v for k, v in retired.waiting.items()},
    }


@app.task(name="flashdeal.reconcile", ignore_result=False)
def reconcile_task(deal_id: int | None = None, repair: bool = False) -> dict[str, Any]:
    """Compare Redis stock with PostgreSQL plus the outbox; report drift, repair on request."""
    ctx = get_context()
    ids = None if deal_id is None else [int(deal_id)]
    report = reconcile(ctx.db, ctx.redis, ctx.keys, ids, repair=repair)
    for d in report.drifted:
        log.warning(
            "reconcile: deal %s drift %s (redis %s, expected %s, %s buyers' totals off)%s%s",
            d.deal_id,
            "STOCK MISSING" if d.redis_remaining is None else d.drift,
            d.redis_remaining,
            d.expected_remaining,
            d.buyers_mismatched,
            " repaired" if d.repaired else "; repair: celery -A worker flashdeal reconcile ID --repair",
            d.rebuilt_note,
        )
    for d in report.deals:
        if d.ok and d.held_at_load:
            log.warning("reconcile: deal %s%s", d.deal_id, d.rebuilt_note)
    return report.as_dict()
