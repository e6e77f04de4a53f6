"""The Celery app of the persistence workers: ``celery -A worker worker -n worker1@%h``."""

from worker.celery_app import app

__all__ = ["app"]
