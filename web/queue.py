"""Waiting room API: proof-of-work challenge, join, status poll (which hands out the pass), admin controls."""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import orjson
from flask import Blueprint, Response, jsonify, request
from flask_limiter.util import get_remote_address
from werkzeug.http import dump_cookie

from shared.clock import ms_to_dt
from shared.deals import DealNotFound, DealStateError, set_queue
from shared.passes import MAX_PASS_LEN, Pass, PassSigner
from shared.queue import QueueView, proof_bits
from web.access import admin_required, login_required, require_user
from web.deals import deal_detail
from web.errors import ApiError
from web.limits import limiter, user_key
from web.metrics import record_queue
from web.openapi import doc
from web.schemas import ChallengeOut, DealOut, QueueControlIn, QueueJoinIn, QueueOut
from web.services import Services, services
from web.sessions import COOKIE_NAME
from web.validation import parse_body

bp = Blueprint("queue", __name__, url_prefix="/api")

PASS_KIND = "queue"
CHALLENGE_KIND = "pow"
# The poll ticket: a signed cookie naming the buyer, set by the join and the polls answered from the session.
# Why: every waiting buyer polls every few seconds; with the ticket a poll is one HMAC check and one script
# call, without reading the session from Redis (a second round trip per poll). It only shows the buyer's own
# place (and pass, which orders accept only with the buyer's session), and lives as long as an idle session.
TICKET_KIND = "ticket"
TICKET_COOKIE = "flashdeal_queue"
MAX_SID_LEN = 128  # a session id is 43 characters (Flask-Session, 32 random bytes); a longer value is never one


@functools.lru_cache(maxsize=8)
def signer(secret_key: str, kind: str) -> PassSigner:
    """The signer of one kind under one secret (built once: it derives its key from the secret)."""
    return PassSigner(secret_key, kind)


def queue_pass_valid(svc: Services, token: str, user_id: int, deal_id: int) -> bool:
    """True when ``token`` is a queue pass, signed by us, for this buyer and this deal, not expired (no I/O)."""
    found = signer(svc.settings.secret_key, PASS_KIND).verify_for(token, user_id, deal_id, time.time())
    return found is not None and found.deal_id == deal_id


def ticket_signer(secret_key: str, sid: str) -> PassSigner:
    """The poll tickets' signer for one session: a ticket is valid only next to the session it was issued in."""
    # Why per session: after a logout, or another buyer logging in on the same browser, the old ticket must
    # not answer for anybody. The session cookie is in the same Cookie header, so this costs no I/O.
    return PassSigner(f"{secret_key}\x00{sid}", TICKET_KIND)


def ticket_user(svc: Services, cookie_header: str, now: float) -> tuple[int, bool] | None:
    """(buyer, renew soon) from a valid poll ticket beside its session cookie in the Cookie header, else None."""
    cookies = dict(part.strip().partition("=")[::2] for part in cookie_header.split(";"))
    sid, token = cookies.get(COOKIE_NAME), cookies.get(TICKET_COOKIE)
    if not sid or not token:
        return None
    if len(sid) > MAX_SID_LEN or len(token) > MAX_PASS_LEN:
        return None  # never a session id and a ticket of ours, and must not fill the cache
    found = _ticket_signature_ok(svc.settings.secret_key, sid, token)
    if found is None or found.expires_at <= now:
        return None
    return found.user_id, found.expires_at - now < svc.settings.session_idle_seconds / 2


# Why a cache: every waiting buyer sends the same ticket with every poll, and checking it (itsdangerous
# derives the per-session key, then signs again) is the poll's one CPU-heavy step, as the order token's
# check was on the order path (web/order_token.py). Keyed by the session id and the whole ticket: only the
# exact bytes that verified once hit; the expiry is checked on every hit. Bounded (thread-safe).
@functools.lru_cache(maxsize=65536)
def _ticket_signature_ok(secret_key: str, sid: str, token: str) -> Pass | None:
    return ticket_signer(secret_key, sid).verify(token, 0)


def ticket_cookie(svc: Services, user_id: int, sid: str | None, now: float) -> dict[str, str]:
    """The Set-Cookie header of a fresh poll ticket for ``user_id`` in session ``sid`` (HttpOnly, SameSite=Lax)."""
    if not sid:
        return {}
    settings = svc.settings
    token = ticket_signer(svc.settings.secret_key, sid).issue(user_id, None, int(now) + settings.session_idle_seconds)
    cookie = dump_cookie(
        TICKET_COOKIE,
        token,
        max_age=settings.session_idle_seconds,
        path="/api/deals",
        httponly=True,
        samesite="Lax",
        secure=settings.session_cookie_secure,
    )
    return {"Set-Cookie": cookie}


def queue_answer(svc: Services, user_id: int, deal_id: int, view: QueueView) -> dict[str, Any]:
    """The QueueOut body for a buyer's view; refusals (no queue, not open yet, unknown deal) raise ApiError."""
    if view.state == "no_queue":
        _no_queue(svc, deal_id)
    if view.state == "queue_not_open":
        raise ApiError(409, "queue_not_open", "This deal's waiting room is not open yet.")
    record_queue(view.state, view.let_in)
    poll = svc.settings.queue_poll_ms
    out: dict[str, Any] = {
        "state": view.state,
        "position": None,
        "ahead": view.ahead,
        "eta_seconds": None,
        "poll_after_ms": poll,
        "pass": None,
        "pass_expires_at": None,
    }
    if view.state == "waiting":
        if view.ahead is not None:
            out["position"] = view.ahead + 1
            if not view.paused and view.rate > 0:
                out["eta_seconds"] = math.ceil(view.ahead / view.rate)
        else:
            # Before the start the pre-queue's order is drawn at the start: the wait is at least until then.
            out["eta_seconds"] = max(0, math.ceil((view.open_ms - view.now_ms) / 1000))
    elif view.state == "admitted":
        expires = view.pass_expires_ms // 1000  # whole seconds; a little before Redis frees the slot
        # Signed again on every poll: HMAC is deterministic, so the buyer gets the same pass each time.
        out["pass"] = signer(svc.settings.secret_key, PASS_KIND).issue(user_id, deal_id, expires)
        out["pass_expires_at"] = ms_to_dt(expires * 1000).isoformat()
    return out


def _no_queue(svc: Services, deal_id: int) -> None:
    """404 for an unknown deal, else 409 no_queue."""
    deal_detail(svc, deal_id)  # raises 404 when the deal does not exist
    raise ApiError(409, "no_queue", "This deal has no waiting room; order directly.")


def status_answer(svc: Services, user_id: int, deal_id: int) -> dict[str, Any]:
    """GET /api/deals/{id}/queue: the Flask view and the fast path (web/fastpath.py) both answer this."""
    return queue_answer(svc, user_id, deal_id, svc.queue.status(deal_id, user_id))


def join_answer(
    svc: Services, user_id: int, sid: str | None, deal_id: int, body: QueueJoinIn
) -> tuple[int, bytes, dict[str, str]]:
    """POST /api/deals/{id}/queue: the Flask view and the fast path both answer this (status, JSON, Set-Cookie)."""
    now = time.time()
    shown = 0
    challenges = signer(svc.settings.secret_key, CHALLENGE_KIND)
    if body.challenge and body.nonce and challenges.verify_for(body.challenge, user_id, deal_id, now):
        shown = proof_bits(body.challenge, body.nonce)
    view = svc.queue.join(deal_id, user_id, shown)
    if view.state == "proof_of_work_required":
        record_queue("pow_refused")
        raise ApiError(
            403,
            "proof_of_work_required",
            f"Solve GET /api/deals/{deal_id}/queue/challenge ({view.pow_bits} bits) first.",
        )
    return 200, orjson.dumps(queue_answer(svc, user_id, deal_id, view)), ticket_cookie(svc, user_id, sid, now)


def join_ip_limit() -> str:
    """Joins per client address."""
    return services().settings.ratelimit_queue_join_ip


def join_user_limit() -> str:
    """Joins per account."""
    return services().settings.ratelimit_queue_join


@bp.get("/deals/<int:deal_id>/queue/challenge")
@login_required
@doc(
    "A proof-of-work challenge for joining",
    responses={200: ChallengeOut, 401: None, 404: None, 409: None},
    auth="session",
)
def challenge(deal_id: int) -> Any:
    """A challenge bound to this buyer and deal, valid a few minutes, and the difficulty."""
    svc = services()
    user_id = require_user()
    bits = svc.queue.pow_bits(deal_id)
    if bits is None:
        _no_queue(svc, deal_id)
    expires = int(time.time()) + svc.settings.queue_challenge_seconds
    token = signer(svc.settings.secret_key, CHALLENGE_KIND).issue(user_id, deal_id, expires)
    return jsonify(challenge=token, bits=bits)


@doc(
    "Join the deal's waiting room (again: the same place)",
    body=QueueJoinIn,
    responses={200: QueueOut, 401: None, 403: None, 404: None, 409: None, 422: None, 429: None},
    auth="session",
)
def join(deal_id: int) -> Any:
    """Take a place in the line; with proof of work, only with a solved challenge of ours for this buyer and deal."""
    svc = services()
    user_id = require_user()
    sid = request.cookies.get(COOKIE_NAME)
    status, body, cookie = join_answer(svc, user_id, sid, deal_id, parse_body(QueueJoinIn))
    return Response(body, status, cookie, mimetype="application/json")


@doc(
    "My place in the deal's waiting room; the pass once let in",
    responses={200: QueueOut, 401: None, 404: None, 409: None},
    auth="session",
)
def status(deal_id: int) -> Any:
    """Position, estimated wait, and the pass when admitted; sold out and closed at once."""
    svc, user_id = services(), require_user()
    cookie = ticket_cookie(svc, user_id, request.cookies.get(COOKIE_NAME), time.time())
    return jsonify(status_answer(svc, user_id, deal_id)), 200, cookie


@bp.route("/deals/<int:deal_id>/queue", methods=["GET", "POST"])
@login_required
@limiter.limit(join_user_limit, key_func=user_key, methods=["POST"])
@limiter.limit(join_ip_limit, key_func=get_remote_address, methods=["POST"])
def room(deal_id: int) -> Any:
    """GET: the status poll; POST: the join (its limits count joins only)."""
    # Why one URL rule for both: with two, werkzeug answers 405 (the other rule's method) before any converter
    # refuses an id beyond bigint, where every id route answers 404.
    return join(deal_id) if request.method == "POST" else status(deal_id)


room.__openapi__ = status.__openapi__  # type: ignore[attr-defined]
room.__openapi_by_method__ = {"GET": status.__openapi__, "POST": join.__openapi__}  # type: ignore[attr-defined]


@bp.post("/admin/deals/<int:deal_id>/queue")
@admin_required
@doc(
    "Change a queued deal's rate, pause or resume it",
    body=QueueControlIn,
    responses={200: DealOut, 404: None, 409: None, 422: None},
    auth="admin",
)
def control(deal_id: int) -> Any:
    """Takes effect at once on every web node (the inlet reads its rules from Redis)."""
    body = parse_body(QueueControlIn)
    if body.rate is None and body.paused is None:
        raise ApiError(422, "invalid", "Give rate, paused, or both.")
    svc = services()
    try:
        set_queue(svc.db, svc.gate, deal_id, rate=body.rate, paused=body.paused)
    except DealNotFound:
        raise ApiError(404, "not_found", f"Deal {deal_id} does not exist.") from None
    except DealStateError as exc:
        raise ApiError(409, "no_queue", str(exc)) from None
    return jsonify(deal_detail(svc, deal_id))
