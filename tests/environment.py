"""This test run: the project root, its private Redis key prefix and the environment of the processes it starts."""

from __future__ import annotations

import os
import uuid

from harness.processes import ROOT
from shared.settings import Settings

__all__ = ["ROOT", "RUN_PREFIX", "base_env"]

RUN_PREFIX = f"t{uuid.uuid4().hex[:8]}:"


def base_env() -> dict[str, str]:
    """Environment for processes started by tests: same services, this run's key prefix."""
    settings = Settings.from_env()
    env = dict(os.environ)
    env.update(
        FLASHDEAL_ENV="test",
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        CELERY_BROKER_URL=settings.celery_broker_url,
        FLASHDEAL_KEY_PREFIX=RUN_PREFIX,
        PYTHONPATH=str(ROOT),
    )
    return env
