"""The Redis server's clock in milliseconds, read on the node that holds a given key."""

from __future__ import annotations

from typing import Any

# Why a script and not TIME: TIME names no key, so a cluster pipeline cannot route it (redis-py refuses
# it there), and a cluster transaction must stay on one slot's node. A script given a key of that slot
# reads the clock of the same node, inside the same MULTI on every topology. Lua numbers are doubles:
# milliseconds since the epoch are exact in them.
CLOCK_LUA = "local t = redis.call('TIME') return t[1] * 1000 + math.floor(t[2] / 1000)"


def server_ms(pipe: Any, key: str) -> Any:
    """Queue (in MULTI) or run (after WATCH) a read of the clock of ``key``'s node; the reply is its time in ms."""
    return pipe.execute_command("EVAL", CLOCK_LUA, 1, key)
