"""Settings: one validated, frozen object built from the environment (pydantic-settings), no I/O at import."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlparse

from limits import parse_many
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

DEV_SECRET = "dev-insecure-secret-change-me"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"  # RabbitMQ: the broker of the Sentinel and Cluster topologies
# The names of the Redis topologies; each is a class of shared/redis/ (registry.py: TOPOLOGIES).
Topology = Literal["single", "sentinel", "cluster"]
TOPOLOGIES: tuple[str, ...] = get_args(Topology)
PaymentProvider = Literal["dev", "stripe"]
PAYMENT_PROVIDERS: tuple[str, ...] = get_args(PaymentProvider)

Port = Annotated[int, Field(ge=0, le=65535)]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Hosts = Annotated[tuple[tuple[str, int], ...], NoDecode]  # NoDecode: "host:port,host:port", not JSON


class ConfigError(RuntimeError):
    """A setting is missing, malformed, out of range or unsafe for the chosen environment."""


def _doc(default: Any, description: str, shown: str | None = None, **options: Any) -> Any:
    """A field with its description (docs/configuration.md is written from it) and, if computed, its shown default."""
    extra = {"shown_default": shown} if shown is not None else None
    return Field(default, description=description, json_schema_extra=extra, **options)


def _env(name: str, default: Any, description: str) -> Any:
    """A field read from the environment variable ``name`` instead of the field's own name in capitals."""
    return _doc(default, description, validation_alias=AliasChoices(name))


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source reading a given mapping instead of ``os.environ``.

    Why a subclass: the library reads only ``os.environ``; ``Settings.from_env(mapping)`` (tests, benchmarks,
    processes started with their own environment) must see that mapping and nothing else.
    """

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._given.items()}


class Settings(BaseSettings):
    """Everything configurable about flashdeal; docs/configuration.md lists it (``python -m shared.settings_doc``).

    Field ``x`` is read from the environment variable ``X`` unless it names another one (``_env``).
    An empty variable counts as unset, except for ``FLASHDEAL_ENV`` and ``FLASHDEAL_KEY_PREFIX``.
    """

    # Not validate_by_name: the environment must never fill FLASHDEAL_ENV from a variable called ENV.
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    env: str = _env(
        "FLASHDEAL_ENV",
        "development",
        "`development`/`test` allow the built-in dev secret and the dev payment provider; anything else "
        "requires `SECRET_KEY`",
    )
    database_url: str = _doc(
        "postgresql+psycopg://postgres@127.0.0.1:5432/flashdeal",
        "PostgreSQL; `postgresql://` URLs use psycopg 3, `postgresql+psycopg2://` selects psycopg2",
    )
    redis_url: str = _doc(
        "redis://127.0.0.1:6379/0",
        "sessions, cache, gate, outbox; may carry an ACL user and password (with `sentinel` it gives only the "
        "database and credentials, with `cluster` only the credentials)",
    )
    celery_broker_url: str = _doc(
        "",
        "Celery broker; on `amqp://…` (RabbitMQ) the queue is a quorum queue",
        shown="`REDIS_URL`; with `sentinel` or `cluster` `amqp://guest:guest@127.0.0.1:5672//`",
    )
    celery_queue: str = _doc(
        "flashdeal", "the Celery queue of every flashdeal task (tests and benchmarks pick their own)"
    )
    redis_topology: Topology = _env(
        "FLASHDEAL_REDIS_TOPOLOGY",
        "single",
        "`single`: one Redis at `REDIS_URL`; `sentinel`: the primary Redis Sentinel names; `cluster`: a Redis "
        "Cluster (docs/topologies.md)",
    )
    redis_sentinels: Hosts = _doc(
        (),
        "`host:port,…` of the sentinels (topology `sentinel`)",
        shown="with `sentinel`: `127.0.0.1:26391,127.0.0.1:26392,127.0.0.1:26393` (those of `make up`)",
    )
    redis_sentinel_master: str = _doc("flashdeal", "the master name the sentinels watch")
    redis_cluster_nodes: Hosts = _doc(
        (),
        "`host:port,…` of cluster nodes to start from (any one that answers will do); set, `make up` uses that "
        "cluster and starts none",
        shown="with `cluster`: `127.0.0.1:7001,…,127.0.0.1:7006`",
    )
    order_ack_replicas: NonNegative | None = _doc(
        None,
        "replicas that must hold an admission, cancel or payment decision before it is answered (`WAIT`); "
        "`0` sends no `WAIT`",
        shown="`1` with `sentinel` or `cluster`, else `0`",
    )
    # Positive: WAIT with 0 would block for ever.
    order_ack_timeout_ms: Positive = _doc(
        250, "the longest `WAIT`; past it the answer is marked `Flashdeal-Replication: unconfirmed`"
    )
    secret_key: str = _doc(
        DEV_SECRET, "must be set (at least 24 characters) outside development", shown="a dev value", repr=False
    )
    key_prefix: str = _env(
        "FLASHDEAL_KEY_PREFIX", "fd:", "prefix of every Redis key (keeps tests and benchmarks apart)"
    )
    session_idle_seconds: Positive = _doc(
        1800, "idle timeout, enforced on the server (Redis TTL and a check per request)"
    )
    session_absolute_seconds: Positive = _doc(86400, "absolute session lifetime")
    session_refresh_seconds: NonNegative = _doc(
        60, "the idle deadline is pushed forward at most this often (saves a session write per request)"
    )
    session_cookie_secure: bool = _doc(False, "set the session cookie's `Secure` flag (behind TLS)")
    order_token_seconds: Annotated[int, Field(ge=10, le=900)] = _doc(
        300,
        "lifetime of the order token (docs/order-token.md): how long a logout may take to reach the order path",
    )
    ratelimit_enabled: bool = _doc(True, "`false` turns rate limits off (benchmarks; or when the LB limits instead)")
    fast_path: bool = _doc(
        True, "plain order attempts and deal reads skip Flask's request cycle (docs/architecture.md)"
    )
    ratelimit_order: str = _doc("30/second;600/minute", "order attempts per logged-in user")
    ratelimit_order_ip: str = _doc("2000/second", "order attempts per client IP")
    ratelimit_login: str = _doc(
        "5/minute;20/hour;100/day", "failed logins per (account, client IP) pair, with back-off (docs/security.md)"
    )
    ratelimit_login_ip: str = _doc("100/minute", "login attempts per client IP")
    ratelimit_login_account: str = _doc(
        "100/hour", "failed logins per account from devices it was never used on (docs/security.md)"
    )
    ratelimit_signup_ip: str = _doc(
        "10/minute;100/hour", "signups per client IP, API and page together (each costs a 64 MiB argon2id hash)"
    )
    ratelimit_queue_join: str = _doc("5/second;60/minute", "waiting-room joins per account")
    ratelimit_queue_join_ip: str = _doc("50/second;1000/minute", "waiting-room joins per client address")
    queue_pass_seconds: Positive = _doc(
        120, "a queue pass unused this long expires; its live slot goes to the next buyer (docs/waiting-room.md)"
    )
    queue_poll_ms: Positive = _doc(3000, "how often the waiting page polls its status")
    queue_challenge_seconds: Positive = _doc(300, "a proof-of-work challenge is valid this long")
    trusted_proxies: NonNegative = _doc(
        0, "hops of `X-Forwarded-For` to trust (the LB); `make up` sets 1 for the web nodes"
    )
    deal_cache_ttl: Positive = _doc(5, "seconds a cached deal lives")
    deal_load_ahead_seconds: NonNegative = _doc(60, "beat loads a deal into Redis this long before it starts")
    deal_retire_after_seconds: NonNegative = _doc(
        60, "an ended, fully persisted deal leaves Redis this long after its end"
    )
    drain_batch_size: Positive = _doc(1000, "outbox entries per insert")
    drain_claim_idle_ms: Positive = _doc(
        10000, "entries a worker held this long without acknowledging them are claimed by another"
    )
    drain_kick_ms: Positive = _doc(100, "at most one drain task per deal per this interval from the web path")
    drain_budget_seconds: float = _doc(2.0, "time one drain task runs before it re-queues itself", gt=0)
    dlq_max_attempts: Positive = _doc(3, "tries of a refused row before it is dead-lettered")
    expiry_sweep_batch: Positive = _doc(500, "unpaid orders expired per script call of the sweep")
    worker_metrics_port: Port = _doc(0, "a worker node's Prometheus port (the Procfile uses 9101, 9102); 0: no server")
    worker_metrics_addr: str = _doc("127.0.0.1", "the address of that Prometheus server")
    # prometheus_client reads this variable from os.environ itself (at import); our code reads it from here.
    prometheus_multiproc_dir: str = _doc(
        "", "multiprocess metrics files of one instance (`scripts/proc` gives each its own)"
    )
    debug: bool = _env(
        "FLASHDEAL_DEBUG", False, "the admin CLI shows the traceback of an unexpected error instead of one line"
    )
    payment_provider: PaymentProvider | None = _doc(
        None,
        "`dev` (built-in test provider; refused outside development) or `stripe`",
        shown="`dev` in development and test, `stripe` anywhere else",
    )
    payment_currency: str = _doc("eur", "ISO 4217 code of every deal's price, lower case as Stripe writes it")
    stripe_secret_key: str = _doc("", "`stripe`: the API key (without it `pay` answers 503)", repr=False)
    stripe_webhook_secret: str = _doc("", "`stripe`: the webhook endpoint's signing secret (`whsec_…`)", repr=False)
    stripe_api_base: str = _doc(
        "", "where the `stripe` package sends API calls (empty: its own default; tests point it at a local server)"
    )
    dev_webhook_url: str = _doc(
        "", "`dev`: where the dev checkout posts its signed events", shown="this web node's own port"
    )
    payment_timeout_seconds: float = _doc(
        4.0, "every call to the provider (and the dev provider's webhook delivery) gives up after this", gt=0, le=30
    )
    payment_max_retries: int = _doc(1, "retries of a provider call that failed on the network", ge=0, le=3)
    payment_max_concurrent: Positive = _doc(
        4,
        "provider calls one web process makes at once (half of the Procfile's 8 threads); one more waits at most "
        "a quarter second for a slot, then is answered 503 (orders keep their threads)",
    )
    payment_hold_seconds: Positive = _doc(
        120, "an unpaid order with an open payment is held past pay_by this long at most, until the provider was asked"
    )
    payment_check_ahead_seconds: NonNegative = _doc(
        10, "the check job asks the provider about open payments whose pay_by is this close, or past"
    )

    _KEEP_EMPTY: ClassVar[frozenset[str]] = frozenset({"env", "key_prefix"})
    _RATE_LIMITS: ClassVar[tuple[str, ...]] = (
        "ratelimit_order",
        "ratelimit_order_ip",
        "ratelimit_login",
        "ratelimit_login_ip",
        "ratelimit_login_account",
        "ratelimit_signup_ip",
        "ratelimit_queue_join",
        "ratelimit_queue_join_ip",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment; no .env file, no secrets directory."""
        return init_settings, env_settings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (``os.environ`` by default); ConfigError when invalid."""
        try:
            if env is None:
                return cls()
            return cls(_build_sources=((_MappingSource(cls, env),), {}))
        except ValidationError as exc:
            raise _config_error(exc) from None

    def with_(self, **changes: Any) -> Settings:
        """A validated copy with some fields changed (tests, benchmarks); ConfigError when invalid."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise ConfigError(f"no such setting: {', '.join(sorted(unknown))}")
        try:
            # By each field's validation name: FLASHDEAL_ENV for env, the field's own name for the others.
            values = {_validation_name(k): v for k, v in {**self.model_dump(), **changes}.items()}
            return type(self).model_validate(values)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @property
    def is_development(self) -> bool:
        """True for the development and test environments."""
        return self.env in {"development", "test"}

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: Any) -> Any:
        """An empty variable means the default (as ``VAR= cmd`` does in a shell)."""
        if value == "" and info.field_name not in cls._KEEP_EMPTY:
            return cls.model_fields[info.field_name].default
        return value

    @field_validator("redis_topology", "payment_provider", "payment_currency", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        return _sqlalchemy_url(value)

    @field_validator("redis_sentinels", "redis_cluster_nodes", mode="before")
    @classmethod
    def _hosts(cls, value: Any, info: Any) -> Any:
        return parse_hosts(value, env_name(info.field_name)) if isinstance(value, str) else value

    @field_validator("redis_sentinels", "redis_cluster_nodes")
    @classmethod
    def _host_ports(cls, value: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
        for host, port in value:
            if not host or not 1 <= port <= 65535:
                raise ValueError("must be host:port,host:port with ports in 1..65535")
        return value

    @field_validator(*_RATE_LIMITS)
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            if not parse_many(value):
                raise ValueError
        except ValueError:
            raise ValueError("must be a rate limit such as '10/minute' or '30/second;600/minute'") from None
        return value

    @field_validator("payment_currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not (len(value) == 3 and value.isalpha()):
            raise ValueError("must be a 3-letter ISO 4217 code")
        return value

    @model_validator(mode="after")
    def _defaults_and_topology(self) -> Settings:
        """Fill the defaults that depend on other settings (the topology's local nodes among them)."""
        from shared.redis.registry import TOPOLOGIES as CLASSES  # here: the topology classes import this module

        topology = CLASSES[self.redis_topology]
        # Why object.__setattr__: the model is frozen, and these defaults are known only once the fields they
        # follow are validated. This runs during validation, before anyone can see the object.
        for field, local in topology.local_nodes.items():
            if not getattr(self, field):
                object.__setattr__(self, field, parse_hosts(local, env_name(field)))
        if not self.celery_broker_url:
            object.__setattr__(self, "celery_broker_url", default_broker_url(self.redis_topology, self.redis_url))
        if self.order_ack_replicas is None:
            # A replica must hold an order before its 202 when there is one to hold it (section "Durability").
            object.__setattr__(self, "order_ack_replicas", 1 if topology.replicated else 0)
        if self.payment_provider is None:
            object.__setattr__(self, "payment_provider", "dev" if self.is_development else "stripe")
        return self

    def check(self) -> Settings:
        """Refuse settings that are unsafe outside development; returns self for chaining."""
        if not self.is_development and (not self.secret_key or self.secret_key == DEV_SECRET):
            raise ConfigError(
                f"SECRET_KEY must be set to a long random value when FLASHDEAL_ENV={self.env!r} "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if not self.is_development and len(self.secret_key) < 24:
            raise ConfigError("SECRET_KEY must be at least 24 characters outside development")
        if self.payment_provider == "dev" and not self.is_development:
            # The dev provider pays with a public test card number: outside development that is free goods.
            raise ConfigError(
                f"PAYMENT_PROVIDER=dev accepts test cards; set PAYMENT_PROVIDER=stripe when FLASHDEAL_ENV={self.env!r}"
            )
        return self


def default_of(field: str) -> Any:
    """A setting's default, for functions that take the setting as an argument: each default is written once, here."""
    return Settings.model_fields[field].default


def _validation_name(field: str) -> str:
    """The key a field is validated under: the variable ``_env`` gave it, else the field's own name."""
    info: FieldInfo | None = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else field


def env_name(field: str) -> str:
    """The environment variable a settings field is read from."""
    return _validation_name(field).upper()


def _config_error(exc: ValidationError) -> ConfigError:
    """One ConfigError naming each variable that is wrong: ``NAME must be ..., got 'value'``."""
    problems = []
    for err in exc.errors(include_url=False):
        if not err["loc"]:  # a rule across settings (model validator): its message names them
            problems.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        problems.append(f"{str(err['loc'][0]).upper()} {_reason(err)}, got {err['input']!r}")
    return ConfigError("; ".join(problems))


def _reason(err: Any) -> str:
    """pydantic's reason for one error, as the rest of flashdeal's messages say it."""
    ctx = err.get("ctx") or {}
    match err["type"]:
        case "int_parsing" | "int_type" | "int_from_float":
            return "must be an integer"
        case "float_parsing" | "float_type":
            return "must be a number"
        case "bool_parsing" | "bool_type":
            return "must be true or false (1/0, yes/no, on/off)"
        case "greater_than_equal":
            return f"must be at least {ctx['ge']}"
        case "greater_than":
            return f"must be greater than {ctx['gt']}"
        case "less_than_equal":
            return f"must be at most {ctx['le']}"
        case "literal_error":
            return f"must be one of {ctx['expected'].replace(' or ', ', ')}".replace("'", "")
        case "value_error":
            return str(ctx.get("error", err["msg"]))
        case _:
            return str(err["msg"]).lower()


def parse_hosts(raw: str, name: str) -> tuple[tuple[str, int], ...]:
    """Parse a ``host:port,host:port`` list (``REDIS_SENTINELS``, ``REDIS_CLUSTER_NODES``)."""
    out = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"{name}: {part!r} is not host:port")
        out.append((host, int(port)))
    return tuple(out)


def default_broker_url(topology: str, redis_url: str) -> str:
    """The Celery broker when ``CELERY_BROKER_URL`` is unset: the flashdeal Redis, or RabbitMQ with replicas.

    Why not kombu's Redis-Sentinel transport with Sentinel: in our failover test a worker on it
    stopped for good after the primary's death in 1 run of 13
    (docs/decisions/0001-rabbitmq-broker-on-ha-topologies.md); on RabbitMQ it never did.
    ``sentinel_broker_url`` builds the transport's URL for
    whoever sets it explicitly. With a cluster there is no choice: kombu has no Redis Cluster
    transport (celery#2852).
    """
    from shared.redis.registry import is_replicated  # here: the topology classes import this module

    return DEFAULT_AMQP_URL if is_replicated(topology) else redis_url


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
