"""Celery configuration of the flashdeal workers and beat (read by ``worker/__init__.py``)."""

from __future__ import annotations

import os

from kombu import Exchange, Queue

from shared.redis_client import celery_result_backend, celery_result_backend_options
from shared.settings import Settings

_settings = Settings.from_env()

# One queue for every flashdeal task; tests and benchmarks pick their own so they never meet a dev stack
# sharing the same Redis.
QUEUE = os.environ.get("CELERY_QUEUE", "flashdeal")

broker_url = _settings.celery_broker_url
result_backend = celery_result_backend(_settings)
result_backend_transport_options = celery_result_backend_options(_settings)
task_ignore_result = True  # drains are fire-and-forget; tasks that report (reconcile) opt in
result_expires = 3600

# JSON only: a pickle payload on a shared broker is remote code execution.
accept_content = ["json"]
task_serializer = "json"
result_serializer = "json"
result_accept_content = ["json"]

task_default_queue = QUEUE
task_routes = {"flashdeal.*": {"queue": QUEUE}}

# Late acks with idempotent tasks: a task whose worker dies is delivered again, never lost, and running a
# drain twice writes nothing twice (ON CONFLICT on the order id, XACK after the commit).
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Redis blinked: let a running drain finish (it has its own Redis retries); if its ack is lost the task comes
# back, which is harmless because every task here is idempotent.
worker_cancel_long_running_tasks_on_connection_loss = False

# Redis blips: keep reconnecting instead of exiting.
broker_connection_retry = True
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
broker_transport_options = {
    # Longer than any task plus its longest retry countdown, shorter than an operator's patience: a task
    # held by a worker that vanished is redelivered after this.
    "visibility_timeout": 300,
    "socket_keepalive": True,
    "socket_connect_timeout": 5,
    "retry_on_timeout": True,
    "health_check_interval": 10,
}
if broker_url.startswith("sentinel://"):
    # Celery's Redis-Sentinel transport (a CELERY_BROKER_URL of sentinel://h:p;sentinel://h:p): it needs the name.
    broker_transport_options["master_name"] = _settings.redis_sentinel_master
if broker_url.startswith(("amqp://", "pyamqp://")):
    # RabbitMQ (the broker of the Sentinel topology): the queue is a quorum queue, replicated by Raft on a
    # RabbitMQ cluster and kept on disk, published with confirms. A topic exchange, because Celery's native
    # delayed delivery (countdowns on quorum queues: the drain's follow-up look, retries) needs one.
    task_queues = [Queue(QUEUE, Exchange(QUEUE, type="topic"), routing_key=QUEUE,
                         queue_arguments={"x-queue-type": "quorum"}, durable=True)]  # fmt: skip
    task_default_exchange = QUEUE
    task_default_routing_key = QUEUE
    broker_transport_options = {"confirm_publish": True}
    # Quorum queues have no global QoS: Celery must not ask for it (a per-consumer prefetch is used).
    worker_detect_quorum_queues = True
redis_socket_keepalive = True
redis_retry_on_timeout = True

timezone = "UTC"
enable_utc = True
worker_send_task_events = True  # Flower
task_send_sent_event = False  # a sent event costs every publisher (web nodes) a second write

# Interval-only schedule: nothing needs remembering between restarts; the file beat is given (`-s var/...`)
# only keeps last-run times, and losing it sends each task once more at start.
beat_scheduler = "celery.beat:Scheduler"
beat_schedule = {
    "tick": {"task": "flashdeal.tick", "schedule": 1.0, "options": {"expires": 5}},
    # Safety net: every live deal is drained at least once a second even if no web node kicked it.
    "drain-active": {"task": "flashdeal.drain_active", "schedule": 1.0, "options": {"expires": 5}},
    # Payment windows: unpaid orders past pay_by give their units back within about a second.
    "expire-due": {"task": "flashdeal.expire_due", "schedule": 1.0, "options": {"expires": 5}},
    "reconcile": {"task": "flashdeal.reconcile", "schedule": 30.0, "options": {"expires": 25}},
}
