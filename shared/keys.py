"""Redis key builders: the only place key names are spelled.

Every key of one deal carries the hash tag ``{deal:N}`` so that one Lua script (or one MULTI)
touches one Redis Cluster slot (only the tag is hashed: the prefix does not move a deal to another slot).
Keys of different deals are in different slots: a read across deals is one command per deal,
which ``DirectCalls`` and RedisCluster's pipeline send to each node in one round trip. Keys of no
deal (sessions, rate-limit counters, the deal list's cache) spread over the slots by their own names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class DealKeys:
    """The keys of one deal, all in one cluster slot."""

    state: str  # hash: status, open_ms, close_ms, limit, price, total, title
    stock: str  # integer: remaining stock (the gate)
    buyers: str  # hash: user id -> quantity bought
    idem: str  # hash: "user:key" -> "order_id:quantity"
    orders: str  # hash: order id -> its order record (shared/order_record.py)
    outbox: str  # stream: orders and cancels waiting to be persisted
    kick: str  # short-lived flag: a drain task is already on its way
    inflight: str  # sorted set: "order_id|t" of each outbox entry not yet persisted, scored by the buyer's id
    follow_up: str  # short-lived flag: a drain task is scheduled to look again one kick interval later
    fanout: str  # short-lived flag: a draining worker already asked for one more node
    due: str  # sorted set: unpaid order id -> its pay_by (ms); the expiry sweep reads it
    payments: str  # hash: order id -> the provider's payment ("provider|payment id|checkout url"), and
    #                "order id:paid" -> the payment that paid it, "order id:declined" -> when a card was declined
    events: str  # hash: payment event id -> the decision it led to (webhook events de-duplicated)
    loaded: str  # hash: when the stock was last set by shared/lua/load_deal.lua, and what PostgreSQL held then
    rate: str  # prefix of the order rate-limit counters (``order_window``), counted by shared/lua/admit.lua
    queue: str  # hash: the waiting room's rules (rate, cap, pass_ms, paused, opens_ms) and counters (shared/queue.py)
    queue_line: str  # sorted set: user id -> place (pre-queue: random below QUEUE_FIFO_BASE; then FIFO above it)
    queue_passes: str  # sorted set: user id -> expiry (ms) of each live pass: let in, not yet used, not expired
    queue_admitted: str  # hash: user id -> expiry (ms) of the pass the buyer was given (every buyer let in)

    def order_window(self, who: str, amount: int, seconds: int) -> str:
        """Counter of one order rate-limit window (``who``: ``user:ID`` or ``ip:ADDR``) in this deal's slot.

        Why in the deal's slot: the admission script counts it, so a cluster needs it next to the gate's keys.
        """
        return f"{self.rate}{who}:{amount}/{seconds}"

    def gate_keys(self) -> list[str]:
        """KEYS for the admission and cancel scripts, in the order the scripts expect."""
        return [
            self.state,
            self.stock,
            self.buyers,
            self.idem,
            self.orders,
            self.outbox,
            self.kick,
            self.inflight,
            self.due,
        ]

    def admit_keys(self) -> list[str]:
        """KEYS for the admission script: the gate's, then the waiting room's (its pass check marks a pass used)."""
        return [*self.gate_keys(), self.queue, self.queue_passes]

    def queue_keys(self) -> list[str]:
        """KEYS for the waiting room script (shared/lua/queue.lua), in the order it expects."""
        return [self.state, self.stock, self.queue, self.queue_line, self.queue_passes, self.queue_admitted]

    def settle_keys(self) -> list[str]:
        """KEYS for the payment decision script (shared/lua/settle.lua), in the order it expects."""
        return [
            self.stock,
            self.buyers,
            self.orders,
            self.outbox,
            self.kick,
            self.due,
            self.events,
            self.payments,
            self.inflight,
        ]

    def all_keys(self) -> list[str]:
        """Every key the deal may have in Redis (what retiring or unloading it deletes)."""
        return [
            *self.gate_keys(),
            self.follow_up,
            self.fanout,
            self.payments,
            self.events,
            self.loaded,
            self.queue,
            self.queue_line,
            self.queue_passes,
            self.queue_admitted,
        ]


class Keys:
    """Key builder bound to a prefix (tests use their own prefix)."""

    def __init__(self, prefix: str = "fd:") -> None:
        self.prefix = prefix
        # Every order and every deal read needs a deal's keys; building nine strings each time
        # showed up in profiles. Bounded: any id in a URL reaches here.
        self.deal = functools.lru_cache(maxsize=4096)(self._deal)

    def _deal(self, deal_id: int) -> DealKeys:
        """All the gate keys of one deal (``deal``: the same, memoized)."""
        tag = f"{self.prefix}{{deal:{int(deal_id)}}}"
        return DealKeys(
            state=f"{tag}:state",
            stock=f"{tag}:stock",
            buyers=f"{tag}:buyers",
            idem=f"{tag}:idem",
            orders=f"{tag}:orders",
            outbox=f"{tag}:outbox",
            kick=f"{tag}:kick",
            inflight=f"{tag}:inflight",
            follow_up=f"{tag}:follow-up",
            fanout=f"{tag}:fanout",
            due=f"{tag}:due",
            payments=f"{tag}:payments",
            events=f"{tag}:events",
            loaded=f"{tag}:loaded",
            rate=f"{tag}:rate:",
            queue=f"{tag}:queue",
            queue_line=f"{tag}:queue:line",
            queue_passes=f"{tag}:queue:passes",
            queue_admitted=f"{tag}:queue:admitted",
        )

    @property
    def live_deals(self) -> str:
        """Set of deal ids whose gate is loaded in Redis."""
        return f"{self.prefix}deals:live"

    @property
    def session_prefix(self) -> str:
        """Prefix of Flask-Session records."""
        return f"{self.prefix}session:"

    @property
    def ratelimit_prefix(self) -> str:
        """Prefix of Flask-Limiter counters."""
        return f"{self.prefix}rl"

    def deal_cache(self, deal_id: int) -> str:
        """Cached JSON of one deal's static fields, in the deal's slot (its rebuild lock too)."""
        # Why the deal's hash tag: a deal's page reads this key with the deal's state and stock in one
        # pipeline (web/deals.py), and on a cluster one slot means one node, one round trip.
        return f"{self.prefix}{{deal:{int(deal_id)}}}:cache"

    @property
    def deal_list_version(self) -> str:
        """Counter bumped whenever any deal changes; part of every list cache key."""
        return f"{self.prefix}cache:deals:ver"

    def deal_list_cache(self, version: int) -> str:
        """Cached JSON of the deal list (static fields; filtering and paging happen per request)."""
        return f"{self.prefix}cache:deals:{version}"

    def cache_lock(self, key: str) -> str:
        """Rebuild lock for a cache key (one rebuild, not a stampede)."""
        return f"{key}:lock"

    @property
    def drain_group(self) -> str:
        """Consumer group name of the persistence workers."""
        return "persisters"
