"""A tiny Flask app serving one strategy, so every strategy sees the same HTTP load under granian.

``BENCH_STRATEGY`` names the strategy; ``POST /deals/<deal>/orders/<user>`` {quantity} answers 202 or 409.
No session and no rate limit on purpose: the comparison isolates the admission itself.
Run: ``granian --interface wsgi bench.strategies.app:app`` with the bench environment.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask, jsonify, request

from bench.strategies import STRATEGIES, Deps, Strategy
from shared.db import Database
from shared.gate import Gate
from shared.keys import Keys
from shared.redis_client import text_client
from shared.settings import Settings


def create_app(strategy_key: str | None = None, settings: Settings | None = None) -> Flask:
    """One Flask app bound to one strategy; a strategy object per deal, built on first use."""
    settings = settings or Settings.from_env()
    cls = STRATEGIES[strategy_key or os.environ["BENCH_STRATEGY"]]
    client = text_client(settings)
    deps = Deps(Database(settings, pool_size=10, max_overflow=10), Gate(client, Keys(settings.key_prefix)))
    per_deal: dict[int, Strategy] = {}
    lock = threading.Lock()
    app = Flask(__name__)

    def strategy(deal_id: int) -> Strategy:
        with lock:
            if deal_id not in per_deal:
                per_deal[deal_id] = cls(deps, deal_id)
            return per_deal[deal_id]

    @app.post("/deals/<int:deal_id>/orders/<int:user_id>")
    def order(deal_id: int, user_id: int) -> Any:
        """Admit one order with the app's strategy."""
        quantity = int((request.get_json(silent=True) or {}).get("quantity", 1))
        if strategy(deal_id).order(user_id, quantity):
            return jsonify(status="accepted"), 202
        return jsonify(error={"code": "sold_out", "message": "sold out"}), 409

    @app.get("/healthz")
    def healthz() -> Any:
        """Process up."""
        return jsonify(status="ok")

    return app


app = create_app() if "BENCH_STRATEGY" in os.environ else None
