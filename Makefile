# The local stack and the main jobs. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
BROKERS ?= 1
EVENTS ?= 1000000
RATE ?= 0
PYTEST_ARGS ?=
N ?= 5
BENCH_ARGS ?=
CHAOS_ARGS ?=
MONITORING ?= 0
export BROKERS

.PHONY: help install up down status demo test test-fast test-repeat bench chaos clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: .data/.python-deps  ## pip-install the pinned Python dependencies

# re-installed only when pyproject.toml changes
.data/.python-deps: pyproject.toml
	$(PYTHON) -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
	@mkdir -p .data && touch $@

up: install  ## start Kafka (BROKERS=1|3) and Postgres, migrate the ledger; MONITORING=1: Prometheus + dashboard
	@infra/kafka.sh up
	@infra/postgres.sh up
	@if [ "$(MONITORING)" = 1 ]; then infra/prometheus.sh up; fi

down:  ## stop what `make up` started
	@infra/prometheus.sh down
	@infra/kafka.sh down
	@infra/postgres.sh down

status:  ## show the local stack
	@infra/kafka.sh status
	@infra/postgres.sh status
	@infra/prometheus.sh status

demo: up  ## the main job end to end on embedded ClickHouse, ending with verify's verdict
	@EVENTS=$(EVENTS) $(PYTHON) -m experiments.demo --events $(EVENTS)

test: up  ## the test suite against the real services
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-fast: install  ## unit tests only (no services)
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

test-repeat: up  ## the integration tests N times (N=5); lists every test that failed at least once, with counts
	$(PYTHON) tests/repeat.py --runs $(N) $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

bench: up  ## throughput / latency benchmark, ends with one JSON line (EVENTS default 5M here; BENCH_ARGS=--help)
	$(PYTHON) -m experiments.bench --events $(if $(filter command line environment,$(origin EVENTS)),$(EVENTS),5000000) \
		--rate $(RATE) $(BENCH_ARGS)

chaos: up  ## one run with every fault at once, then verify; report in docs/chaos/ (CHAOS_ARGS=--help)
	$(PYTHON) -m experiments.chaos $(CHAOS_ARGS)

clean:  ## remove local data (Kafka logs, embedded ClickHouse, LevelDB state)
	rm -rf .data
