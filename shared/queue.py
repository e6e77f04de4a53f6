"""The waiting room in front of a deal's gate: its rules, and the wrapper of ``shared/lua/queue.lua``.

Redis holds the line, the live passes and the counters under the deal's hash tag (shared/keys.py), so
one script call joins, polls or runs the inlet atomically, on any topology. No Flask, no Celery.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import redis

from shared.keys import Keys
from shared.lua_scripts import lua_source
from shared.redis import DirectCalls

FIFO_BASE = 2**50  # pre-queue scores are drawn below it, later joins counted above it (shared/lua/queue.lua)
DEFAULT_OPENS_BEFORE_SECONDS = 900
LIVE_PASS_SECONDS_OF_RATE = 60  # default bound on live passes: a minute of admissions


@dataclass(frozen=True)
class QueueRules:
    """A deal's waiting room as an admin set it."""

    rate: int  # buyers let in per second
    opens_before_seconds: int = DEFAULT_OPENS_BEFORE_SECONDS  # how long before the start buyers may join
    pow_bits: int = 0  # proof-of-work difficulty (leading zero bits); 0: none
    max_live_passes: int | None = None  # bound on passes given and not yet used or expired; None: the default
    paused: bool = False

    @property
    def cap(self) -> int:
        """The bound on live passes."""
        return self.max_live_passes or max(1, self.rate * LIVE_PASS_SECONDS_OF_RATE)

    def spec(self, open_ms: int) -> str:
        """The rules as ``shared/lua/load_deal.lua`` takes them: 'rate|cap|joins open ms|pow bits|paused'."""
        opens_ms = max(0, open_ms - self.opens_before_seconds * 1000)
        return f"{self.rate}|{self.cap}|{opens_ms}|{self.pow_bits}|{1 if self.paused else 0}"


@dataclass(frozen=True)
class QueueView:
    """One buyer's place in a deal's waiting room, as the script answered."""

    state: str  # waiting | admitted | expired | not_joined | sold_out | closed | no_queue | queue_not_open
    ahead: int | None  # buyers in front (None: unknown, or before the start when the order is not drawn yet)
    pass_expires_ms: int  # the pass's expiry when admitted, else 0
    now_ms: int
    open_ms: int
    rate: int = 0
    paused: bool = False
    let_in: int = 0  # buyers the inlet let in during this call
    pow_bits: int = 0  # the deal's proof-of-work difficulty


@dataclass(frozen=True)
class QueueStats:
    """A queued deal's waiting room for operators (the ``queue`` object of the stats)."""

    waiting: int
    admitted: int
    passes_live: int
    passes_used: int
    passes_expired: int
    rate: int
    paused: bool
    max_live_passes: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


def leading_zero_bits(digest: bytes) -> int:
    """How many bits at the start of ``digest`` are zero."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def proof_bits(challenge: str, nonce: str) -> int:
    """How many zero bits sha256(challenge + nonce) starts with (hashcash)."""
    return leading_zero_bits(hashlib.sha256((challenge + nonce).encode()).digest())


def pow_solved(challenge: str, nonce: str, bits: int) -> bool:
    """True when sha256(challenge + nonce) starts with ``bits`` zero bits."""
    return proof_bits(challenge, nonce) >= bits


def solve_pow(challenge: str, bits: int) -> str:
    """A nonce that solves the challenge (what the page's JavaScript does; tests and API clients use it)."""
    n = 0
    while not pow_solved(challenge, str(n), bits):
        n += 1
    return str(n)


class QueueGate:
    """Join, status, inlet and operator controls of deals' waiting rooms on one Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, pass_ms: int, direct: DirectCalls | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.pass_ms = pass_ms
        self._script = client.register_script(lua_source("queue"))
        # Every waiting buyer polls: the per-thread connection of the hot paths, not redis-py's pool
        # (measured here: ~270 against ~930 us a poll's script call on the loaded 2-core box).
        self.direct = direct or DirectCalls(client)

    def _run(self, op: str, deal_id: int, user_id: int | str, score: int = 0, proof_bits: int = 0) -> list[Any]:
        # Safe to send twice (DirectCalls retries a dropped connection once): a join finds its place taken
        # (ZADD NX, the counter drawn only for a buyer not in the line), and an inlet step is counted by time.
        args = [op, user_id, score, self.pass_ms, proof_bits]
        return self.direct.scripts((self._script, self.keys.deal(deal_id).queue_keys(), args))[0]

    def join(self, deal_id: int, user_id: int, proof_bits: int = 0) -> QueueView:
        """Take a place in the line (the same place again for a buyer already in it).

        ``proof_bits``: the leading zero bits of the buyer's proof of work (a verified challenge of ours); the
        script compares them with the deal's difficulty, so a join is one round trip.
        """
        # Why the score is drawn here: the OS's random source is unpredictable to bots, whatever seed a Redis
        # version gives a script's math.random. A uniform draw per buyer, independent of arrival time, makes
        # the pre-queue a uniformly random order.
        return _view(self._run("join", deal_id, user_id, secrets.randbelow(FIFO_BASE), proof_bits))

    def status(self, deal_id: int, user_id: int) -> QueueView:
        """The buyer's state and place (runs the inlet first)."""
        return _view(self._run("status", deal_id, user_id))

    def inlet(self, deal_id: int) -> int:
        """Run the inlet alone; how many buyers it let in."""
        return int(self._run("inlet", deal_id, "")[5])

    def pow_bits(self, deal_id: int) -> int | None:
        """The deal's proof-of-work difficulty; None when it has no waiting room in Redis."""
        bits = self.redis.hget(self.keys.deal(deal_id).queue, "pow")
        return None if bits is None else int(bits)


def queue_stats(client: redis.Redis, keys: Keys, deal_id: int, now_ms: int) -> QueueStats | None:
    """Counters of a deal's waiting room, one snapshot, read only (None when it has none in Redis).

    Passes past their expiry are counted expired here even before an inlet run has moved them.
    """
    k = keys.deal(deal_id)
    pipe = client.pipeline(transaction=True)
    pipe.hmget(k.queue, "rate", "paused", "admitted", "used", "expired", "cap")
    pipe.zcard(k.queue_line)
    pipe.zcount(k.queue_passes, f"({now_ms}", "+inf")
    pipe.zcount(k.queue_passes, "-inf", now_ms)
    (rate, paused, admitted, used, expired, cap), waiting, live, lapsed = pipe.execute()
    if rate is None:
        return None
    return QueueStats(
        waiting=int(waiting),
        admitted=int(admitted or 0),
        passes_live=int(live),
        passes_used=int(used or 0),
        passes_expired=int(expired or 0) + int(lapsed),
        rate=int(rate),
        paused=paused == "1",
        max_live_passes=int(cap or 0),
    )


def _view(reply: list[Any]) -> QueueView:
    state, ahead, expires, now, open_ms = str(reply[0]), int(reply[1]), int(reply[2]), int(reply[3]), int(reply[4])
    # Before the start the pre-queue's order is not final (later joiners draw places anywhere in it).
    known = state == "waiting" and now >= open_ms
    rate, paused, let_in = int(reply[6]), bool(int(reply[7])), int(reply[5])
    return QueueView(state, ahead if known else None, expires, now, open_ms, rate, paused, let_in, int(reply[8]))
