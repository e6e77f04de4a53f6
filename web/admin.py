"""Admin deal API: create, open or close early, sale statistics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, jsonify

from shared.deals import DealNotFound, DealStateError, NewDeal, close_now, deal_stats, open_now, publish_deal
from shared.queue import QueueRules
from web.access import admin_required
from web.deals import deal_detail
from web.errors import ApiError
from web.openapi import doc
from web.schemas import DealIn, DealOut, DealStatsOut
from web.services import services
from web.validation import parse_body

bp = Blueprint("admin", __name__, url_prefix="/api/admin")


@bp.post("/deals")
@admin_required
@doc("Create a deal", body=DealIn, responses={201: DealOut, 401: None, 403: None, 422: None}, auth="admin")
def create() -> Any:
    """Create a deal; one starting soon is loaded into the gate at once."""
    data = parse_body(DealIn)
    svc = services()
    if data.ends_at <= datetime.now(UTC):
        raise ApiError(422, "invalid", "ends_at: must be in the future")
    fields = data.model_dump()
    queue = fields.pop("queue")
    # Same field names by design; the waiting room's rules become the gate's QueueRules.
    spec = NewDeal(**fields, queue=QueueRules(**queue) if queue is not None else None)
    try:
        deal = publish_deal(svc.db, svc.gate, spec, svc.settings.deal_load_ahead_seconds)
    except DealNotFound as exc:
        raise ApiError(422, "invalid", f"product_id: {exc}") from None
    return jsonify(deal_detail(svc, deal.id)), 201


def _move(deal_id: int, move: Any) -> Any:
    svc = services()
    try:
        move(svc.db, svc.gate, deal_id)
    except DealNotFound:
        raise ApiError(404, "not_found", f"Deal {deal_id} does not exist.") from None
    except DealStateError as exc:
        raise ApiError(409, "deal_state", str(exc)) from None
    return jsonify(deal_detail(svc, deal_id))


@bp.post("/deals/<int:deal_id>/open")
@admin_required
@doc("Open a deal now", responses={200: DealOut, 404: None, 409: None}, auth="admin")
def open_deal(deal_id: int) -> Any:
    """Open early; every web node sees it at once (the gate reads its window from Redis)."""
    return _move(deal_id, open_now)


@bp.post("/deals/<int:deal_id>/close")
@admin_required
@doc("Close a deal now", responses={200: DealOut, 404: None}, auth="admin")
def close_deal(deal_id: int) -> Any:
    """Close early; the gate refuses from this moment on every web node."""
    return _move(deal_id, close_now)


@bp.get("/deals/<int:deal_id>/stats")
@admin_required
@doc("A deal's sale progress", responses={200: DealStatsOut, 404: None}, auth="admin")
def stats(deal_id: int) -> Any:
    """Stock, accepted, confirmed, canceled, pending and failed counts."""
    svc = services()
    try:
        return jsonify(deal_stats(svc.db, svc.gate, deal_id).as_dict())
    except DealNotFound:
        raise ApiError(404, "not_found", f"Deal {deal_id} does not exist.") from None
