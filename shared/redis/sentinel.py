"""``sentinel``: the primary Redis Sentinel names for ``REDIS_SENTINEL_MASTER``, followed through failovers.

redis-py's ``SentinelConnectionPool`` asks the sentinels on every (re)connect, so each client, and each
DirectCalls connection made from its pool, follows the primary through a failover. On the client side
(DirectCalls' route, health checks) it is one server, as ``single``: those methods are inherited.
"""

from __future__ import annotations

from typing import Any

from redis.sentinel import Sentinel

from shared.redis.base import Client, client_options, credentials, url_db
from shared.redis.single import SingleRedis

# The sentinels ``FLASHDEAL_REDIS_TOPOLOGY=sentinel make up`` starts (scripts/local_redis/sentinel.py), watching the
# primary on 127.0.0.1:6391 as master ``flashdeal``: the CLI in a second terminal finds them without variables.
LOCAL_SENTINELS = ",".join(f"127.0.0.1:{port}" for port in (26391, 26392, 26393))
# Timeouts for asking the sentinels only.
SENTINEL_TIMEOUTS = {"socket_connect_timeout": 1, "socket_timeout": 1}


class SentinelRedis(SingleRedis):
    """A primary and replicas watched by Redis Sentinel (``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``)."""

    name = "sentinel"
    replicated = True
    local_nodes = {"redis_sentinels": LOCAL_SENTINELS}

    def connect(self, **options: Any) -> Client:
        """``Sentinel(...).master_for(master)``; REDIS_URL still gives the database and the primary's credentials."""
        s = self.settings
        # sentinel_kwargs: given as plain kwargs these timeouts would apply to the primary's connections too,
        # and cut a WAIT or a slow command short.
        sentinel = Sentinel(list(s.redis_sentinels), sentinel_kwargs=dict(SENTINEL_TIMEOUTS))
        return sentinel.master_for(s.redis_sentinel_master, db=url_db(s), **credentials(s), **client_options(**options))

    def limits_storage_uri(self) -> str:
        """``redis+sentinel://h:p,h:p/master``."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.settings.redis_sentinels)
        return f"redis+sentinel://{hosts}/{self.settings.redis_sentinel_master}"

    def limits_storage_options(self) -> dict[str, Any]:
        """Counters read from the primary, as they are written; credentials for the primary alone.

        Why the credentials here and not in the URI: ``limits`` reads a URI's user and password without
        decoding them (a ``%40`` stays three characters), and would also send them to the sentinels,
        which ``connect`` never does.
        """
        auth = {k: v for k, v in credentials(self.settings).items() if v is not None}
        sentinels = {"username": None, "password": None, **SENTINEL_TIMEOUTS}
        return {
            "use_replicas": False,
            "db": url_db(self.settings),
            "socket_connect_timeout": 2,
            "sentinel_kwargs": sentinels,
            **auth,
        }

    def celery_result_backend(self) -> str:
        """Celery's Redis backend through the sentinels (REDIS_URL's database)."""
        db = url_db(self.settings)
        return ";".join(f"sentinel://{h}:{p}/{db}" for h, p in self.settings.redis_sentinels)

    def celery_result_backend_options(self) -> dict[str, Any]:
        """The master name the backend asks the sentinels for."""
        return {"master_name": self.settings.redis_sentinel_master}
