"""The Celery task names of flashdeal, written once: workers register them, beat and web nodes send them."""

from __future__ import annotations

DRAIN_DEAL = "flashdeal.drain_deal"  # persist one deal's outbox (kicked by web nodes, re-queued by itself)
DRAIN_ACTIVE = "flashdeal.drain_active"  # beat, every second: every live deal a little (the safety net)
EXPIRE_DUE = "flashdeal.expire_due"  # beat, every second: unpaid orders past pay_by give their units back
EXPIRE_DUE_DEAL = "flashdeal.expire_due_deal"  # one deal's expiry storm, carried on in a task of its own
TICK = "flashdeal.tick"  # beat, every second: deals along their lifecycle
CHECK_PAYMENTS = "flashdeal.check_payments"  # beat, every 3 s: open payments near or past pay_by asked at the provider
RECONCILE = "flashdeal.reconcile"  # beat every 30 s (report), the CLI on demand (report or repair)

DRAIN_TASKS = frozenset({DRAIN_DEAL, DRAIN_ACTIVE})
