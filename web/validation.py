"""Request body parsing: JSON only (CSRF defence), validated by pydantic, 4xx on any problem."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from web.errors import ApiError

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 16 * 1024
JSON_ONLY = "Send the body as JSON with Content-Type: application/json."


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{loc}: {msg}" if loc else msg


def require_json() -> Any:
    """Return the parsed JSON body or raise 415 / 400 / 413."""
    if not request.is_json:
        # Refusing form and text content types means a cross-site HTML form cannot post here.
        raise ApiError(415, "unsupported_media_type", JSON_ONLY)
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"Body larger than {MAX_BODY_BYTES} bytes.")
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "malformed_json", "The body is not valid JSON.")
    return data


def parse_body(model: type[M]) -> M:
    """Parse and validate the JSON body as ``model``; 422 with readable messages on failure."""
    data = require_json()
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "The body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise ApiError(
            422,
            "invalid",
            "; ".join(_describe(e) for e in errors),
            details=[{"field": ".".join(str(p) for p in e["loc"]), "message": _describe(e)} for e in errors],
        ) from None


def parse_query(model: type[M]) -> M:
    """Validate query-string arguments as ``model``; 422 on failure."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise ApiError(422, "invalid", "; ".join(_describe(e) for e in errors)) from None
