"""``single``: one Redis at ``REDIS_URL`` (development, and any managed Redis with its own failover)."""

from __future__ import annotations

from typing import Any

import redis

from shared.redis.base import Client, RedisTopology, client_options
from shared.redis.direct import OneServer


class SingleRedis(RedisTopology):
    """One Redis server, reached by its URL."""

    name = "single"

    def connect(self, **options: Any) -> Client:
        """``redis.Redis.from_url(REDIS_URL)``."""
        return redis.Redis.from_url(self.settings.redis_url, **client_options(**options))

    def limits_storage_uri(self) -> str:
        """REDIS_URL itself (credentials included: ``limits`` reads them from it)."""
        return self.settings.redis_url

    def celery_result_backend(self) -> str:
        """With a Redis broker the results share it; any other broker keeps them in the flashdeal Redis."""
        broker = self.settings.celery_broker_url
        return broker if broker.startswith("redis") else self.settings.redis_url

    @classmethod
    def owns(cls, client: Client) -> bool:
        """Any ``redis.Redis``: one server behind it (a Sentinel client's too, which the subclass inherits)."""
        return isinstance(client, redis.Redis)

    @classmethod
    def route(cls, client: Client) -> OneServer:
        """One connection a thread."""
        return OneServer(client)  # type: ignore[arg-type]
