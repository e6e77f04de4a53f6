"""The drain kick: who sends the next drain task of a deal, decided by one short-lived flag per deal.

A Celery message per order would cost more than the admission itself, so an order does not ask for a
drain: the flag ``{deal:N}:kick`` does, once per interval. Its life, in order:

1. **set by a gate script** (``shared/lua/admit.lua``, ``cancel.lua``, ``settle.lua``: ``SET NX PX DRAIN_KICK_MS``,
   inside the script so it is atomic with the entry it announces). The request whose script set it
   sends one ``flashdeal.drain_deal`` (``web/kick.py``); the others send nothing.
2. **held by the drain task while it runs** (``hold_while_draining``): admissions queue no task for what it
   is about to drain anyway.
3. then one of:
   - **cleared before the drain's last look at the stream** (``clear``): once it is gone the next admission
     kicks again, and anything admitted before the clear is seen by that look;
   - **held for a booked follow-up look** (``book_follow_up``): a drain that found a trickle looks again one
     kick interval later instead of polling for a few entries at a time; at most one look is booked per
     deal (``{deal:N}:follow_up``);
   - **held while a retry is pending** (``hold_for_retry``) after a transient failure.

Every hold expires: if a task is lost, beat's ``flashdeal.drain_active`` (every second, SAFETY_NET_MS) takes
over and the next admission kicks again. A backlog (a full batch) brings one more node in, at most once
per kick interval (``claim_fan_out``: a flag of its own, since the kick flag is held by the draining task).
"""

from __future__ import annotations

from typing import Any

from shared.keys import DealKeys

# Beat drains every live deal every second: no drain flag needs to outlive that by much.
SAFETY_NET_MS = 1000


def hold_while_draining(redis: Any, dk: DealKeys, budget_seconds: float) -> None:
    """The running drain holds the flag for its budget (plus the safety net, as a task outlives its budget)."""
    redis.set(dk.kick, "draining", px=int(budget_seconds * 1000) + SAFETY_NET_MS)


def clear(redis: Any, dk: DealKeys) -> None:
    """Drop the flag before the drain's last look at the stream, so the next admission kicks again."""
    redis.delete(dk.kick)


def book_follow_up(redis: Any, dk: DealKeys) -> bool:
    """Hold the flag for a follow-up look; True when this call booked the look (send it), False if one is booked."""
    redis.set(dk.kick, "follow-up", px=SAFETY_NET_MS)
    return bool(redis.set(dk.follow_up, "1", nx=True, px=SAFETY_NET_MS))


def follow_up_started(redis: Any, dk: DealKeys) -> None:
    """The booked look is running: the next one may be booked from now on."""
    redis.delete(dk.follow_up)


def hold_for_retry(redis: Any, dk: DealKeys, retry_in_seconds: float) -> None:
    """While a retry is pending, web nodes queue no task of their own."""
    redis.set(dk.kick, "retry", px=int(1000 * retry_in_seconds))


def claim_fan_out(redis: Any, dk: DealKeys, kick_ms: int) -> bool:
    """True for the one caller per kick interval that may bring one more node into a backlog."""
    return bool(redis.set(dk.fanout, "1", nx=True, px=kick_ms))
