"""The outbox drain: read a deal's stream through the consumer group, write one batch, commit, then ack."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.db import Database
from shared.keys import Keys
from shared.order_record import parse_order_record
from shared.outbox_entry import OutboxRow, Unparsable, inflight_member, parse_entry
from shared.redis_client import Client
from shared.settings import Settings
from worker.dlq import dead_letter_entry
from worker.outbox import is_transient, reason_of, write_rows
from worker.replica_wait import ReplicaWait

log = logging.getLogger(__name__)

Entries = list[tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class DrainOptions:
    """Knobs of one drain call."""

    batch_size: int = 1000
    claim_idle_ms: int = 10000
    max_attempts: int = 3
    budget_s: float = 2.0
    # Stop at a trickle (a batch that is not full) without clearing the kick flag, and let the caller
    # look again one kick interval later (``DrainResult.follow_up``), instead of polling the stream
    # for a few entries at a time: one transaction per interval, not per few orders.
    follow_up: bool = False
    # Replicas that must hold a batch's entries before it is committed (0: no check, the ``single`` topology),
    # and how long one WAIT may block. The same figures as an admission's (ORDER_ACK_REPLICAS, _TIMEOUT_MS).
    replicas: int = 0
    replica_timeout_ms: int = 250

    @classmethod
    def from_settings(cls, settings: Settings, budget_s: float = 2.0, follow_up: bool = False) -> DrainOptions:
        """Options from the process settings."""
        return cls(
            settings.drain_batch_size,
            settings.drain_claim_idle_ms,
            settings.dlq_max_attempts,
            budget_s,
            follow_up,
            settings.order_ack_replicas or 0,
            settings.order_ack_timeout_ms,
        )


@dataclass
class DrainResult:
    """What one drain call did (metrics read these counters)."""

    deal_id: int
    persisted: int = 0
    canceled: int = 0
    dead_lettered: int = 0
    batches: int = 0
    entries: int = 0
    claimed: int = 0
    seconds: float = 0.0
    more: bool = False  # the budget ran out with entries left: carry on at once
    follow_up: bool = False  # stopped at a trickle with the kick flag still set: look again soon
    unreplicated: int = 0  # entries read but left pending because too few replicas held them yet

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (task results)."""
        return asdict(self)


@dataclass(frozen=True)
class BatchOutcome:
    """What one committed batch wrote."""

    persisted: int
    canceled: int
    dead_lettered: int


class NotReplicated(Exception):
    """Fewer replicas than asked acknowledged the entries just read: they stay pending, nothing is committed."""


class Drainer:
    """Drains one deal's outbox as one consumer of the ``persisters`` group.

    Only what the replicas hold reaches PostgreSQL. Why: an entry the primary wrote but no replica has yet
    vanishes if the primary dies, and the promoted replica sells its units again; committed to PostgreSQL
    first, it would stay there as units sold twice. So with ``options.replicas`` > 0 every batch is read,
    then ``WAIT replicas timeout`` is sent on the connection that read it (``ReplicaWait``), and the batch's
    transaction commits only when enough replicas acknowledged (the answer is read just before COMMIT).
    Why WAIT and not a comparison of replication offsets: WAIT waits for this connection's last write, and
    reading a batch is one (XREADGROUP ``>``, XCLAIM propagate the consumer group's change), which Redis
    replicates after the entries it read, since they were written before; a replica that acknowledged it
    holds every entry of the batch. Replicas report their offset by themselves once a second only, while
    WAIT makes them answer at once. A reread of our own pending entries (XREADGROUP ``0``) writes nothing,
    and XAUTOCLAIM writes on another connection, so either is followed by an XCLAIM of the same ids to
    ourselves (JUSTID, idle 0: no delivery is counted), whose write WAIT follows. A batch the replicas do not
    acknowledge in time is rolled back and stays pending, and the drain stops (``DrainResult.unreplicated``):
    the next drain reads it again (its ``0`` pass), or another worker claims it once idle. Cancels, payment
    decisions and expiries are outbox entries like orders: the same check covers them.
    """

    def __init__(
        self,
        db: Database,
        rds: Client,
        keys: Keys,
        deal_id: int,
        consumer: str,
        options: DrainOptions,
        on_backlog: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.rds = rds
        self.deal_id = deal_id
        self.dk = keys.deal(deal_id)
        self.stream = self.dk.outbox
        self.group = keys.drain_group
        self.consumer = consumer
        self.opt = options
        self.on_backlog = on_backlog
        self.result = DrainResult(deal_id)

    def run(self) -> DrainResult:
        """Drain until the stream is empty or the time budget is spent."""
        t0 = time.monotonic()
        try:
            if self.rds.xlen(self.stream) == 0 and self._clear_kick() == 0:
                return self.result
            if not self._ensure_group():
                return self.result
            deadline = t0 + self.opt.budget_s
            # 1. Our own pending entries first: a retried task (PostgreSQL was down) finishes the batch it
            #    already holds at once instead of waiting for another consumer to claim it.
            while time.monotonic() < deadline and self._read_and_write("0") > 0:
                pass
            # 2. Entries a dead consumer read but never acked, once idle long enough to be surely abandoned.
            self._claim_abandoned(deadline)
            # 3. New entries: read on while full batches come back (a backlog).
            while time.monotonic() < deadline:
                got = self._read_and_write(">")
                if got >= self.opt.batch_size:
                    continue
                if got and self.opt.follow_up:
                    self.result.follow_up = True  # the kick flag stays set: the caller must look again
                    break
                if got:
                    continue
                self._clear_kick()
                if not self._read_and_write(">"):
                    break
            self.result.more = time.monotonic() >= deadline and self.rds.xlen(self.stream) > 0
            return self.result
        except NotReplicated as exc:
            # The kick flag stays as it is: beat's drain of every live deal (each second) looks again.
            log.warning("deal %s: %s; left pending until the replicas catch up", self.deal_id, exc)
            return self.result
        finally:
            self.result.seconds = round(time.monotonic() - t0, 4)

    def _ensure_group(self) -> bool:
        """Create the consumer group if needed; False when the stream itself is gone (the deal retired)."""
        try:
            # From id 0, not $: entries written before the group existed must be drained too. No MKSTREAM:
            # a drain must never bring back the outbox of a deal that retired while it ran.
            self.rds.xgroup_create(self.stream, self.group, id="0")
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return True
            if "requires the key to exist" in str(exc):
                return False
            raise
        return True

    def _clear_kick(self) -> int:
        """Clear the deal's kick flag before the last look at the stream; returns the stream length.

        Why: an admission that found the flag set sent no task, trusting a drain to be on its way. Once the
        flag is gone the next admission sends a task, and anything admitted before the DEL is seen by the
        read that follows it: no entry waits for the beat safety net.
        """
        self.rds.delete(self.dk.kick)
        return int(self.rds.xlen(self.stream))

    def _link(self) -> contextlib.AbstractContextManager[ReplicaWait | None]:
        """The connection a batch is read on and WAIT sent on (None: no replica to wait for)."""
        if self.opt.replicas <= 0:
            return contextlib.nullcontext()
        return ReplicaWait(self.rds, self.stream, self.opt.replicas, self.opt.replica_timeout_ms)

    def _read(self, start: str, link: ReplicaWait | None) -> Entries:
        try:
            if link is None:
                reply = self.rds.xreadgroup(self.group, self.consumer, {self.stream: start}, count=self.opt.batch_size)
                return reply[0][1] if reply else []
            read = ("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.opt.batch_size)
            reply = link.call(*read, "STREAMS", self.stream, start)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ensure_group()  # the stream was deleted (a deal retired) and maybe re-created (reloaded)
            return []
        # The reply unparsed (redis-py's callbacks are the client layer's): entries with their field lists.
        entries = [(eid, dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}) for eid, flat in
                   (reply[0][1] if reply else [])]  # fmt: skip
        if entries:
            self._ask_replicas(link, entries, wrote=start == ">")
        return entries

    def _ask_replicas(self, link: ReplicaWait, entries: Entries, *, wrote: bool) -> None:
        """Send WAIT for the batch just read on ``link``; its answer is read before the commit (``persist``)."""
        if not wrote:
            # Read by a command that wrote nothing (a reread, or XAUTOCLAIM on another connection): an XCLAIM
            # to ourselves is the write, replicated after the entries, that WAIT follows (see the class).
            ids = [entry_id for entry_id, fields in entries if fields]
            if ids and not link.call("XCLAIM", self.stream, self.group, self.consumer, 0, *ids, "JUSTID"):
                raise NotReplicated(f"{len(ids)} pending entries are no longer ours to claim")
        link.send_wait()

    def _read_and_write(self, start: str) -> int:
        """Read one batch and persist it; returns how many entries it held."""
        with self._link() as link:
            entries = self._read(start, link)
            if not entries:
                return 0
            if start == ">" and len(entries) >= self.opt.batch_size and self.on_backlog is not None:
                self.on_backlog()
            self._write_and_ack(entries, link)
        return len(entries)

    def _claim_abandoned(self, deadline: float) -> None:
        cursor = "0-0"
        while time.monotonic() < deadline:
            cursor, entries, deleted = self.rds.xautoclaim(
                self.stream, self.group, self.consumer, self.opt.claim_idle_ms, cursor, count=self.opt.batch_size
            )
            if deleted:
                self.rds.xack(self.stream, self.group, *deleted)  # pending but gone from the stream: nothing to write
            if entries:
                with self._link() as link:
                    if link is not None:
                        self._ask_replicas(link, entries, wrote=False)
                    self.result.claimed += len(entries)
                    self._write_and_ack(entries, link)
            if cursor == "0-0":
                return

    def _write_and_ack(self, entries: Entries, link: ReplicaWait | None = None) -> None:
        ids = [entry_id for entry_id, _ in entries]
        rows: list[OutboxRow] = []
        bad: list[Unparsable] = []
        for entry_id, fields in entries:
            if not fields:
                continue  # deleted from the stream after we read it: already handled elsewhere
            item = parse_entry(entry_id, fields)
            (bad if isinstance(item, Unparsable) else rows).append(item)  # type: ignore[arg-type]
        outcome = self.persist(rows, bad, link)
        # Why after the commit: killed before this line, the entries stay pending and are redelivered (our own
        # read of "0", or another worker's XAUTOCLAIM); the writes are idempotent, so nothing is doubled.
        # XACK and XDEL in one MULTI: the outbox is trimmed only of acknowledged entries. The buyers' in-flight
        # index loses the same entries in the same step, so "my orders" never misses one in between.
        pipe = self.rds.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, *ids)
        pipe.xdel(self.stream, *ids)
        members = [inflight_member(f) for _, f in entries if f]
        if members:
            pipe.zrem(self.dk.inflight, *members)
        pipe.execute()
        r = self.result
        r.batches += 1
        r.entries += len(ids)
        r.persisted += outcome.persisted
        r.canceled += outcome.canceled
        r.dead_lettered += outcome.dead_lettered

    def persist(self, rows: list[OutboxRow], bad: list[Unparsable], link: ReplicaWait | None = None) -> BatchOutcome:
        """Write a batch in one transaction; a refused batch is split and retried row by row.

        With ``link`` (a WAIT in flight for the batch) the transaction commits only if enough replicas hold the
        batch; otherwise it rolls back and NotReplicated is raised. The WAIT's answer is read last, so the
        replicas' round trip runs while PostgreSQL works.
        """
        with self.db.transaction() as s:
            try:
                # A savepoint, so a refused batch can fall back to single rows in the same transaction.
                with s.begin_nested():
                    persisted, canceled = write_rows(s, self.deal_id, rows)
                dead = 0
            except DBAPIError as exc:
                if is_transient(exc):
                    raise  # PostgreSQL unreachable: nothing is acked, the task retries with backoff
                log.warning("deal %s: batch of %d refused (%s), retrying row by row", self.deal_id, len(rows), exc)
                persisted, canceled, dead = self._row_by_row(s, rows)
            for item in bad:
                if dead_letter_entry(s, self.deal_id, item, item.reason, 1, self._canceled_in_gate):
                    dead += 1
            if link is not None and (acked := link.acked()) < link.replicas:
                self.result.unreplicated += len(rows) + len(bad)
                raise NotReplicated(
                    f"{len(rows) + len(bad)} entries read, {acked} of {link.replicas} replicas hold them"
                )
        return BatchOutcome(persisted, canceled, dead)

    def _row_by_row(self, s: Session, rows: list[OutboxRow]) -> tuple[int, int, int]:
        persisted = canceled = dead = 0
        for row in rows:  # stream order: an order comes before its cancel
            reason = ""
            for _attempt in range(max(1, self.opt.max_attempts)):
                try:
                    with s.begin_nested():
                        p, c = write_rows(s, self.deal_id, [row])
                    persisted, canceled = persisted + p, canceled + c
                    break
                except DBAPIError as exc:
                    if is_transient(exc):
                        raise
                    reason = reason_of(exc)
            else:
                log.error("deal %s: entry %s dead-lettered: %s", self.deal_id, row.entry_id, reason)
                if dead_letter_entry(s, self.deal_id, row, reason, self.opt.max_attempts, self._canceled_in_gate):
                    dead += 1
        return persisted, canceled, dead

    def _canceled_in_gate(self, order_id: str) -> bool:
        rec = self.rds.hget(self.dk.orders, order_id)
        return bool(rec) and parse_order_record(order_id, self.deal_id, str(rec)).canceled


def drain_deal(
    db: Database,
    rds: Client,
    keys: Keys,
    deal_id: int,
    consumer: str,
    options: DrainOptions,
    on_backlog: Callable[[], None] | None = None,
) -> DrainResult:
    """Drain one deal's outbox into PostgreSQL (see ``Drainer``)."""
    return Drainer(db, rds, keys, deal_id, consumer, options, on_backlog).run()


def prune_consumers(rds: redis.Redis, keys: Keys, deal_id: int, idle_ms: int = 86_400_000) -> int:
    """Forget consumers (dead worker processes) that hold nothing and were idle for a day.

    Every read, even an empty one, resets a consumer's idle time, and beat drains every live deal each
    second, so a consumer idle for a day belongs to a process that is gone.
    """
    stream = keys.deal(deal_id).outbox
    try:
        consumers = rds.xinfo_consumers(stream, keys.drain_group)
    except redis.ResponseError:
        return 0
    gone = 0
    for c in consumers:
        # Only consumers without pending entries: deleting one with pending entries would drop them.
        if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > idle_ms:
            gone += int(rds.xgroup_delconsumer(stream, keys.drain_group, c["name"]) == 0)
    return gone
