"""Settings, health probes, OpenAPI, and sessions shared between two web processes."""

from __future__ import annotations

import pytest

from shared.settings import DEV_SECRET, ConfigError, Settings
from web import create_app


def test_production_refuses_default_secret() -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        Settings.from_env({"FLASHDEAL_ENV": "production"}).check()
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        Settings.from_env({"FLASHDEAL_ENV": "production", "SECRET_KEY": DEV_SECRET}).check()
    with pytest.raises(ConfigError):
        create_app(Settings.from_env({"FLASHDEAL_ENV": "production", "SECRET_KEY": "short"}))
    ok = Settings.from_env({"FLASHDEAL_ENV": "production", "SECRET_KEY": "x" * 40}).check()
    assert ok.secret_key == "x" * 40


def test_settings_parse_and_reject() -> None:
    s = Settings.from_env(
        {"DATABASE_URL": "postgresql://u:p@h/db", "REDIS_URL": "redis://:pw@h:1/2", "RATELIMIT_ENABLED": "false"}
    )
    assert s.database_url == "postgresql+psycopg://u:p@h/db"
    assert s.celery_broker_url == "redis://:pw@h:1/2" and s.ratelimit_enabled is False
    with pytest.raises(ConfigError, match="SESSION_IDLE_SECONDS"):
        Settings.from_env({"SESSION_IDLE_SECONDS": "ten"})


def test_healthz_and_readyz(client) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["checks"] == {"redis": "ok", "postgres": "ok"}


def test_readyz_503_when_dependencies_down(settings) -> None:
    app = create_app(
        settings.with_(redis_url="redis://127.0.0.1:1/0", database_url="postgresql+psycopg://postgres@127.0.0.1:1/x")
    )
    r = app.test_client().get("/readyz")
    assert r.status_code == 503
    assert r.json["checks"]["redis"].startswith("error") and r.json["checks"]["postgres"].startswith("error")


def test_openapi_describes_every_api_route(app, client) -> None:
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or not (rule.rule.startswith("/api") or rule.rule in ("/healthz", "/readyz")):
            continue
        path = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, f"{method} {rule.rule} missing from /openapi.json"
    signup = spec["paths"]["/api/auth/signup"]["post"]
    schema_ref = signup["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.endswith("/SignupIn")
    assert "email" in spec["components"]["schemas"]["SignupIn"]["properties"]
