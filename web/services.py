"""The per-process services a web node holds: settings, database, Redis, gate."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from flask import current_app

from shared.cache import LocalCopies
from shared.db import Database
from shared.gate import Gate
from shared.keys import Keys
from shared.redis_client import DirectCalls, text_client
from shared.settings import Settings


@dataclass
class Services:
    """Everything a request handler needs, built once in create_app."""

    settings: Settings
    db: Database
    redis: redis.Redis
    keys: Keys
    gate: Gate
    # Parsed deal lists by versioned cache key; a second at most, so a TTL rebuild shows within it.
    local: LocalCopies = field(default_factory=lambda: LocalCopies(seconds=1.0))

    @property
    def direct(self) -> DirectCalls:
        """The per-thread Redis connection of the hot paths (the gate's)."""
        return self.gate.direct

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Create clients; nothing connects until first use."""
        client = text_client(settings)
        keys = Keys(settings.key_prefix)
        return cls(settings, Database(settings), client, keys, Gate.from_settings(client, settings))


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["flashdeal"]
