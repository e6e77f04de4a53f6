# flashdeal: `make up` runs the whole stack, `make test` runs the whole suite.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The suite's database (it drops and rebuilds its schema); a second checkout sets TEST_DB=flashdeal_test_NAME.
TEST_DB ?= flashdeal_test

.PHONY: up urls test test-fast test-unit test-system faults venv lint bench migrate seed clean

venv: $(STAMP)

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@# The runtime lock (what the image gets) and the test and bench lock on top of it.
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
	@# Registers the `celery flashdeal` sub-command (celery.commands entry point).
	@PYTHONWARNINGS=ignore $(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

## up: install, find or start Redis and PostgreSQL, migrate, seed, run the stack (Ctrl-C stops it)
up: venv
	@$(PY) scripts/ensure_nginx.py
	@eval "$$($(PY) scripts/ensure_services.py)"; \
	$(PY) scripts/manage.py migrate; \
	$(PY) scripts/manage.py seed; \
	exec $(PY) scripts/manage.py run

## urls: print the running stack's URLs and credentials again (make up prints them at start and when ready)
urls: venv
	@$(PY) scripts/manage.py urls

## test: install, find or start services, run the whole suite (every tier) against the real Redis and PostgreSQL
test: venv
	@eval "$$($(PY) scripts/ensure_services.py $(TEST_DB))"; \
	$(VENV)/bin/ruff check . ; \
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## test-fast: the unit and integration tiers, in-process only (no web node, worker or private Redis started)
test-fast: venv
	@eval "$$($(PY) scripts/ensure_services.py $(TEST_DB))"; \
	$(VENV)/bin/ruff check . ; \
	$(VENV)/bin/pytest tests/unit tests/integration $(PYTEST_ARGS)

## test-unit: the unit tier alone: no services needed (nothing is found or started)
test-unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

## test-system: the system tier (real processes, faults, browser, deploy checks)
test-system: venv
	@eval "$$($(PY) scripts/ensure_services.py $(TEST_DB))"; \
	$(VENV)/bin/pytest tests/system $(PYTEST_ARGS)

## faults: every nemesis under load on a Sentinel stack (and a cluster), judged by the history checker; prints the table (docs/faults.md)
FAULTS_DB ?= flashdeal_faults
faults: venv
	@eval "$$($(PY) scripts/ensure_services.py $(FAULTS_DB))"; \
	$(PY) -m faults.matrix $(FAULTS_ARGS)

## bench: strategies, burst and the Locust scenario into bench/results/ (CSV, Markdown, PNG; ~8 min, 127.0.0.1 only)
bench: venv
	@$(PY) scripts/ensure_nginx.py
	@command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }
	$(PY) -m bench.report $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf var/run
