"""API errors and the JSON error handlers: every error has the shape {"error": {code, message}}."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from shared.readable import UnreadableDeal
from shared.redis import is_unavailable_reply
from shared.redis.memory import is_full_reply
from web.metrics import record_redis_full

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
UNAVAILABLE = "The service is briefly unavailable; try again."
UNAVAILABLE_RETRY_AFTER = "1"  # seconds: Redis restarts and failovers take about that long
FULL = "The shop cannot take this request right now; try again shortly."
FULL_RETRY_AFTER = "5"  # seconds: memory comes back as the drain empties the outboxes and keys expire


def outage(exc: BaseException | None) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """The 503 answer (status, JSON body, headers) when ``exc`` is a Redis outage, else None.

    Redis unreachable, a node that may not take writes now (a failover: UNAVAILABLE_REPLIES) or a
    full Redis (OOM, shared/redis/memory.py): nothing was written, the client can wait it out, so
    503 with Retry-After, never a 500. One rule for Flask's handlers, the pages and the fast path.
    """
    if isinstance(exc, REDIS_DOWN) or (exc is not None and is_unavailable_reply(exc)):
        log.warning("Redis unavailable: %s", exc)
        return 503, error_body("unavailable", UNAVAILABLE), {"Retry-After": UNAVAILABLE_RETRY_AFTER}
    if exc is not None and is_full_reply(exc):
        log.warning("Redis is full (OOM): %s", exc)
        record_redis_full()
        return 503, error_body("unavailable", FULL), {"Retry-After": FULL_RETRY_AFTER}
    return None


class ApiError(Exception):
    """An error answered to the client in the JSON error shape."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON error shape: {"error": {code, message[, details]}}."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(status: int, code: str, message: str, details: Any = None) -> Response:
    """Build the JSON error response."""
    resp = jsonify(error_body(code, message, details))
    resp.status_code = status
    return resp


def _json(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    resp = jsonify(body)
    resp.status_code = status
    resp.headers.update(headers)
    return resp


def register_error_handlers(app: Flask) -> None:
    """Answer every error, expected or not, in the JSON shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        resp = error_response(exc.status, exc.code, exc.message, exc.details)
        resp.headers.update(exc.headers)
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        # Redis failing while Flask opened or saved the session (outside the view): Flask wraps it in a 500.
        answer = outage(getattr(exc, "original_exception", None)) if status == 500 else None
        if answer is not None:
            return _json(*answer)
        code = _HTTP_CODES.get(status, "error")
        message = exc.description or "error"
        if status == 429:
            message = f"Too many requests: limit {exc.description}. Try again later."
        resp = error_response(status, code, message)
        if status == 405 and getattr(exc, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return resp

    @app.errorhandler(UnreadableDeal)
    def _unreadable(exc: UnreadableDeal) -> Response:
        # A row only a hand edit could have left (the API refuses such values): the admin must
        # repair it; everything else keeps working (shared/readable.py).
        return error_response(409, "deal_unreadable", f"Deal {exc.args[0]} holds a value that cannot be read.")

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(redis.ResponseError)
    def _redis_error(exc: redis.RedisError) -> Response:
        # A dependency outage, not a bug (see outage); any other error reply is a bug.
        answer = outage(exc)
        return _json(*answer) if answer is not None else _unexpected(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Internal error; it has been logged.")
