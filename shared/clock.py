"""Time as the gate counts it: milliseconds since the epoch, the conversions to aware datetimes, Redis's clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

# Why a script and not TIME: TIME names no key, so a cluster pipeline cannot route it (redis-py refuses
# it there), and a cluster transaction must stay on one slot's node. A script given a key of that slot
# reads the clock of the same node, inside the same MULTI on every topology. Lua numbers are doubles:
# milliseconds since the epoch are exact in them.
CLOCK_LUA = "local t = redis.call('TIME') return t[1] * 1000 + math.floor(t[2] / 1000)"


def now_ms() -> int:
    """Wall clock in milliseconds."""
    return int(time.time() * 1000)


def ms_to_dt(ms: int) -> datetime:
    """Milliseconds since the epoch to an aware datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def dt_to_ms(dt: datetime) -> int:
    """Aware datetime to milliseconds since the epoch."""
    return int(dt.timestamp() * 1000)


def server_ms(pipe: Any, key: str) -> Any:
    """Queue (in MULTI) or run (after WATCH) a read of the clock of ``key``'s node; the reply is its time in ms."""
    return pipe.execute_command("EVAL", CLOCK_LUA, 1, key)
