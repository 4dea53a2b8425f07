# Two commands for a newcomer: `make run` (demo) and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: all run test soak bench bench-rss bench-api lint typecheck unit integration clean

all: lint typecheck test

$(BIN)/attribution: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

## make run: embedded broker + Redis (unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set), topics,
## demo settings, a worker, demo traffic and live tallies. Ctrl-C stops everything.
run: $(BIN)/attribution
	$(BIN)/attribution demo

## make test: unit + property tests, then integration tests against a real broker and Redis.
test: $(BIN)/attribution
	$(BIN)/python -m pytest

## make soak: the long chaos soak (1M events, >= 20 SIGKILLs, single Redis and Redis Cluster);
## `make test` runs the same suite with 50k events and 3 kills.
SOAK_EVENTS ?= 1000000
SOAK_KILLS  ?= 20
soak: $(BIN)/attribution
	SOAK_EVENTS=$(SOAK_EVENTS) SOAK_KILLS=$(SOAK_KILLS) $(BIN)/python -m pytest -s -p no:cacheprovider \
		--timeout 3600 tests/integration/test_soak.py

## make bench: ceilings, engine catch-up, naive baseline, latency, memory; writes bench-results.json.
bench: $(BIN)/attribution
	$(BIN)/attribution bench $(BENCH_ARGS)

## make bench-rss: a worker under 2.5k events/s (a million users) for 10 minutes, its RSS and lag sampled every 5 s.
RSS_SECONDS ?= 600
bench-rss: $(BIN)/attribution
	$(BIN)/attribution bench --rss-only --rss-seconds $(RSS_SECONDS) --out bench-rss.json

## make bench-api: a worker and `attribution serve` over 1,000 campaigns' tallies, then 8 keep-alive
## clients for 20 s on loopback; requests/s and p50/p99/max per endpoint, under "api" in bench-results.json.
bench-api: $(BIN)/attribution
	$(BIN)/attribution bench --api-only $(BENCH_API_ARGS)

unit: $(BIN)/attribution
	$(BIN)/python -m pytest tests/unit

integration: $(BIN)/attribution
	$(BIN)/python -m pytest tests/integration

lint: $(BIN)/attribution
	$(BIN)/ruff check attribution tests
	$(BIN)/ruff format --check attribution tests

typecheck: $(BIN)/attribution
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
