"""Every Redis client of flashdeal, built from settings for the configured topology.

One class per topology (``single.py``, ``sentinel.py``, ``cluster.py``) behind one interface
(``base.py``), chosen by name in ``registry.py``; the hot paths' connection in ``direct.py`` (and its
cluster route in ``cluster_router.py``, over redis-py's slot map in ``cluster_slots.py``); health and
readiness in ``health.py``. The functions below are what the rest of flashdeal calls.
"""

from __future__ import annotations

from typing import Any

from shared.redis.base import Client, credentials
from shared.redis.direct import DirectCalls
from shared.redis.errors import UNAVAILABLE_REPLIES, PrimaryUnavailable, is_unavailable_reply
from shared.redis.health import eviction_problem, readiness, refuse_evicting_redis, server_policy
from shared.redis.registry import topology_for
from shared.settings import Settings

__all__ = [
    "UNAVAILABLE_REPLIES",
    "Client",
    "DirectCalls",
    "PrimaryUnavailable",
    "bytes_client",
    "celery_result_backend",
    "celery_result_backend_options",
    "credentials",
    "eviction_problem",
    "is_unavailable_reply",
    "limits_storage_options",
    "limits_storage_uri",
    "readiness",
    "refuse_evicting_redis",
    "server_policy",
    "text_client",
    "topology_for",
]


def text_client(settings: Settings, **options: Any) -> Client:
    """Client that decodes replies to str: gate, cache, outbox (``options`` are redis-py's)."""
    return topology_for(settings).text_client(**options)


def bytes_client(settings: Settings) -> Client:
    """Client that returns bytes: Flask-Session stores msgpack blobs."""
    return topology_for(settings).bytes_client()


def limits_storage_uri(settings: Settings) -> str:
    """Flask-Limiter's storage URI (the ``limits`` library) for the same Redis; credentials go in the options."""
    return topology_for(settings).limits_storage_uri()


def limits_storage_options(settings: Settings) -> dict[str, Any]:
    """Options of that storage (with Sentinel, counters are read from the primary, as they are written)."""
    return topology_for(settings).limits_storage_options()


def celery_result_backend(settings: Settings) -> str:
    """Celery's result backend: the flashdeal Redis (through the sentinels; ``rpc://`` on a cluster)."""
    return topology_for(settings).celery_result_backend()


def celery_result_backend_options(settings: Settings) -> dict[str, Any]:
    """Transport options of that backend (the master name with Sentinel)."""
    return topology_for(settings).celery_result_backend_options()
