"""The one wiring of settings to stores: database, Redis (text client), keys and gate, for every process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.db import Database
from shared.gate import Gate
from shared.keys import Keys
from shared.queue import QueueGate
from shared.redis import Client, text_client
from shared.settings import Settings


@dataclass(frozen=True)
class Stores:
    """What web nodes, workers, the CLI and the worker metrics talk to, built from one Settings."""

    settings: Settings
    db: Database
    redis: Client  # redis.Redis, or RedisCluster on a cluster
    keys: Keys
    gate: Gate
    queue: QueueGate  # the deals' waiting rooms

    def close(self) -> None:
        """Release pooled connections (database and Redis)."""
        self.db.engine.dispose()
        self.redis.close()


def build(settings: Settings, db_options: dict[str, Any] | None = None, **client_options: Any) -> Stores:
    """Create the stores; nothing connects until first use (on a cluster, RedisCluster reads the slot map at once).

    ``db_options`` go to SQLAlchemy's engine (pool sizes), ``client_options`` to redis-py's client; the
    Redis topology is decided in shared/redis/ alone.
    """
    client = text_client(settings, **client_options)
    gate = Gate.from_settings(client, settings)
    return Stores(
        settings=settings,
        db=Database(settings, **(db_options or {})),
        redis=client,
        keys=Keys(settings.key_prefix),
        gate=gate,
        queue=QueueGate(client, Keys(settings.key_prefix), settings.queue_pass_seconds * 1000, gate.direct),
    )
