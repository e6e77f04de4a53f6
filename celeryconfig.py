"""Celery configuration of the flashdeal workers, beat and the web nodes' drain kicks, from one Settings."""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from shared.redis import celery_result_backend, celery_result_backend_options
from shared.settings import Settings
from shared.task_names import CHECK_PAYMENTS, DRAIN_ACTIVE, EXPIRE_DUE, RECONCILE, TICK

# Interval-only schedule: nothing needs remembering between restarts; the file beat is given (`-s var/...`)
# only keeps last-run times, and losing it sends each task once more at start.
BEAT_SCHEDULE = {
    "tick": {"task": TICK, "schedule": 1.0, "options": {"expires": 5}},
    # Safety net: every live deal is drained at least once a second even if no web node kicked it.
    "drain-active": {"task": DRAIN_ACTIVE, "schedule": 1.0, "options": {"expires": 5}},
    # Payment windows: unpaid orders past pay_by give their units back within about a second.
    "expire-due": {"task": EXPIRE_DUE, "schedule": 1.0, "options": {"expires": 5}},
    # Payments whose webhook never came: asked at the provider near and past pay_by (shared/payments/check.py).
    "check-payments": {"task": CHECK_PAYMENTS, "schedule": 3.0, "options": {"expires": 10}},
    "reconcile": {"task": RECONCILE, "schedule": 30.0, "options": {"expires": 25}},
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings for these flashdeal settings: broker, queue (CELERY_QUEUE), routes, beat schedule."""
    # One queue for every flashdeal task; tests and benchmarks pick their own so they never meet a dev stack
    # sharing the same Redis.
    queue = settings.celery_queue
    broker_url = settings.celery_broker_url
    conf: dict[str, Any] = {
        "broker_url": broker_url,
        # Why also read and write URLs: Celery takes the broker from a CELERY_BROKER_URL in os.environ before
        # broker_url, and a web app's kick sender must use the broker of the settings it was given.
        "broker_read_url": broker_url,
        "broker_write_url": broker_url,
        "result_backend": celery_result_backend(settings),
        "result_backend_transport_options": celery_result_backend_options(settings),
        "task_ignore_result": True,  # drains are fire-and-forget; tasks that report (reconcile) opt in
        "result_expires": 3600,
        # JSON only: a pickle payload on a shared broker is remote code execution.
        "accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "task_default_queue": queue,
        "task_routes": {"flashdeal.*": {"queue": queue}},
        # Late acks with idempotent tasks: a task whose worker dies is delivered again, never lost, and running a
        # drain twice writes nothing twice (ON CONFLICT on the order id, XACK after the commit).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Redis blinked: let a running drain finish (it has its own Redis retries); if its ack is lost the task
        # comes back, which is harmless because every task here is idempotent.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Redis blips: keep reconnecting instead of exiting.
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {
            # Longer than any task plus its longest retry countdown, shorter than an operator's patience: a task
            # held by a worker that vanished is redelivered after this.
            "visibility_timeout": 300,
            "socket_keepalive": True,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
            "health_check_interval": 10,
        },
        "redis_socket_keepalive": True,
        "redis_retry_on_timeout": True,
        "timezone": "UTC",
        "enable_utc": True,
        "worker_send_task_events": True,  # Flower
        "task_send_sent_event": False,  # a sent event costs every publisher (web nodes) a second write
        "beat_scheduler": "celery.beat:Scheduler",
        "beat_schedule": BEAT_SCHEDULE,
    }
    if broker_url.startswith("sentinel://"):
        # Celery's Redis-Sentinel transport (a CELERY_BROKER_URL of sentinel://h:p;sentinel://h:p): it needs the name.
        conf["broker_transport_options"]["master_name"] = settings.redis_sentinel_master
    if broker_url.startswith(("amqp://", "pyamqp://")):
        # RabbitMQ (the broker of the Sentinel topology): the queue is a quorum queue, replicated by Raft on a
        # RabbitMQ cluster and kept on disk, published with confirms. A topic exchange, because Celery's native
        # delayed delivery (countdowns on quorum queues: the drain's follow-up look, retries) needs one.
        conf["task_queues"] = [Queue(queue, Exchange(queue, type="topic"), routing_key=queue,
                                     queue_arguments={"x-queue-type": "quorum"}, durable=True)]  # fmt: skip
        conf["task_default_exchange"] = queue
        conf["task_default_routing_key"] = queue
        conf["broker_transport_options"] = {"confirm_publish": True}
        # Quorum queues have no global QoS: Celery must not ask for it (a per-consumer prefetch is used).
        conf["worker_detect_quorum_queues"] = True
    return conf
