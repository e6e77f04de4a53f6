"""/openapi.json, built from the routes and the pydantic schemas they declare.

Written by hand (about 80 lines) rather than with a Flask OpenAPI library because those wrap
every view in their own validation layer: on the order path that costs measurable time, and
their error bodies do not have our JSON error shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, jsonify
from pydantic import BaseModel

from web.ids import OPENAPI_ID_SCHEMA
from web.order_token import COOKIE as ORDER_COOKIE
from web.origin import HEADER_VALUE
from web.schemas import ErrorOut
from web.sessions import COOKIE_NAME as SESSION_COOKIE

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Doc:
    """What one view declares about itself."""

    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    auth: str | None = None  # None, "session", "admin" or "order" (the session or the order token)
    headers: tuple[dict[str, Any], ...] = ()  # request header parameters the view reads
    raw_body: bool = False  # the body is someone else's JSON (a provider's event), not one of our models


def doc(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    responses: dict[int, type[BaseModel] | None] | None = None,
    auth: str | None = None,
    headers: tuple[dict[str, Any], ...] = (),
    raw_body: bool = False,
) -> Callable[[F], F]:
    """Attach OpenAPI information to a view function."""

    def wrap(fn: F) -> F:
        fn.__openapi__ = Doc(summary, body, query, responses or {}, auth, headers, raw_body)  # type: ignore[attr-defined]
        return fn

    return wrap


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STATUS_MEANINGS = {
    200: "OK",
    201: "created",
    202: "accepted",
    204: "done, no body",
    400: "malformed JSON",
    401: "not logged in (or the session expired)",
    403: "not allowed: not an admin, or no proof of origin (origin_required)",
    404: "no such resource (ids beyond bigint included)",
    409: "refused by the resource's state (sold_out, limit_exceeded, deal_not_open, email_taken, …)",
    413: "body too large",
    415: "the body is not JSON",
    422: "invalid input, or a rule the schema cannot express (quantity above the deal's purchase cap, window)",
    429: "rate limited; see Retry-After",
    503: "a dependency (Redis, PostgreSQL) is briefly unavailable; see Retry-After",
}
# Bodyless state changes must prove their origin with this header (web/origin.py refuses them without it,
# 403); JSON bodies need none. Required: the document says what the code requires (X-CSRF-Token with the
# session's page token also passes, an alternative OpenAPI cannot state for one parameter).
ORIGIN_HEADER = {
    "name": "X-Requested-With",
    "in": "header",
    "required": True,
    "description": "Proof of origin for a call without a JSON body (any value; or send X-CSRF-Token).",
    "schema": {"type": "string", "pattern": f"^{HEADER_VALUE.pattern}$"},
}


def implied_statuses(info: Doc, path_args: Any, changes_state: bool) -> list[int]:
    """The statuses every operation of this kind can answer, whatever its view declares."""
    implied = [503]
    if path_args:
        implied.append(404)
    if info.auth:
        implied.append(401)
    if info.auth == "admin":
        implied.append(403)
    if changes_state:
        implied += [403, 415]
    if info.body is not None:
        implied += [400, 413, 415, 422]
    if info.query is not None:
        implied.append(422)
    return implied


def build_spec(app: Flask) -> dict[str, Any]:
    """Walk the URL map and describe every documented route."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in js.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = js
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict[str, Any] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        info: Doc | None = getattr(view, "__openapi__", None)
        if info is None:
            continue
        path = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
        params = [
            {
                "name": a,
                "in": "path",
                "required": True,
                "schema": dict(OPENAPI_ID_SCHEMA) if f"<int:{a}>" in rule.rule else {"type": "string"},
            }
            for a in rule.arguments
        ]
        if info.query is not None:
            for name, prop in info.query.model_json_schema().get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": False, "schema": prop})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            # A view serving several methods may document each (web/queue.py: the waiting room's one rule).
            info = getattr(view, "__openapi_by_method__", {}).get(method, info)
            op: dict[str, Any] = {
                "summary": info.summary,
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "responses": {},
            }
            if params:
                op["parameters"] = list(params)
            op["parameters"] = op.get("parameters", []) + list(info.headers)
            if not op["parameters"]:
                del op["parameters"]
            if info.body is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(info.body)}}}
            elif info.raw_body:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
            if info.auth:
                # Alternatives: either cookie proves the buyer of an order (web/order_token.py).
                op["security"] = [{"session": []}, {"order_token": []}] if info.auth == "order" else [{"session": []}]
                op["x-required-role"] = "admin" if info.auth == "admin" else "any"
            changes_state = method in STATE_CHANGING
            if changes_state and info.body is None and not info.raw_body:
                op.setdefault("parameters", []).append(ORIGIN_HEADER)
            declared = dict.fromkeys(implied_statuses(info, rule.arguments, changes_state)) | info.responses
            for status, model in sorted(declared.items()):
                resp: dict[str, Any] = {"description": STATUS_MEANINGS.get(status, str(status))}
                content = ref(model) if model is not None else (ref(ErrorOut) if status >= 400 else None)
                if content is not None:
                    resp["content"] = {"application/json": {"schema": content}}
                op["responses"][str(status)] = resp
            op["responses"]["default"] = {
                "description": "error",
                "content": {"application/json": {"schema": ref(ErrorOut)}},
            }
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "flashdeal", "version": "1.0.0", "description": "Flash-deal order API."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "order_token": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": ORDER_COOKIE,
                    "description": "A short-lived signed pass of the buyer, set at login and renewed by the"
                    " session's pages and API; it proves the buyer of an order without the session.",
                },
            },
        },
    }


bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json() -> Any:
    """Serve the OpenAPI document (built once per process)."""
    spec = current_app.extensions.get("flashdeal_openapi")
    if spec is None:
        spec = current_app.extensions["flashdeal_openapi"] = build_spec(current_app)
    return jsonify(spec)
