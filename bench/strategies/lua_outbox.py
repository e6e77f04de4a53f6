"""(4) Ours: the Lua gate with the outbox in the same script, drained in batches by ``flashdeal.drain_deal``."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from bench.strategies.base import Deps, Strategy, order_id
from shared.gate import Admission
from shared.settings import Settings
from web.kick import DrainKicks

Kick = Callable[[int], None]


@cache
def _kicks() -> DrainKicks:
    """The web node's kick sender, for the settings of this client process's environment."""
    return DrainKicks(Settings.from_env())


def kick_drain(deal_id: int) -> None:
    """The web node's kick: one drain task per kick interval per deal (the product's own code)."""
    _kicks().send(deal_id)


class LuaOutbox(Strategy):
    """``Gate.admit`` exactly as the order endpoint calls it; persistence is the workers' batch drain."""

    key = "lua_outbox"
    label = "(4) Lua gate + outbox + batch drain"
    stock_in_gate = True

    def __init__(self, deps: Deps, deal_id: int, kick: Kick = kick_drain) -> None:
        super().__init__(deps, deal_id)
        self.kick = kick

    def order(self, user_id: int, quantity: int = 1) -> bool:
        """Admit (decrement + XADD in one script); send a drain task only when the script says one is due."""
        res = self.deps.gate.admit(self.deal_id, user_id, quantity, order_id())
        if res.outcome is not Admission.ACCEPTED:
            return False
        if res.kick:
            self.kick(self.deal_id)
        return True
