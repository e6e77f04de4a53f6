"""The Flask web node: create_app(settings) builds one; nothing happens at import."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.redis import refuse_evicting_redis
from shared.settings import Settings
from web.errors import register_error_handlers
from web.jsonprovider import OrjsonProvider
from web.services import Services


def create_app(settings: Settings | None = None) -> Flask:
    """Build a web node from settings (from the environment when not given)."""
    settings = (settings or Settings.from_env()).check()
    refuse_evicting_redis(settings)
    app = Flask(__name__)
    app.config.update(SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=1024 * 1024)
    app.json = OrjsonProvider(app)
    app.extensions["flashdeal"] = Services.build(settings)

    from web import admin, auth, deals, health, ids, openapi, orders, pages, payments, queue
    from web.fastpath import FastPath
    from web.limits import init_limits
    from web.metrics import init_metrics
    from web.order_token import init_order_tokens
    from web.origin import init_origin_check
    from web.sessions import init_sessions

    init_sessions(app, settings)
    init_order_tokens(app, settings)  # issued and renewed by session-backed requests (web/order_token.py)
    init_origin_check(app)  # before the limiter's hook: a forged call costs no rate-limit count
    init_limits(app, settings)
    register_error_handlers(app)
    init_metrics(app)
    ids.install(app.url_map)  # before the blueprints add their <int:…> rules
    for module in (health, auth, deals, orders, payments, admin, queue, openapi, pages):
        app.register_blueprint(module.bp)
    app.wsgi_app = FastPath(app, app.wsgi_app)  # type: ignore[method-assign]
    if settings.trusted_proxies > 0:
        # Only trust X-Forwarded-For from our own load balancer(s); outermost, so every path sees it.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)  # type: ignore[method-assign]
    return app
