"""Time as the gate counts it: milliseconds since the epoch, and the conversions to aware datetimes."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """Wall clock in milliseconds."""
    return int(time.time() * 1000)


def ms_to_dt(ms: int) -> datetime:
    """Milliseconds since the epoch to an aware datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def dt_to_ms(dt: datetime) -> int:
    """Aware datetime to milliseconds since the epoch."""
    return int(dt.timestamp() * 1000)
