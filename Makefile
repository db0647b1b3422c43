# ticketsync task runner: CI calls these targets too (.ci/run).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help venv demo ui browser test lint emulator scaleout bench soak clean migrate check-sync

help:
	@echo "make demo      run the whole sync end to end on the embedded defaults (SQLite + local emulator)"
	@echo "make ui        the Airflow UI on 127.0.0.1 with the DAG, the emulator and sample requests (UI_ARGS=--help)"
	@echo "make test      install and run every test, in 3 processes (PostgreSQL and Redis on 127.0.0.1 are needed)"
	@echo "make lint      ruff and mypy"
	@echo "make emulator  run the ServiceNow emulator in the foreground on 127.0.0.1:8765"
	@echo "make scaleout  one DAG run on the real CeleryExecutor, mapped loaders on two workers (PostgreSQL + Redis)"
	@echo "make bench     benchmark: the DAG at 20 and 100 ms vs a bare C-lane client, a shared-cookie control, a sequential loop and a naive mapped DAG; writes docs/performance.md"
	@echo "make migrate   apply the source table's schema migrations (MIGRATE_ARGS=\"--conn-id ticket_source --sql\")"
	@echo "make soak      100,000 requests through the DAG with ~10% faults and two worker kills, then checks"
	@echo "make check-sync  check sync definitions against sys_dictionary (emulator; CHECK_SYNC_ARGS=--conn-id ID)"

# The virtual environment, rebuilt when a requirements file changes. Exact pins, full lock in constraints.txt.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PYTHONPATH=plugins:dev $(PY) scripts/demo.py

# Debian's Chromium for the browser test (tests/ui): Playwright drives it and never downloads a browser of its own.
$(CHROMIUM):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium

browser: $(CHROMIUM)

ui: $(STAMP)
	PYTHONPATH=plugins:dev $(PY) scripts/ui.py $(UI_ARGS)

# Every test, in PYTEST_WORKERS pytest-xdist processes (default 3; 0 runs them in this one). A test file stays on one
# worker (--dist loadfile: its module fixtures and its order hold); the slowest files start first (tests/conftest.py;
# --no-loadscope-reorder keeps that order: xdist would otherwise start the files with the most tests first).
# PYTEST_ARGS adds options, e.g. PYTEST_ARGS="-k soak --durations=20".
PYTEST_WORKERS ?= 3
test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check plugins dev dags tests scripts bench
	$(VENV)/bin/mypy

# Check sync definitions against sys_dictionary; CHECK_SYNC_ARGS="--conn-id servicenow_default my.yaml" for an instance.
check-sync: $(STAMP)
	PYTHONPATH=plugins:dev $(PY) scripts/check_sync.py $(CHECK_SYNC_ARGS)

emulator: $(STAMP)
	PYTHONPATH=plugins:dev $(PY) -m ticketsync_dev.emulator --port 8765

# A throw-away CeleryExecutor deployment on loopback; SCALEOUT_ARGS e.g. "--rows 10000 --loaders 8 --keep".
scaleout: $(STAMP)
	PYTHONPATH=plugins:dev $(PY) scripts/scaleout.py $(SCALEOUT_ARGS)

# BENCH_ARGS="--quick --no-write" for a smoke run; see bench/bench.py --help
bench: $(STAMP)
	PYTHONPATH=plugins:dev $(PY) bench/bench.py $(BENCH_ARGS)

clean:
	rm -rf .demo .airflow .artifacts .pytest_cache .mypy_cache .ruff_cache

# The soak (docs/reliability.md): SOAK_ARGS="--rows 5000" for the CI size. Needs PostgreSQL at 127.0.0.1:5432.
soak: $(STAMP)
	PYTHONPATH=plugins:dev $(PY) scripts/soak.py $(SOAK_ARGS)

# Schema migrations of the source table (docs/migrations.md): MIGRATE_ARGS="--conn-id ticket_source --sql" prints
# the SQL; without --sql / --status it applies them.
migrate: $(STAMP)
	PYTHONPATH=plugins $(PY) -m ticketsync.source.migrate $(MIGRATE_ARGS)
