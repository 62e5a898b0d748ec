# The local stack and the main jobs. `make help` lists the targets.
#
# Every target runs Python from .venv, created on first use with the first python3 on the
# PATH (Debian's externally managed system Python is never pip-installed into). The infra
# scripts and the experiments get the same interpreter through $PYTHON.
SHELL := /bin/bash
SYSTEM_PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BROKERS ?= 1
EVENTS ?= 1000000
RATE ?= 0
PYTEST_ARGS ?=
# make test's pytest workers: the suite mostly waits on Kafka, Postgres and its processes
# (~1.1 of 2 cores busy with two workers), so two halve its wall time on this machine
TEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal)
N ?= 5
BENCH_ARGS ?=
CHAOS_ARGS ?=
MONITORING ?= 0
export BROKERS
export PYTHON := $(abspath $(PY))

.PHONY: help install up down status demo test test-fast test-repeat bench chaos clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(VENV)/.deps  ## create .venv and install the pinned Python dependencies into it

# the interpreter: python3 -m venv, with Debian's python3-venv installed first where it is missing
$(PY):
	@if ! $(SYSTEM_PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  echo "make: $(SYSTEM_PYTHON) has no venv/ensurepip: installing Debian's python3-venv"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	fi
	rm -rf $(VENV)
	$(SYSTEM_PYTHON) -m venv $(VENV)

# the dependencies: installed again only when pyproject.toml changes (or .venv is new)
$(VENV)/.deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

up: install  ## start Kafka (BROKERS=1|3) and Postgres, migrate the ledger; MONITORING=1: Prometheus + dashboard
	@infra/kafka.sh up
	@infra/postgres.sh up
	@if [ "$(MONITORING)" = 1 ]; then infra/prometheus.sh up; fi

down:  ## stop what `make up` started
	@infra/prometheus.sh down
	@infra/kafka.sh down
	@infra/postgres.sh down

status:  ## show the local stack and, when it is up, where the pipeline stands (python -m app.status)
	@infra/kafka.sh status
	@infra/postgres.sh status
	@infra/prometheus.sh status
	@if [ ! -x $(PY) ]; then echo "(make install, then make status shows python -m app.status too)"; \
	elif infra/postgres.sh status | grep -q ' up at '; then \
	  echo; $(PY) -m app.status; fi

demo: up  ## the main job end to end on embedded ClickHouse, ending with verify's verdict
	@EVENTS=$(EVENTS) $(PY) -m experiments.demo --events $(EVENTS)

test: up  ## the test suite against the real services (TEST_WORKERS=2 pytest workers; 1 runs it in one process)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install  ## unit tests only (no services)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-repeat: up  ## the integration tests N times (N=5); lists every test that failed at least once, with counts
	$(PY) tests/repeat.py --runs $(N) -- $(XDIST) $(PYTEST_ARGS)

bench: up  ## throughput / latency benchmark, ends with one JSON line (EVENTS default 5M here; BENCH_ARGS=--help)
	$(PY) -m experiments.bench --events $(if $(filter command line environment,$(origin EVENTS)),$(EVENTS),5000000) \
		--rate $(RATE) $(BENCH_ARGS)

chaos: up  ## one run with every fault at once, then verify; report in docs/chaos/ (CHAOS_ARGS=--help)
	$(PY) -m experiments.chaos $(CHAOS_ARGS)

clean:  ## remove local data (Kafka logs, embedded ClickHouse, LevelDB state); .venv stays
	rm -rf .data
