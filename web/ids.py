"""Ids in URLs: the converter of every ``<int:…>`` route (within PostgreSQL's bigint) and order ids; else 404."""

from __future__ import annotations

import uuid
from typing import Any

from werkzeug.routing import BaseConverter, Map, ValidationError

from shared.bounds import ID_PATTERN, MAX_ID, parse_id
from web.errors import ApiError


class BoundedId(BaseConverter):
    """``[1-9][0-9]{0,18}`` and at most MAX_ID; the fast path (web/fastpath.py) matches the same ids."""

    regex = ID_PATTERN
    part_isolating = True

    def to_python(self, value: str) -> int:
        """The id, or ValidationError (the route does not match: 404) beyond bigint."""
        parsed = parse_id(value)
        if parsed is None:
            raise ValidationError()
        return parsed

    def to_url(self, value: Any) -> str:
        """The id as a URL segment."""
        return str(int(value))


def install(url_map: Map) -> None:
    """Make ``int`` mean BoundedId for every rule added afterwards (so a new route cannot forget it)."""
    url_map.converters["int"] = BoundedId


OPENAPI_ID_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_ID}


def parse_order_id(raw: str) -> str:
    """The canonical order id of a URL's segment; anything else is a 404 (no such order)."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(404, "not_found", "No such order.") from None
