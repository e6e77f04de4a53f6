"""The per-process services a web node holds: the stores (settings, database, Redis, gate) and its kicks."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from shared.cache import LocalCopies
from shared.redis import DirectCalls
from shared.settings import Settings
from shared.wiring import Stores, build
from web.kick import DrainKicks


@dataclass(frozen=True)
class Services(Stores):
    """Everything a request handler needs, built once in create_app."""

    kicks: DrainKicks
    # Parsed deal lists by versioned cache key; a second at most, so a TTL rebuild shows within it.
    local: LocalCopies = field(default_factory=lambda: LocalCopies(seconds=1.0))

    @property
    def direct(self) -> DirectCalls:
        """The per-thread Redis connection of the hot paths (the gate's)."""
        return self.gate.direct

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Create clients; nothing connects until first use (a cluster client reads the slot map at once)."""
        return cls(**vars(build(settings)), kicks=DrainKicks(settings))


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["flashdeal"]
