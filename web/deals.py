"""Buyer deal API: list and detail, cached in Redis, remaining stock read live from the gate."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from flask import Blueprint, jsonify
from sqlalchemy import select

from shared.cache import CacheBusy, read_through
from shared.clock import dt_to_ms, now_ms
from shared.deals import sold_quantities, sold_quantity
from shared.gate import buyer_status
from shared.models import Deal
from shared.readable import UnreadableDeal, get_readable, readable_deals
from web.errors import UNAVAILABLE, UNAVAILABLE_RETRY_AFTER, ApiError
from web.openapi import doc
from web.schemas import DealListQuery, DealOut, DealPage
from web.services import Services, services
from web.validation import parse_query

bp = Blueprint("deals", __name__, url_prefix="/api")

LIST_MAX_ROWS = 500  # deals kept in the cached list (newest first); a flash-sale site runs few at once


def price_view(price: Decimal, regular: Decimal | None, currency: str) -> dict[str, Any]:
    """A deal's prices as buyers see them: the deal price, its currency, the regular price and the discount."""
    view: dict[str, Any] = {"price": f"{price:.2f}", "currency": currency.upper()}
    if regular is not None and regular > 0:
        view["regular_price"] = f"{regular:.2f}"
        view["discount_percent"] = int(((regular - price) * 100 / regular).quantize(Decimal(1), ROUND_HALF_UP))
    return view


def static_view(deal: Deal, sold: int, currency: str) -> dict[str, Any]:
    """The cacheable part of a deal (everything but the live stock and status)."""
    return {
        **price_view(deal.price, deal.product.regular_price, currency),
        "id": deal.id,
        "title": deal.title,
        "product": deal.product.name,
        "description": deal.product.description,
        "total_stock": deal.total_stock,
        "per_user_limit": deal.per_user_limit,
        "starts_at": deal.starts_at.isoformat(),
        "ends_at": deal.ends_at.isoformat(),
        "payment_window_seconds": deal.payment_window_seconds,
        "queued": deal.queue_rate is not None,  # a waiting room in front: orders need its pass
        "db_status": deal.status,
        "open_ms": dt_to_ms(deal.starts_at),
        "close_ms": dt_to_ms(deal.ends_at),
        # Used only while the deal is not loaded in Redis (far-future or archived deals).
        "unloaded_remaining": deal.total_stock - sold,
    }


_PRIVATE_FIELDS = ("db_status", "open_ms", "close_ms", "unloaded_remaining")  # cached, never shown


def live_view(
    view: dict[str, Any], remaining: int | None, window: tuple[str, int, int] | None = None, now: int | None = None
) -> dict[str, Any]:
    """Combine the cached static view with live state into the API's DealOut shape.

    ``window`` is the gate's (status, open_ms, close_ms) when the deal is loaded; otherwise the
    cached window decides. ``now`` (ms) lets a list page use one clock reading for all its deals.
    """
    if remaining is None:
        remaining = view["unloaded_remaining"]
    if window is None:
        window = ("ended" if view["db_status"] == "ended" else "open", view["open_ms"], view["close_ms"])
    out = view.copy()  # a copy and four deletions: a list page does this for each of its deals
    for private in _PRIVATE_FIELDS:
        del out[private]
    out["remaining_stock"] = max(remaining, 0)
    out["status"] = buyer_status(*window, remaining, now_ms() if now is None else now)
    return out


def _cached(svc: Services, key: str, build: Callable[[], Any], cached: str | None) -> Any:
    """read_through with the deal cache's TTL; a rebuild that takes too long is a 503, as for any outage."""
    try:
        return read_through(svc.redis, svc.keys, key, svc.settings.deal_cache_ttl, build, cached)
    except CacheBusy:
        raise ApiError(503, "unavailable", UNAVAILABLE, headers={"Retry-After": UNAVAILABLE_RETRY_AFTER}) from None


def _build_detail(svc: Services, deal_id: int) -> dict[str, Any] | None:
    with svc.db.read() as s:
        try:
            deal = get_readable(s, deal_id)
        except UnreadableDeal:
            return None  # logged; not cached, so a repaired row shows at once
        if deal is None:
            return None
        return static_view(deal, sold_quantity(s, deal_id), svc.settings.payment_currency)


def deal_detail(svc: Services, deal_id: int) -> dict[str, Any]:
    """One deal for buyers: cache and live state in one Redis round trip; PostgreSQL only on a miss."""
    key = svc.keys.deal_cache(deal_id)
    k = svc.keys.deal(deal_id)
    cached, state, stock = svc.direct.pipeline(
        ("GET", key), ("HMGET", k.state, "status", "open_ms", "close_ms"), ("GET", k.stock)
    )
    view = _cached(svc, key, lambda: _build_detail(svc, deal_id), cached)
    if view is None:
        raise ApiError(404, "not_found", f"Deal {deal_id} does not exist.")
    # The live window wins over the cached one: an admin open/close shows at once.
    window = (state[0], int(state[1]), int(state[2])) if state[0] is not None else None
    return live_view(view, int(stock) if stock is not None else None, window)


def _build_list(svc: Services) -> list[dict[str, Any]]:
    with svc.db.read() as s:
        # An unreadable row is left out (and logged), so one bad deal cannot take down the list.
        deals, _skipped = readable_deals(
            s, select(Deal).order_by(Deal.starts_at.desc(), Deal.id.desc()).limit(LIST_MAX_ROWS)
        )
        # One grouped query for every ended deal of the list (up to LIST_MAX_ROWS), not one per deal.
        sold = sold_quantities(s, [d.id for d in deals if d.status == "ended"])
        return [static_view(d, sold.get(d.id, 0), svc.settings.payment_currency) for d in deals]


def deal_list(svc: Services, q: DealListQuery) -> dict[str, Any]:
    """One page of the deal list with live stock: the API view, the fast path (web/fastpath.py) and the list page."""
    version = int(svc.direct.call("GET", svc.keys.deal_list_version) or 0)
    key = svc.keys.deal_list_cache(version)
    views = svc.local.get(key)
    if views is None:
        # Every deal change bumps the version, so a copy under this key is this version's list.
        cached = svc.direct.call("GET", key)
        views = _cached(svc, key, lambda: _build_list(svc), cached)
        svc.local.put(key, views)
    start, now = (q.page - 1) * q.per_page, now_ms()
    if q.status == "all":
        # Unfiltered: only the page's deals need their live stock (one MGET).
        page = views[start : start + q.per_page]
        stocks = svc.gate.remaining([v["id"] for v in page])
        items = [live_view(v, stocks.get(v["id"]), now=now) for v in page]
        return {"items": items, "page": q.page, "per_page": q.per_page, "total": len(views)}
    # A status filter needs every deal's live status before paging.
    stocks = svc.gate.remaining([v["id"] for v in views])
    items = [live_view(v, stocks.get(v["id"]), now=now) for v in views]
    wanted = ("scheduled", "open") if q.status == "active" else (q.status,)
    items = [i for i in items if i["status"] in wanted]
    return {"items": items[start : start + q.per_page], "page": q.page, "per_page": q.per_page, "total": len(items)}


@bp.get("/deals")
@doc("List deals (filter by status, paged)", query=DealListQuery, responses={200: DealPage, 422: None})
def list_deals() -> Any:
    """List deals with live stock and status; ``status=active`` means scheduled or open."""
    return jsonify(deal_list(services(), parse_query(DealListQuery)))


@bp.get("/deals/<int:deal_id>")
@doc("One deal with its live remaining stock", responses={200: DealOut, 404: None})
def get_deal(deal_id: int) -> Any:
    """Deal detail; touches no PostgreSQL on a cache hit."""
    return jsonify(deal_detail(services(), deal_id))
