"""The hot path of a sale: one order attempt through the Lua gate (no PostgreSQL), for the view and the fast path."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from shared.gate import Admission
from shared.order_ids import new_order_id
from web.deals import deal_detail
from web.errors import ApiError
from web.limits import order_windows
from web.metrics import record_admission, record_unreplicated
from web.order_reads import GATE_DECIDED, read_order
from web.queue import queue_pass_valid
from web.services import Services

log = logging.getLogger(__name__)

# A 202 or 200 whose write the replicas did not confirm within ORDER_ACK_TIMEOUT_MS carries this header.
REPLICATION_HEADER = "Flashdeal-Replication"
UNCONFIRMED = "unconfirmed"
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII
# The header as sent: HTTP drops spaces and tabs around a field value (RFC 9110, 5.5), so servers and
# proxies may hand us the key without them; the document allows them and admit_order drops them too.
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Sent again with a retried order: the first order it placed is answered (200), never a second.",
    "schema": {"type": "string", "pattern": rf"^[\t ]*{IDEMPOTENCY_KEY.pattern}[\t ]*$"},
}
QUEUE_PASS_HEADER = {
    "name": "Queue-Pass",
    "in": "header",
    "required": False,
    "description": "The waiting room's pass for this buyer and deal; a queued deal refuses orders without it (403).",
    "schema": {"type": "string"},
}
SOLD_OUT_TTL_S = 0.2

# Process-local sold-out marks: a sold-out deal answers without a Redis round trip for a
# moment. Only requests without an Idempotency-Key use it (a replay must find its order).
_sold_out_until: dict[int, float] = {}

_CONFLICTS = {
    Admission.SOLD_OUT: "This deal is sold out.",
    Admission.LIMIT_EXCEEDED: "You have reached the per-user limit for this deal.",
    Admission.DEAL_NOT_OPEN: "This deal is not open for orders.",
}


@dataclass(frozen=True)
class Admitted:
    """An order the gate accepted now, or the order an Idempotency-Key already placed (a replay)."""

    order_id: str
    deal_id: int
    quantity: int
    status: str = "accepted"  # a replay's is the order's current one (web/schemas.py OrderStatus)
    replay: bool = False
    replicated: bool = True  # False: on the primary only (WAIT timed out); the answer says so in a header

    @property
    def http_status(self) -> int:
        """202: this request placed the order; 200: a replay, answered with the order as it is now."""
        return 200 if self.replay else 202

    def body(self) -> dict[str, Any]:
        """The answer's body (the same shape either way)."""
        return {"order_id": self.order_id, "status": self.status, "deal_id": self.deal_id, "quantity": self.quantity}

    def headers(self) -> dict[str, str]:
        """Extra headers of the 202 (both the Flask view and the fast path send them)."""
        return {} if self.replicated else {REPLICATION_HEADER: UNCONFIRMED}


def admit_order(
    svc: Services, deal_id: int, user_id: int, quantity: int, idem: str | None, ip: str, queue_pass: str = ""
) -> Admitted:
    """One order attempt through the gate; raises ApiError (409/422/404/403/429) when refused.

    Shared by the Flask view and the WSGI fast path (web/fastpath.py): needs no request context.
    The order rate limits (per buyer, per client ``ip``) are counted by the admission script itself.
    ``queue_pass``: the Queue-Pass header (queued deals refuse orders without a valid one).
    """
    if idem is not None:
        idem = idem.strip(" \t")
        if not IDEMPOTENCY_KEY.fullmatch(idem):  # a blank header too: the buyer meant to send a key
            raise ApiError(422, "invalid", "Idempotency-Key: 1 to 128 visible ASCII characters")
    else:
        idem = ""
    if not idem and _sold_out_until.get(deal_id, 0.0) > time.monotonic():
        record_admission(Admission.SOLD_OUT.value)
        raise ApiError(409, "sold_out", _CONFLICTS[Admission.SOLD_OUT])
    settings = svc.settings
    windows = order_windows(settings.ratelimit_order, settings.ratelimit_order_ip) if settings.ratelimit_enabled else ()
    who = {"user": f"user:{user_id}", "ip": f"ip:{ip}"}
    limits = [(who[w.scope], w.amount, w.seconds) for w in windows]
    passed = queue_pass_checked(svc, queue_pass, user_id, deal_id)
    result = svc.gate.admit(deal_id, user_id, quantity, new_order_id(deal_id), idem, limits, passed)
    outcome = result.outcome
    record_admission(outcome.value)
    if outcome is Admission.RATE_LIMITED:
        # Flask-Limiter's 429 (web/errors.py words its message the same way), with the window's time left.
        retry_after = str(max(1, math.ceil(result.retry_ms / 1000)))
        message = f"Too many requests: limit {windows[result.window].text}. Try again later."
        raise ApiError(429, "rate_limited", message, headers={"Retry-After": retry_after})
    if outcome in (Admission.ACCEPTED, Admission.REPLAY):
        if result.kick:
            svc.kicks.send(deal_id)
        if not result.replicated:
            # The order is on the primary and admitted: refusing it now would be a lie, and a retry with
            # the same Idempotency-Key finds it. The buyer gets the 202, marked, and we count it.
            record_unreplicated("order")
        if outcome is Admission.REPLAY:
            # The truth about the order now (it may have been confirmed or canceled since), not
            # the first answer again. Off the hot path: only a retried request gets here.
            status = _current_status(svc, result.order_id, deal_id)
            return Admitted(result.order_id, deal_id, quantity, status, replay=True, replicated=result.replicated)
        return Admitted(result.order_id, deal_id, quantity, replicated=result.replicated)
    if outcome is Admission.SOLD_OUT and result.remaining <= 0:
        _sold_out_until[deal_id] = time.monotonic() + SOLD_OUT_TTL_S
    if outcome is Admission.QUEUE_PASS_REQUIRED:
        raise ApiError(403, "queue_pass_required", QUEUE_PASS_MESSAGE)
    if outcome is Admission.IDEMPOTENCY_MISMATCH:
        raise ApiError(422, "idempotency_key_reused", "This Idempotency-Key was used with a different body.")
    if outcome is Admission.QUANTITY_ABOVE_LIMIT:
        raise ApiError(422, "invalid", "quantity: above this deal's per-user limit")
    if result.deal_unknown and not _deal_exists(svc, deal_id):
        raise ApiError(404, "not_found", f"Deal {deal_id} does not exist.")
    raise ApiError(409, outcome.value, _CONFLICTS[outcome])


QUEUE_PASS_MESSAGE = "This deal has a waiting room: join it, and order with the pass it gives you (Queue-Pass header)."


def queue_pass_checked(svc: Services, queue_pass: str, user_id: int, deal_id: int) -> bool:
    """WAITING ROOM: True when the order carries a valid pass for this buyer and deal (HMAC only, no I/O).

    Whether the deal is queued is the gate's to say (a flag with its rules in Redis): the script refuses
    an order for a queued deal unless this is True, on the fast path and the Flask view alike.
    """
    return bool(queue_pass) and queue_pass_valid(svc, queue_pass, user_id, deal_id)


def forget_sold_out(deal_id: int) -> None:
    """Units came back (a cancel): this process stops answering the deal as sold out at once."""
    _sold_out_until.pop(deal_id, None)


def _current_status(svc: Services, order_id: str, deal_id: int) -> str:
    """The order's status now; with PostgreSQL unreachable, what the gate knows (accepted, canceled, paid...)."""
    try:
        found = read_order(svc, order_id)
    except SQLAlchemyError as exc:
        # The order is safe in the gate; a replay must not fail because the history is unreachable.
        log.warning("order %s: PostgreSQL unreachable, answering the gate's status: %s", order_id, exc)
        live = svc.gate.find_order(order_id, deal_id)
        return live.state if live is not None and live.state in GATE_DECIDED else "accepted"
    return found[0]["status"] if found is not None else "accepted"


def _deal_exists(svc: Services, deal_id: int) -> bool:
    """Off the hot path: asked only when the gate holds no state for the deal (not a closed or early one)."""
    try:
        deal_detail(svc, deal_id)
    except ApiError:
        return False
    return True
