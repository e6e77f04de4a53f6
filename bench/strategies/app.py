"""A tiny WSGI app serving one strategy, so every strategy sees the same HTTP load under granian.

``BENCH_STRATEGY`` names the strategy; ``POST /deals/<deal>/orders/<user>`` {quantity} answers 202 or 409.
No session, no rate limit and no web framework on purpose: the comparison isolates the admission
itself. Flask's request cycle alone costs more than the Lua gate on this machine, so under Flask every
fast strategy would measure the framework (the product's order endpoint skips it too:
web/fastpath.py). Run: ``granian --interface wsgi bench.strategies.app:app`` with the bench
environment.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from bench.strategies import STRATEGIES, Deps, Strategy
from shared.db import Database
from shared.gate import Gate
from shared.keys import Keys
from shared.redis import text_client
from shared.settings import Settings

ORDER = re.compile(r"/deals/([0-9]+)/orders/([0-9]+)")
ACCEPTED = orjson.dumps({"status": "accepted"})
SOLD_OUT = orjson.dumps({"error": {"code": "sold_out", "message": "sold out"}})
OK = orjson.dumps({"status": "ok"})
NOT_FOUND = orjson.dumps({"error": {"code": "not_found", "message": "no such route"}})

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _answer(start_response: Callable[..., Any], status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def create_app(strategy_key: str | None = None, settings: Settings | None = None) -> WSGIApp:
    """One WSGI app bound to one strategy; a strategy object per deal, built on first use."""
    settings = settings or Settings.from_env()
    cls = STRATEGIES[strategy_key or os.environ["BENCH_STRATEGY"]]
    client = text_client(settings)
    deps = Deps(Database(settings, pool_size=10, max_overflow=10), Gate(client, Keys(settings.key_prefix)))
    per_deal: dict[int, Strategy] = {}
    lock = threading.Lock()

    def strategy(deal_id: int) -> Strategy:
        with lock:
            if deal_id not in per_deal:
                per_deal[deal_id] = cls(deps, deal_id)
            return per_deal[deal_id]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
        if method == "GET" and path == "/healthz":
            return _answer(start_response, "200 OK", OK)
        match = ORDER.fullmatch(path)
        if method != "POST" or match is None:
            return _answer(start_response, "404 NOT FOUND", NOT_FOUND)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = orjson.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
        quantity = int(body.get("quantity", 1))
        if strategy(int(match.group(1))).order(int(match.group(2)), quantity):
            return _answer(start_response, "202 ACCEPTED", ACCEPTED)
        return _answer(start_response, "409 CONFLICT", SOLD_OUT)

    return app


app = create_app() if "BENCH_STRATEGY" in os.environ else None
