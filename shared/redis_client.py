"""Redis clients built from settings (text for the gate and cache, bytes for sessions)."""

from __future__ import annotations

import redis

from shared.settings import Settings


def text_client(settings: Settings) -> redis.Redis:
    """Client that decodes replies to str: gate, cache, outbox."""
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
        retry_on_timeout=True,
    )


def bytes_client(settings: Settings) -> redis.Redis:
    """Client that returns bytes: Flask-Session stores msgpack blobs."""
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30, socket_keepalive=True)
