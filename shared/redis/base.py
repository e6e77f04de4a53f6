"""The interface every Redis topology implements: how clients find their server, and what else follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias
from urllib.parse import unquote, urlparse

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from shared.settings import Settings

if TYPE_CHECKING:
    from shared.redis.direct import Route

# What every client is: one Redis (single, sentinel) or a cluster client (cluster).
Client: TypeAlias = "redis.Redis | RedisCluster"


@dataclass(frozen=True)
class Node:
    """One server a health check asks: ``options`` aim a command at it (empty: the client's own server)."""

    name: str  # "" for the one server of a single client
    role: str  # "primary" or "replica"
    options: dict[str, Any] = field(default_factory=dict)
    # True on a cluster: a node that does not answer is a shard failing over, not a Redis that is gone.
    may_be_down: bool = False


def client_options(**options: Any) -> dict[str, Any]:
    """redis-py options of every flashdeal client (``options`` override them)."""
    return {
        "health_check_interval": 30,
        "socket_keepalive": True,
        "socket_connect_timeout": 2,
        # Why a read timeout: without one a frozen node (a partition, a host that stopped answering) holds
        # every thread that asked it until TCP gives up (hours), and a web node runs out of threads for the
        # healthy shards too. 5 s is far above any command of ours (WAIT is bounded by ORDER_ACK_TIMEOUT_MS).
        "socket_timeout": 5,
        # Why short: redis-py's default (3 tries, backoff from 1 s up to 10 s) holds a buyer's request
        # for up to 7 s while a primary is down; 3 tries within ~0.4 s ride over a dropped connection, and
        # during a failover the buyer gets a quick 503 + Retry-After instead (workers retry their tasks).
        "retry": Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.05), 3),
        **options,
    }


def credentials(settings: Settings) -> dict[str, str | None]:
    """REDIS_URL's ACL user and password (decoded), for the clients that do not take the URL itself."""
    url = urlparse(settings.redis_url)
    return {
        "username": unquote(url.username) if url.username else None,
        "password": unquote(url.password) if url.password else None,
    }


def url_db(settings: Settings) -> int:
    """The database number REDIS_URL names (0 when it names none)."""
    return int(urlparse(settings.redis_url).path.lstrip("/") or 0)


class RedisTopology(ABC):
    """One way of running Redis (``FLASHDEAL_REDIS_TOPOLOGY``): a subclass per topology, in the registry.

    The settings side (``connect`` and what follows from the settings) needs an instance; the client side
    (``owns``, ``route``, ``nodes``) is asked of the class for a client it made.
    """

    name: ClassVar[str]
    # True when the topology has replicas: an admission waits for one (WAIT) and the broker is RabbitMQ.
    replicated: ClassVar[bool] = False
    # The local nodes `make up` starts for this topology (settings field -> "host:port,..."), filled in by
    # Settings when the field is unset.
    local_nodes: ClassVar[dict[str, str]] = {}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def connect(self, **options: Any) -> Client:
        """A client of this topology's Redis (``options``: redis-py's, over client_options())."""

    def text_client(self, **options: Any) -> Client:
        """Client that decodes replies to str: gate, cache, outbox."""
        return self.connect(decode_responses=True, retry_on_timeout=True, **options)

    def bytes_client(self) -> Client:
        """Client that returns bytes: Flask-Session stores msgpack blobs."""
        return self.connect()

    @abstractmethod
    def limits_storage_uri(self) -> str:
        """Flask-Limiter's storage URI (the ``limits`` library) for the same Redis."""

    def limits_storage_options(self) -> dict[str, Any]:
        """Options of that storage (credentials go here, not in the URI: see the subclasses)."""
        return {}

    @abstractmethod
    def celery_result_backend(self) -> str:
        """Celery's result backend URL."""

    def celery_result_backend_options(self) -> dict[str, Any]:
        """Transport options of that backend."""
        return {}

    @classmethod
    @abstractmethod
    def owns(cls, client: Client) -> bool:
        """True when ``client`` was made by this topology."""

    @classmethod
    @abstractmethod
    def route(cls, client: Client) -> Route:
        """How DirectCalls sends commands on ``client``'s servers."""

    @classmethod
    def nodes(cls, client: Client) -> list[Node]:
        """The servers a health check asks: the client's own by default."""
        return [Node("", "primary")]
