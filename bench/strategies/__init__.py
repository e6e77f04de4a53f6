"""Four admission strategies side by side; the baselines (1)-(3) exist only here, never in the product path."""

from __future__ import annotations

from bench.strategies.base import Deps, Strategy
from bench.strategies.lua_celery import LuaCelery
from bench.strategies.lua_outbox import LuaOutbox
from bench.strategies.pessimistic import Pessimistic
from bench.strategies.redis_lock import RedisLock

# In the order of the report: (1) is the baseline every ratio is taken against.
STRATEGIES: dict[str, type[Strategy]] = {
    Pessimistic.key: Pessimistic,
    RedisLock.key: RedisLock,
    LuaCelery.key: LuaCelery,
    LuaOutbox.key: LuaOutbox,
}

__all__ = ["STRATEGIES", "Deps", "Strategy"]
