"""The stock gate: wraps the Lua scripts in ``shared/lua/`` and turns their replies into typed results."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis

from shared.clock import dt_to_ms
from shared.keys import Keys
from shared.lua_scripts import lua_source
from shared.order_record import LiveOrder, parse_order_record
from shared.outbox_entry import CANCEL, parse_inflight_member
from shared.queue import QueueRules
from shared.redis import DirectCalls
from shared.settings import Settings, default_of


# The gate's scripts, shipped as package data of ``shared`` (shared/lua/*.lua), so an installed wheel has them.
class Admission(enum.StrEnum):
    """Outcome of one admission attempt."""

    ACCEPTED = "accepted"
    REPLAY = "replay"
    SOLD_OUT = "sold_out"
    LIMIT_EXCEEDED = "limit_exceeded"
    DEAL_NOT_OPEN = "deal_not_open"
    QUANTITY_ABOVE_LIMIT = "quantity_above_limit"
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"
    RATE_LIMITED = "rate_limited"
    QUEUE_PASS_REQUIRED = "queue_pass_required"  # a queued deal, and no valid pass for this buyer and deal


class Loaded(enum.IntEnum):
    """What loading a deal did to its stock (the reply of ``shared/lua/load_deal.lua``)."""

    SET = 1  # the stock was set now: a first load, or the whole deal rebuilt after Redis lost it
    LIVE = 0  # the stock was live: left as it is
    HELD = -1  # the stock is missing but order records or outbox entries are not: not rebuilt (drift)


class Cancellation(enum.StrEnum):
    """Outcome of one cancel attempt."""

    CANCELED = "canceled"
    ALREADY_CANCELED = "already_canceled"
    NOT_FOUND = "not_found"
    DEAL_NOT_OPEN = "deal_not_open"
    PAID = "paid"  # refused: a paid order is final
    EXPIRED = "expired"  # refused: its units already went back at pay_by


class Settlement(enum.StrEnum):
    """What shared/lua/settle.lua decided for one payment event."""

    PAID = "paid"
    REFUND = "refund"  # the money came for units no longer held (expired, canceled): give it back
    ALREADY_PAID = "already_paid"
    DECLINED = "declined"
    IGNORED = "ignored"
    NOT_FOUND = "not_found"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class AdmitResult:
    """Reply of the admission script."""

    outcome: Admission
    order_id: str
    kick: bool
    remaining: int  # -1 when the script did not read it, -2 when the deal is not loaded in the gate
    replicated: bool = True  # False when WAIT ended before the asked replicas had the order (Gate.ack_replicas)
    window: int = 0  # rate_limited: the index (0-based) in ``limits`` of the window over its amount
    retry_ms: int = 0  # rate_limited: time left in that window

    @property
    def deal_unknown(self) -> bool:
        """True when the gate holds no state for the deal (never loaded, or unloaded)."""
        return self.remaining == -2


@dataclass(frozen=True)
class CancelResult:
    """Reply of the cancel script."""

    outcome: Cancellation
    remaining: int
    kick: bool
    replicated: bool = True  # as AdmitResult.replicated


@dataclass(frozen=True)
class SettleResult:
    """Reply of the payment decision script for one event."""

    outcome: Settlement
    detail: str  # refund: why (expired, canceled, no_window); already_paid: the payment that paid it;
    #              duplicate: "outcome:detail" of the first delivery
    kick: bool
    replicated: bool = True  # as AdmitResult.replicated: False when WAIT timed out after the decision


@dataclass(frozen=True)
class CloseResult:
    """Reply of the script's 'close' mode: expired | closed (not due yet) | settled (detail: state) | not_found."""

    outcome: str
    detail: str
    kick: bool


@dataclass(frozen=True)
class OpenPayment:
    """An unpaid order whose payment the provider opened and the shop has not closed."""

    deal_id: int
    order_id: str
    pay_by_ms: int
    record: str  # the payments hash's value (shared.payments.Payment.from_record)


@dataclass(frozen=True)
class SweepResult:
    """Reply of one expiry sweep call on a deal."""

    expired: int
    seen: int  # due entries looked at; equal to the batch means there may be more
    kick: bool


@dataclass(frozen=True)
class InflightEntry:
    """One of a buyer's outbox entries not yet persisted: the order's record, and whether the entry is its cancel."""

    order: LiveOrder
    cancel: bool


@dataclass(frozen=True)
class RetireVerdict:
    """Reply of the retire script: 'retired', 'ready' (check only), or why not yet (open/outbox/pending/unpaid)."""

    outcome: str
    count: int

    @property
    def done(self) -> bool:
        """True when the keys are gone (or, checking only, could go now)."""
        return self.outcome in ("retired", "ready")


@dataclass(frozen=True)
class DealRules:
    """What the gate needs to know about a deal."""

    deal_id: int
    status: str  # scheduled | open | ended
    open_ms: int
    close_ms: int
    cap: int  # the purchase cap: units one buyer may hold (per_user_limit; the field "limit" of the state hash)
    price: Decimal
    total: int
    title: str
    payment_window_ms: int = 0  # 0: no payment step
    queue: QueueRules | None = None  # the waiting room in front of the gate; None: no queue


@dataclass(frozen=True)
class LiveDeal:
    """A deal's live state in Redis: rules plus remaining stock."""

    rules: DealRules
    remaining: int

    def status_at(self, now_ms: int) -> str:
        """Buyer-facing status computed live: scheduled, open, sold_out or ended."""
        return buyer_status(self.rules.status, self.rules.open_ms, self.rules.close_ms, self.remaining, now_ms)


def buyer_status(gate_status: str, open_ms: int, close_ms: int, remaining: int, now_ms: int) -> str:
    """What buyers see, from the gate's status and window and the stock: the rule the gate itself applies."""
    if gate_status == "ended" or now_ms >= close_ms:
        return "ended"
    if now_ms < open_ms:
        return "scheduled"
    return "sold_out" if remaining <= 0 else "open"


class Gate:
    """Admission, cancel and deal loading on one Redis; scripts are registered once."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        kick_ms: int = default_of("drain_kick_ms"),
        ack_replicas: int = 0,
        ack_timeout_ms: int = default_of("order_ack_timeout_ms"),
        hold_ms: int = default_of("payment_hold_seconds") * 1000,
    ) -> None:
        self.redis = client
        self.hold_ms = hold_ms  # how long an order with an open payment is held past pay_by (shared/lua/settle.lua)
        self.keys = keys
        self.kick_ms = kick_ms
        # Durable acknowledgement: after each admission or cancel, WAIT for this many replicas.
        self.ack_replicas = ack_replicas
        self.ack_timeout_ms = ack_timeout_ms
        # register_script sends EVALSHA and falls back to EVAL on NOSCRIPT, so the gate keeps
        # working after SCRIPT FLUSH or a Redis restart.
        self._admit = client.register_script(lua_source("admit"))
        # Admission is the hot path: it goes straight to a per-thread connection (DirectCalls).
        self.direct = DirectCalls(client)
        self._cancel = client.register_script(lua_source("cancel"))
        self._load = client.register_script(lua_source("load_deal"))
        self._retire = client.register_script(lua_source("retire"))
        self._settle = client.register_script(lua_source("settle"))

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> Gate:
        """The gate as the settings configure it (kick interval, durable acknowledgement)."""
        return cls(client, Keys(settings.key_prefix), settings.drain_kick_ms, settings.order_ack_replicas,
                   settings.order_ack_timeout_ms, settings.payment_hold_seconds * 1000)  # fmt: skip

    def admit(
        self,
        deal_id: int,
        user_id: int,
        quantity: int,
        order_id: str,
        idem_key: str = "",
        limits: Sequence[tuple[str, int, int]] = (),
        queue_pass: bool = False,
    ) -> AdmitResult:
        """Run the admission script for one order attempt.

        ``limits``: the (who, amount, seconds) rate-limit windows it counts; ``queue_pass``: the order carries a
        queue pass whose signature the web node verified for this buyer and deal.
        """
        k = self.keys.deal(deal_id)
        keys = k.admit_keys()
        args: list[Any] = [user_id, quantity, order_id, idem_key, self.kick_ms, "1" if queue_pass else "0"]
        for who, amount, seconds in limits:
            keys.append(k.order_window(who, amount, seconds))
            args += (amount, seconds)
        # Safe to send twice (DirectCalls retries once on a dropped connection): the script answers an
        # order id it has already admitted as that first run did (accepted, with a kick). The WAIT follows
        # it too: the first run's write may be the one a replica has not got yet.
        (outcome, oid, kick, remaining, *over), acked = self.direct.script_then_wait(
            self._admit, keys, args, self.ack_replicas, self.ack_timeout_ms
        )
        replicated = acked >= self.ack_replicas or outcome not in (Admission.ACCEPTED, Admission.REPLAY)
        window, retry_ms = (int(over[0]) - 1, int(over[1])) if over else (0, 0)
        return AdmitResult(Admission(outcome), oid, bool(kick), int(remaining), replicated, window, retry_ms)

    def cancel(
        self, deal_id: int, order_id: str, user_id: int, *, admin: bool = False, force: bool = False
    ) -> CancelResult:
        """Run the cancel script; ``force`` skips the open-deal check (dropping a dead letter)."""
        k = self.keys.deal(deal_id)
        # Safe to send twice: a second run finds the order canceled and changes nothing.
        (outcome, remaining, kick), acked = self.direct.script_then_wait(
            self._cancel,
            k.gate_keys(),
            [order_id, user_id, "1" if admin else "0", self.kick_ms, "1" if force else "0"],
            self.ack_replicas,
            self.ack_timeout_ms,
        )
        replicated = acked >= self.ack_replicas or outcome not in (Cancellation.CANCELED, Cancellation.ALREADY_CANCELED)
        return CancelResult(Cancellation(outcome), int(remaining), bool(kick), replicated)

    def load(
        self,
        rules: DealRules,
        initial_stock: int,
        held: dict[int, int] | None = None,
        unpaid: list[LiveOrder] | None = None,
    ) -> Loaded:
        """Load rules; set the stock, the buyers' totals ``held`` and the ``unpaid`` orders' records and due
        entries only when Redis holds nothing of the sale."""
        k = self.keys.deal(rules.deal_id)
        pairs = [x for user, qty in sorted((held or {}).items()) if qty > 0 for x in (user, qty)]
        orders = [
            x
            for o in unpaid or []
            if o.pay_by is not None
            for x in (o.order_id, o.user_id, o.quantity, str(o.unit_price), dt_to_ms(o.admitted_at), dt_to_ms(o.pay_by))
        ]
        reply = self._load(
            keys=[k.state, k.stock, k.buyers, k.orders, k.outbox, k.loaded, k.due, k.queue],
            args=[
                rules.status,
                rules.open_ms,
                rules.close_ms,
                rules.cap,
                str(rules.price),
                rules.total,
                initial_stock,
                rules.title,
                rules.payment_window_ms,
                rules.queue.spec(rules.open_ms) if rules.queue is not None else "",
                len(pairs) // 2,
                *pairs,
                *orders,
            ],
        )
        self.redis.sadd(self.keys.live_deals, rules.deal_id)
        return Loaded(int(reply))

    def settle(self, deal_id: int, mode: str, order_id: str, event_id: str, payment_id: str = "") -> SettleResult:
        """Decide one payment event (``mode``: pay or decline) for an order, exactly once per event id."""
        # Durable acknowledgement as for admissions and cancels: the decision and its WAIT on one connection.
        # Safe to send twice (DirectCalls retries a dropped connection): a second run answers "duplicate".
        (outcome, detail, kick), acked = self.direct.script_then_wait(
            self._settle,
            self.keys.deal(deal_id).settle_keys(),
            [mode, order_id, event_id, payment_id, self.kick_ms, self.hold_ms],
            self.ack_replicas,
            self.ack_timeout_ms,
        )
        return SettleResult(Settlement(outcome), str(detail), bool(kick), acked >= self.ack_replicas)

    def expire_due(self, deal_id: int, batch: int = default_of("expiry_sweep_batch")) -> SweepResult:
        """Expire up to ``batch`` of the deal's orders that are past pay_by and unpaid (one atomic step)."""
        expired, seen, kick = self._settle(
            keys=self.keys.deal(deal_id).settle_keys(), args=["expire", batch, "", "", self.kick_ms, self.hold_ms]
        )
        return SweepResult(int(expired), int(seen), bool(kick))

    def close_payment(self, deal_id: int, order_id: str, payment_id: str) -> CloseResult:
        """The provider closed the order's payment: remember it, and expire the order if its deadline passed."""
        outcome, detail, kick = self._settle(
            keys=self.keys.deal(deal_id).settle_keys(),
            args=["close", order_id, "", payment_id, self.kick_ms, self.hold_ms],
        )
        return CloseResult(str(outcome), str(detail), bool(kick))

    def open_payments_due(self, deal_id: int, until_ms: int, max_rows: int) -> list[OpenPayment]:
        """Unpaid orders of the deal due by ``until_ms`` whose payment is open at the provider (not closed)."""
        k = self.keys.deal(deal_id)
        due = self.redis.zrangebyscore(k.due, "-inf", until_ms, start=0, num=max_rows, withscores=True)
        if not due:
            return []
        fields = [f for oid, _ in due for f in (oid, f"{oid}:closed")]
        recs = self.redis.hmget(k.payments, fields)
        out = []
        for i, (oid, score) in enumerate(due):
            rec, closed = recs[2 * i], recs[2 * i + 1]
            if rec and not closed:
                out.append(OpenPayment(deal_id, str(oid), int(score), str(rec)))
        return out

    def payment_of(self, deal_id: int, order_id: str) -> tuple[str | None, str | None]:
        """The order's recorded payment ("provider|payment id|checkout url") and when a card was last declined."""
        rec, declined = self.redis.hmget(self.keys.deal(deal_id).payments, [order_id, f"{order_id}:declined"])
        return rec, declined

    def record_payment(self, deal_id: int, order_id: str, record: str) -> str:
        """Remember the order's payment unless one is already recorded; returns the one that stays."""
        k = self.keys.deal(deal_id).payments
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(k, order_id, record)
        pipe.hget(k, order_id)
        return str(pipe.execute()[1])

    def set_window(self, deal_id: int, *, status: str, open_ms: int | None = None, close_ms: int | None = None) -> None:
        """Change a loaded deal's status or window (admin open/close); takes effect at once."""
        fields: dict[str, str | int] = {"status": status}
        if open_ms is not None:
            fields["open_ms"] = open_ms
        if close_ms is not None:
            fields["close_ms"] = close_ms
        self.redis.hset(self.keys.deal(deal_id).state, mapping=fields)

    def live(self, deal_id: int) -> LiveDeal | None:
        """Read a deal's rules and remaining stock from Redis, or None if not loaded."""
        k = self.keys.deal(deal_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(k.state)
        pipe.get(k.stock)
        state, stock = pipe.execute()
        if not state:
            return None
        return LiveDeal(_rules(deal_id, state), int(stock or 0))

    def remaining(self, deal_ids: list[int]) -> dict[int, int | None]:
        """Remaining stock of several deals in one round trip (None where not loaded)."""
        if not deal_ids:
            return {}
        # One MGET on one Redis (a list page is up to 100 deals, and each reply parsed is CPU on the
        # web node); on a cluster one GET per deal, each node's share in one round trip, all at once.
        replies = self.direct.get_many([self.keys.deal(d).stock for d in deal_ids])
        return {d: (int(v) if v is not None else None) for d, v in zip(deal_ids, replies, strict=True)}

    def live_deal_ids(self) -> list[int]:
        """Ids of deals whose gate is loaded."""
        return sorted(int(x) for x in self.redis.smembers(self.keys.live_deals))

    def find_order(self, order_id: str, deal_id: int) -> LiveOrder | None:
        """The gate's record of one order of one deal (None once the deal has retired, or if unknown)."""
        rec = self.redis.hget(self.keys.deal(deal_id).orders, order_id)
        return parse_order_record(order_id, deal_id, rec) if rec else None

    def inflight_of(self, user_id: int, deal_ids: list[int]) -> list[InflightEntry]:
        """A buyer's outbox entries not yet persisted, in the given deals: two round trips, whatever the outbox holds.

        Why a sorted set scored by buyer id, in the deal's slot: the admission script may only touch keys
        of its deal's hash slot (cluster), so a per-buyer key spanning deals cannot be written there;
        one index per deal, read by score, returns only this buyer's entries (O(log n) per deal).
        """
        if not deal_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for deal_id in deal_ids:
            pipe.zrangebyscore(self.keys.deal(deal_id).inflight, user_id, user_id)
        found = [(d, [parse_inflight_member(m) for m in ms]) for d, ms in zip(deal_ids, pipe.execute(), strict=True)]
        found = [(d, parts) for d, parts in found if parts]
        if not found:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for deal_id, parts in found:
            pipe.hmget(self.keys.deal(deal_id).orders, [oid for oid, _ in parts])
        out: list[InflightEntry] = []
        for (deal_id, parts), recs in zip(found, pipe.execute(), strict=True):
            for (oid, kind), rec in zip(parts, recs, strict=True):
                if rec:
                    out.append(InflightEntry(parse_order_record(oid, deal_id, rec), kind == CANCEL))
        return out

    def retire(self, deal_id: int, *, delete: bool) -> RetireVerdict:
        """Run ``retire.lua``: check (``delete=False``) or atomically re-check and delete a deal's gate keys."""
        k = self.keys.deal(deal_id)
        verdict, count = self._retire(keys=k.all_keys(), args=["1" if delete else "0"])
        return RetireVerdict(str(verdict), int(count))

    def unload(self, deal_id: int) -> None:
        """Forget a deal's gate at once, without checks (tests; ended deals leave through ``retire``)."""
        k = self.keys.deal(deal_id)
        self.redis.delete(*k.all_keys())
        self.redis.srem(self.keys.live_deals, deal_id)


def _rules(deal_id: int, state: dict[str, str]) -> DealRules:
    return DealRules(
        deal_id=deal_id,
        status=state["status"],
        open_ms=int(state["open_ms"]),
        close_ms=int(state["close_ms"]),
        cap=int(state["limit"]),
        price=Decimal(state["price"]),
        total=int(state["total"]),
        title=state.get("title", ""),
        payment_window_ms=int(state.get("pay_ms", 0)),
    )
