"""Settings: one frozen object built from the environment, no I/O at import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlparse

DEV_SECRET = "dev-insecure-secret-change-me"
PAYMENT_PROVIDERS = ("dev", "stripe")
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"  # RabbitMQ: the broker of the Sentinel and Cluster topologies
# The nodes ``FLASHDEAL_REDIS_TOPOLOGY=cluster make up`` starts (scripts/cluster_topology.py); any one will do.
DEFAULT_CLUSTER_NODES = ",".join(f"127.0.0.1:{port}" for port in range(7001, 7007))


class ConfigError(RuntimeError):
    """A setting is missing or unsafe for the chosen environment."""


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


TOPOLOGIES = ("single", "sentinel", "cluster")  # each is a branch of shared/redis_client.py: _connect
# Topologies with replicas: an admission waits for one of them (WAIT), and the broker is RabbitMQ.
REPLICATED_TOPOLOGIES = ("sentinel", "cluster")


def parse_hosts(raw: str, name: str) -> tuple[tuple[str, int], ...]:
    """Parse a ``host:port,host:port`` list (``REDIS_SENTINELS``, ``REDIS_CLUSTER_NODES``)."""
    out = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"{name}: {part!r} is not host:port")
        out.append((host, int(port)))
    return tuple(out)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """Everything configurable about flashdeal; see the README's configuration table."""

    env: str = "development"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/flashdeal"
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    redis_topology: str = "single"
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "flashdeal"
    redis_cluster_nodes: tuple[tuple[str, int], ...] = ()  # startup nodes of the cluster topology
    order_ack_replicas: int = 0  # WAIT for this many replicas after an admission or cancel (0: no WAIT)
    order_ack_timeout_ms: int = 250
    secret_key: str = DEV_SECRET
    key_prefix: str = "fd:"
    session_idle_seconds: int = 1800
    session_absolute_seconds: int = 86400
    session_refresh_seconds: int = 60
    session_cookie_secure: bool = False
    ratelimit_enabled: bool = True
    fast_path: bool = True
    ratelimit_order: str = "30/second;600/minute"
    ratelimit_order_ip: str = "2000/second"
    ratelimit_login: str = "10/minute"
    ratelimit_login_ip: str = "100/minute"
    ratelimit_signup_ip: str = "10/minute;100/hour"  # each signup costs an argon2id hash (64 MiB)
    trusted_proxies: int = 0
    deal_cache_ttl: int = 5
    deal_load_ahead_seconds: int = 60
    deal_retire_after_seconds: int = 60
    drain_batch_size: int = 1000
    drain_claim_idle_ms: int = 10000
    drain_kick_ms: int = 100
    dlq_max_attempts: int = 3
    expiry_sweep_batch: int = 500  # unpaid orders expired per script call of the sweep
    payment_provider: str = "dev"  # dev (built-in test provider) | stripe
    payment_currency: str = "eur"  # ISO 4217, lower case as Stripe writes it
    stripe_secret_key: str = field(default="", repr=False)
    stripe_webhook_secret: str = field(default="", repr=False)
    stripe_api_base: str = ""  # empty: the stripe package's own default; tests point it at a local server
    dev_webhook_url: str = ""  # dev provider: where its events go (default: this web node's own port)
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (``os.environ`` by default)."""
        e = os.environ if env is None else env
        redis_url = e.get("REDIS_URL") or cls.redis_url
        topology = (e.get("FLASHDEAL_REDIS_TOPOLOGY") or cls.redis_topology).strip().lower()
        if topology not in TOPOLOGIES:
            raise ConfigError(f"FLASHDEAL_REDIS_TOPOLOGY must be one of {', '.join(TOPOLOGIES)}, got {topology!r}")
        sentinels = parse_hosts(e.get("REDIS_SENTINELS", ""), "REDIS_SENTINELS")
        if topology == "sentinel" and not sentinels:
            raise ConfigError("FLASHDEAL_REDIS_TOPOLOGY=sentinel needs REDIS_SENTINELS=host:port,host:port,...")
        master = e.get("REDIS_SENTINEL_MASTER") or cls.redis_sentinel_master
        cluster_nodes = parse_hosts(e.get("REDIS_CLUSTER_NODES") or DEFAULT_CLUSTER_NODES, "REDIS_CLUSTER_NODES")
        return cls(
            env=e.get("FLASHDEAL_ENV", cls.env),
            database_url=_sqlalchemy_url(e.get("DATABASE_URL") or cls.database_url),
            redis_url=redis_url,
            celery_broker_url=e.get("CELERY_BROKER_URL") or default_broker_url(topology, redis_url),
            redis_topology=topology,
            redis_sentinels=sentinels,
            redis_sentinel_master=master,
            redis_cluster_nodes=cluster_nodes if topology == "cluster" else (),
            # A replica must hold an order before its 202 when there is one to hold it (section "Durability").
            order_ack_replicas=_int(e, "ORDER_ACK_REPLICAS", 1 if topology in REPLICATED_TOPOLOGIES else 0),
            order_ack_timeout_ms=_int(e, "ORDER_ACK_TIMEOUT_MS", cls.order_ack_timeout_ms),
            secret_key=e.get("SECRET_KEY") or DEV_SECRET,
            key_prefix=e.get("FLASHDEAL_KEY_PREFIX", cls.key_prefix),
            session_idle_seconds=_int(e, "SESSION_IDLE_SECONDS", cls.session_idle_seconds),
            session_absolute_seconds=_int(e, "SESSION_ABSOLUTE_SECONDS", cls.session_absolute_seconds),
            session_refresh_seconds=_int(e, "SESSION_REFRESH_SECONDS", cls.session_refresh_seconds),
            session_cookie_secure=_bool(e.get("SESSION_COOKIE_SECURE"), False),
            ratelimit_enabled=_bool(e.get("RATELIMIT_ENABLED"), True),
            fast_path=_bool(e.get("FAST_PATH"), True),
            ratelimit_order=e.get("RATELIMIT_ORDER", cls.ratelimit_order),
            ratelimit_order_ip=e.get("RATELIMIT_ORDER_IP", cls.ratelimit_order_ip),
            ratelimit_login=e.get("RATELIMIT_LOGIN", cls.ratelimit_login),
            ratelimit_login_ip=e.get("RATELIMIT_LOGIN_IP", cls.ratelimit_login_ip),
            ratelimit_signup_ip=e.get("RATELIMIT_SIGNUP_IP", cls.ratelimit_signup_ip),
            trusted_proxies=_int(e, "TRUSTED_PROXIES", cls.trusted_proxies),
            deal_cache_ttl=_int(e, "DEAL_CACHE_TTL", cls.deal_cache_ttl),
            deal_load_ahead_seconds=_int(e, "DEAL_LOAD_AHEAD_SECONDS", cls.deal_load_ahead_seconds),
            deal_retire_after_seconds=_int(e, "DEAL_RETIRE_AFTER_SECONDS", cls.deal_retire_after_seconds),
            drain_batch_size=_int(e, "DRAIN_BATCH_SIZE", cls.drain_batch_size),
            drain_claim_idle_ms=_int(e, "DRAIN_CLAIM_IDLE_MS", cls.drain_claim_idle_ms),
            drain_kick_ms=_int(e, "DRAIN_KICK_MS", cls.drain_kick_ms),
            dlq_max_attempts=_int(e, "DLQ_MAX_ATTEMPTS", cls.dlq_max_attempts),
            expiry_sweep_batch=_int(e, "EXPIRY_SWEEP_BATCH", cls.expiry_sweep_batch),
            # Unset: the dev provider in development and test, Stripe anywhere else (dev is refused there).
            payment_provider=(e.get("PAYMENT_PROVIDER") or _default_provider(e.get("FLASHDEAL_ENV", cls.env)))
            .strip()
            .lower(),
            payment_currency=(e.get("PAYMENT_CURRENCY") or cls.payment_currency).strip().lower(),
            stripe_secret_key=e.get("STRIPE_SECRET_KEY", ""),
            stripe_webhook_secret=e.get("STRIPE_WEBHOOK_SECRET", ""),
            stripe_api_base=e.get("STRIPE_API_BASE", ""),
            dev_webhook_url=e.get("DEV_WEBHOOK_URL", ""),
        )

    def with_(self, **changes: object) -> Settings:
        """Return a copy with some fields changed (tests, benchmarks)."""
        return replace(self, **changes)

    @property
    def is_development(self) -> bool:
        """True for the development and test environments."""
        return self.env in {"development", "test"}

    def check(self) -> Settings:
        """Refuse unsafe settings outside development; returns self for chaining."""
        if not self.is_development and (not self.secret_key or self.secret_key == DEV_SECRET):
            raise ConfigError(
                f"SECRET_KEY must be set to a long random value when FLASHDEAL_ENV={self.env!r} "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if not self.is_development and len(self.secret_key) < 24:
            raise ConfigError("SECRET_KEY must be at least 24 characters outside development")
        if self.payment_provider not in PAYMENT_PROVIDERS:
            raise ConfigError(
                f"PAYMENT_PROVIDER must be one of {', '.join(PAYMENT_PROVIDERS)}, got {self.payment_provider!r}"
            )
        if self.payment_provider == "dev" and not self.is_development:
            # The dev provider pays with a public test card number: outside development that is free goods.
            raise ConfigError(
                f"PAYMENT_PROVIDER=dev accepts test cards; set PAYMENT_PROVIDER=stripe when FLASHDEAL_ENV={self.env!r}"
            )
        if not (len(self.payment_currency) == 3 and self.payment_currency.isalpha()):
            raise ConfigError(f"PAYMENT_CURRENCY must be a 3-letter ISO 4217 code, got {self.payment_currency!r}")
        return self


def _default_provider(env: str) -> str:
    return "dev" if env in {"development", "test"} else "stripe"


def default_broker_url(topology: str, redis_url: str) -> str:
    """The Celery broker when ``CELERY_BROKER_URL`` is unset: the flashdeal Redis, or RabbitMQ with replicas.

    Why not kombu's Redis-Sentinel transport with Sentinel: in our failover test a worker on it
    stopped for good after the primary's death in 1 run of 13 (README, "The Celery broker through a
    failover"); on RabbitMQ it never did. ``sentinel_broker_url`` builds the transport's URL for
    whoever sets it explicitly. With a cluster there is no choice: kombu has no Redis Cluster
    transport (celery#2852).
    """
    return DEFAULT_AMQP_URL if topology in REPLICATED_TOPOLOGIES else redis_url


def sentinel_broker_url(redis_url: str, sentinels: tuple[tuple[str, int], ...]) -> str:
    """``CELERY_BROKER_URL`` for kombu's Redis-Sentinel transport on these sentinels (REDIS_URL's database)."""
    db = urlparse(redis_url).path.lstrip("/") or "0"
    return ";".join(f"sentinel://{host}:{port}/{db}" for host, port in sentinels)


def _sqlalchemy_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url
