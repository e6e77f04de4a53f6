"""Code shared by the web nodes and the Celery workers: no Flask, no Celery here."""
