"""Settings: validated and frozen, read once, and the settings given to create_app choose the kicks' broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pydantic
import pytest
import redis

from celeryconfig import celery_config
from scripts.local_redis.sentinel import MASTER_NAME, SentinelPorts
from shared.settings import DEFAULT_AMQP_URL, DEV_SECRET, TOPOLOGIES, ConfigError, Settings, env_name
from tests.environment import ROOT, base_env
from tests.helpers import login_client, make_deal, make_users
from web import create_app

# The defaults docs/configuration.md lists, by variable.
DEFAULTS = {
    "FLASHDEAL_ENV": "development",
    "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/flashdeal",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    "CELERY_QUEUE": "flashdeal",
    "FLASHDEAL_REDIS_TOPOLOGY": "single",
    "REDIS_SENTINELS": (),
    "REDIS_SENTINEL_MASTER": "flashdeal",
    "REDIS_CLUSTER_NODES": (),
    "ORDER_ACK_REPLICAS": 0,
    "ORDER_ACK_TIMEOUT_MS": 250,
    "SECRET_KEY": DEV_SECRET,
    "FLASHDEAL_KEY_PREFIX": "fd:",
    "SESSION_IDLE_SECONDS": 1800,
    "SESSION_ABSOLUTE_SECONDS": 86400,
    "SESSION_REFRESH_SECONDS": 60,
    "SESSION_COOKIE_SECURE": False,
    "ORDER_TOKEN_SECONDS": 300,
    "RATELIMIT_ENABLED": True,
    "FAST_PATH": True,
    "RATELIMIT_ORDER": "30/second;600/minute",
    "RATELIMIT_ORDER_IP": "2000/second",
    "RATELIMIT_LOGIN": "5/minute;20/hour;100/day",
    "RATELIMIT_LOGIN_IP": "100/minute",
    "RATELIMIT_LOGIN_ACCOUNT": "100/hour",
    "RATELIMIT_SIGNUP_IP": "10/minute;100/hour",
    "RATELIMIT_QUEUE_JOIN": "5/second;60/minute",
    "RATELIMIT_QUEUE_JOIN_IP": "50/second;1000/minute",
    "QUEUE_PASS_SECONDS": 120,
    "QUEUE_POLL_MS": 3000,
    "QUEUE_CHALLENGE_SECONDS": 300,
    "TRUSTED_PROXIES": 0,
    "DEAL_CACHE_TTL": 5,
    "DEAL_LOAD_AHEAD_SECONDS": 60,
    "DEAL_RETIRE_AFTER_SECONDS": 60,
    "DRAIN_BATCH_SIZE": 1000,
    "DRAIN_CLAIM_IDLE_MS": 10000,
    "DRAIN_KICK_MS": 100,
    "DRAIN_BUDGET_SECONDS": 2.0,
    "DLQ_MAX_ATTEMPTS": 3,
    "EXPIRY_SWEEP_BATCH": 500,
    "WORKER_METRICS_PORT": 0,
    "WORKER_METRICS_ADDR": "127.0.0.1",
    "PROMETHEUS_MULTIPROC_DIR": "",
    "FLASHDEAL_DEBUG": False,
    "PAYMENT_PROVIDER": "dev",
    "PAYMENT_CURRENCY": "eur",
    "STRIPE_SECRET_KEY": "",
    "STRIPE_WEBHOOK_SECRET": "",
    "STRIPE_API_BASE": "",
    "DEV_WEBHOOK_URL": "",
    "PAYMENT_TIMEOUT_SECONDS": 4.0,
    "PAYMENT_MAX_RETRIES": 1,
    "PAYMENT_MAX_CONCURRENT": 4,
    "PAYMENT_HOLD_SECONDS": 120,
    "PAYMENT_CHECK_AHEAD_SECONDS": 10,
}


def test_defaults_and_variable_names() -> None:
    s = Settings.from_env({})
    assert {env_name(f): v for f, v in s.model_dump().items()} == DEFAULTS
    # Empty means unset, as before (a shell's `VAR= cmd`), but not for the environment's name or the key prefix.
    assert Settings.from_env({"REDIS_URL": "", "DRAIN_BATCH_SIZE": "", "FAST_PATH": ""}) == s
    assert Settings.from_env({"FLASHDEAL_KEY_PREFIX": ""}).key_prefix == ""
    assert not Settings.from_env({"FLASHDEAL_ENV": ""}).is_development
    # Only the documented names: a variable called ENV or DEBUG sets nothing.
    assert Settings.from_env({"ENV": "production", "DEBUG": "1", "KEY_PREFIX": "x:"}) == s


def test_topology_dependent_defaults() -> None:
    s = Settings.from_env({"FLASHDEAL_REDIS_TOPOLOGY": " Sentinel ", "REDIS_SENTINELS": "h1:26391,h2:26392"})
    assert (s.redis_topology, s.redis_sentinels) == ("sentinel", (("h1", 26391), ("h2", 26392)))
    assert (s.celery_broker_url, s.order_ack_replicas) == (DEFAULT_AMQP_URL, 1)
    assert Settings.from_env({"REDIS_URL": "redis://h:1/2"}).celery_broker_url == "redis://h:1/2"
    assert Settings.from_env({"FLASHDEAL_ENV": "production"}).payment_provider == "stripe"
    assert set(TOPOLOGIES) == {"single", "sentinel", "cluster"}


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("SESSION_IDLE_SECONDS", "ten", "must be an integer"),
        ("SESSION_IDLE_SECONDS", "0", "must be at least 1"),
        ("ORDER_ACK_TIMEOUT_MS", "0", "must be at least 1"),  # WAIT 0 would block for ever
        ("ORDER_ACK_REPLICAS", "-1", "must be at least 0"),
        ("DEAL_CACHE_TTL", "0", "must be at least 1"),
        ("DRAIN_KICK_MS", "-5", "must be at least 1"),
        ("DRAIN_BATCH_SIZE", "0", "must be at least 1"),
        ("DRAIN_BUDGET_SECONDS", "0", "must be greater than 0"),
        ("WORKER_METRICS_PORT", "65536", "must be at most 65535"),
        ("REDIS_SENTINELS", "h:0", "must be host:port,host:port with ports in 1..65535"),
        ("RATELIMIT_ORDER", "lots", "must be a rate limit"),
        ("RATELIMIT_LOGIN_IP", "10 per fortnight", "must be a rate limit"),
        ("REDIS_CLUSTER_NODES", "h:70000", "must be host:port,host:port with ports in 1..65535"),
        ("FLASHDEAL_REDIS_TOPOLOGY", "ring", "must be one of single, sentinel, cluster"),
        ("FAST_PATH", "maybe", "must be true or false"),
        ("PAYMENT_PROVIDER", "paypal", "must be one of dev, stripe"),
        ("PAYMENT_CURRENCY", "euro", "must be a 3-letter ISO 4217 code"),
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=variable) as caught:
        Settings.from_env({variable: value})
    assert f"{variable} {reason}" in str(caught.value)


def test_sentinel_topology_defaults_to_the_local_sentinels_of_make_up() -> None:
    with pytest.raises(ConfigError, match="REDIS_SENTINELS: 'nohost' is not host:port"):
        Settings.from_env({"REDIS_SENTINELS": "nohost"})
    # Unset: the sentinels `FLASHDEAL_REDIS_TOPOLOGY=sentinel make up` starts, so the CLI in a second terminal
    # finds them as it finds the local cluster.
    local = Settings.from_env({"FLASHDEAL_REDIS_TOPOLOGY": "sentinel"})
    assert ",".join(f"{h}:{p}" for h, p in local.redis_sentinels) == SentinelPorts.default().sentinels_setting
    assert local.redis_sentinel_master == MASTER_NAME
    assert Settings.from_env({}).redis_sentinels == ()


def test_frozen_and_with_validates() -> None:
    s = Settings.from_env({})
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        s.drain_kick_ms = 5  # type: ignore[misc]
    t = s.with_(env="test", key_prefix="t:", drain_kick_ms=50)
    assert (t.env, t.key_prefix, t.drain_kick_ms, s.drain_kick_ms) == ("test", "t:", 50, 100)
    with pytest.raises(ConfigError, match="DRAIN_KICK_MS"):
        s.with_(drain_kick_ms=0)
    with pytest.raises(ConfigError, match="RATELIMIT_ORDER"):
        s.with_(ratelimit_order="often")
    with pytest.raises(ConfigError, match="no such setting"):
        s.with_(drain_kick=5)


def test_no_settings_at_import() -> None:
    """Importing every entry point reads no settings: a broken one fails when used, never at import."""
    code = (
        "import celeryconfig, web, worker, worker.metrics, worker.cli, shared.accounts; "
        "from worker.context import worker_settings; "
        "assert worker_settings.cache_info().currsize == 0; "
        "assert shared.accounts._dummy_hash.cache_info().currsize == 0"
    )
    env = base_env() | {"FLASHDEAL_REDIS_TOPOLOGY": "bogus"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # The worker's Celery app reads them when it is first configured, and a bad one is named then.
    code = "from worker import app; app.conf.task_default_queue"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "FLASHDEAL_REDIS_TOPOLOGY" in p.stderr


def test_celery_config_follows_the_settings() -> None:
    s = Settings.from_env({"CELERY_QUEUE": "q1", "CELERY_BROKER_URL": "redis://h:1/3"})
    conf = celery_config(s)
    assert conf["broker_url"] == conf["broker_write_url"] == "redis://h:1/3"
    assert conf["task_default_queue"] == "q1"
    assert conf["task_routes"] == {"flashdeal.*": {"queue": "q1"}}
    amqp = celery_config(s.with_(celery_broker_url=DEFAULT_AMQP_URL))
    assert amqp["task_queues"][0].name == "q1" and amqp["task_queues"][0].queue_arguments == {"x-queue-type": "quorum"}


def test_create_app_settings_choose_the_kicks_broker_and_queue(settings, db, monkeypatch) -> None:
    """A drain kick goes to the broker and queue of the settings given to create_app, whatever os.environ says."""
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    monkeypatch.setenv("CELERY_QUEUE", "not-this-one")
    queue = f"{settings.key_prefix}kicks-{uuid.uuid4().hex[:6]}"
    app = create_app(settings.with_(ratelimit_enabled=False, celery_queue=queue))
    svc = app.extensions["flashdeal"]
    broker = redis.Redis.from_url(settings.celery_broker_url, decode_responses=True)
    try:
        deal = make_deal(db, svc.gate, stock=5, limit=2)
        r = login_client(app, db, make_users(db, 1)[0]).post(f"/api/deals/{deal.id}/orders", json={"quantity": 1})
        assert r.status_code == 202
        sent = [json.loads(m) for m in broker.lrange(queue, 0, -1)]
        assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in sent] == [
            ("flashdeal.drain_deal", f"[{deal.id}]")
        ]
    finally:
        broker.delete(queue, f"_kombu.binding.{queue}")
