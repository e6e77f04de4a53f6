"""A history of operations as Jepsen records it: each one invoked, then ok, fail or info (outcome unknown)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["order", "cancel", "pay"]
# ok: it happened (2xx); fail: it did not (a definite refusal, 4xx); info: it may or may not have happened
# (a timeout, a dropped connection, a 5xx: the script may have run before the answer was lost).
Outcome = Literal["invoke", "ok", "fail", "info"]

REPLICATION_HEADER = "Flashdeal-Replication"  # the web node's header (web/admission.py), read back here
UNCONFIRMED = "unconfirmed"


@dataclass
class Op:
    """One operation: what was asked (kind, deal, user, key, order) and, once completed, how it ended."""

    kind: Kind
    deal_id: int
    user_id: int
    process: str
    key: str = ""  # the order's Idempotency-Key
    order_id: str = ""  # named by the answer (order) or by the request (cancel, pay)
    quantity: int = 1
    node: str = ""  # the web node asked
    outcome: Outcome = "invoke"
    status: int | None = None  # HTTP status, None when no answer came
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""  # the refusal's code or the exception
    invoked_at: float = field(default_factory=time.monotonic)
    completed_at: float | None = None

    @property
    def unconfirmed(self) -> bool:
        """The answer said the write is on the primary only (WAIT timed out)."""
        return self.headers.get(REPLICATION_HEADER) == UNCONFIRMED

    @property
    def acknowledged(self) -> bool:
        """ok, and replicated as far as the answer says: the promise of durability holds for it."""
        return self.outcome == "ok" and not self.unconfirmed


class History:
    """Operations of every client thread, in invocation order; safe to append from many threads."""

    def __init__(self, ops: list[Op] | None = None) -> None:
        self.ops: list[Op] = list(ops or [])
        self._lock = threading.Lock()

    def invoke(self, op: Op) -> Op:
        """Record an operation as invoked (its outcome comes later through ``complete``)."""
        with self._lock:
            self.ops.append(op)
        return op

    @staticmethod
    def complete(
        op: Op,
        outcome: Outcome,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        error: str = "",
        order_id: str = "",
    ) -> Op:
        """Close an invoked operation with its outcome and the answer's status and headers."""
        op.outcome, op.status, op.error = outcome, status, error
        op.headers = {k.title(): v for k, v in (headers or {}).items() if k.lower().startswith("flashdeal-")}
        if order_id:
            op.order_id = order_id
        op.completed_at = time.monotonic()
        return op

    def __iter__(self) -> Iterator[Op]:
        return iter(list(self.ops))

    def __len__(self) -> int:
        return len(self.ops)

    def dump(self, path: Path) -> None:
        """Write the history as JSON lines (kept beside a failed run's table)."""
        with path.open("w") as f:
            for op in self:
                f.write(json.dumps(asdict(op)) + "\n")
