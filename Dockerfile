# One image for every flashdeal process (web, nginx LB, workers, beat, flower); docker-compose.yml
# runs the same command lines as the Procfile through `sh -c`.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# nginx: the load balancer runs from this image too (deploy/nginx.conf, prefix under var/).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
# Registers `celery -A worker flashdeal` (the celery.commands entry point).
RUN pip install --no-cache-dir --no-deps -e . && mkdir -p var

# Every service's `command:` is one Procfile line, run by the shell like honcho does.
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["granian --interface wsgi --host 127.0.0.1 --port 8001 --workers 1 web.wsgi:app"]
