# Two commands for a newcomer: `make run` (demo) and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: all run build test soak bench bench-rss bench-api lint typecheck unit integration clean

all: lint typecheck test

# The editable install also compiles the per-user rules with mypyc, in place (setup.py; the C compiler
# is the system's). ATTRIBUTION_PURE_BUILD=1 skips that where there is no C compiler.
$(BIN)/attribution: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

## make build: recompile the mypyc modules when a compiled module's source changed since the last build
## (attribution.compiled compares their SHA-256; until then the package quietly runs the .py sources).
build: $(BIN)/attribution
	@if [ "$$ATTRIBUTION_PURE_BUILD" != 1 ] && ! env -u ATTRIBUTION_PURE_PYTHON $(BIN)/python -c \
		'import sys, attribution.compiled as c; sys.exit(c.BUILD != c.MYPYC)'; then \
		echo "build: compiling with mypyc"; $(BIN)/python -m pip install --quiet --no-deps -e .; fi

## make run: embedded broker + Redis (unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set), topics,
## demo settings, a worker, demo traffic and live tallies. Ctrl-C stops everything.
run: build
	$(BIN)/attribution demo

## make test: unit + property tests, then integration tests against a real broker and Redis, on the
## compiled build; then the unit + property tests again on the pure-Python sources (the reference).
test: build
	$(BIN)/python -m pytest
	ATTRIBUTION_PURE_PYTHON=1 $(BIN)/python -m pytest tests/unit

## make soak: the long chaos soak (1M events, >= 20 SIGKILLs, single Redis and Redis Cluster);
## `make test` runs the same suite with 50k events and 3 kills.
SOAK_EVENTS ?= 1000000
SOAK_KILLS  ?= 20
soak: build
	SOAK_EVENTS=$(SOAK_EVENTS) SOAK_KILLS=$(SOAK_KILLS) $(BIN)/python -m pytest -s -p no:cacheprovider \
		--timeout 3600 tests/integration/test_soak.py

## make bench: ceilings, engine catch-up, naive baseline, latency, memory, 2 workers vs 1 and the
## catch-up at 10k/100k/1M users, with the round-2 table; writes bench-results.json. BENCH_ARGS adds
## to (and overrides) BENCH_ROUND2, e.g. BENCH_ARGS="--workers 0 --no-users" or "--scale 0.1".
BENCH_ROUND2 ?= --workers 2 --users
bench: build
	$(BIN)/attribution bench $(BENCH_ROUND2) $(BENCH_ARGS)

## make bench-rss: a worker under 2.5k events/s (a million users) for 10 minutes, its RSS and lag sampled every 5 s.
RSS_SECONDS ?= 600
bench-rss: build
	$(BIN)/attribution bench --rss-only --rss-seconds $(RSS_SECONDS) --out bench-rss.json

## make bench-api: a worker and `attribution serve` over 1,000 campaigns' tallies, then 8 keep-alive
## clients for 20 s on loopback; requests/s and p50/p99/max per endpoint, under "api" in bench-results.json.
bench-api: build
	$(BIN)/attribution bench --api-only $(BENCH_API_ARGS)

unit: build
	$(BIN)/python -m pytest tests/unit

integration: build
	$(BIN)/python -m pytest tests/integration

lint: $(BIN)/attribution
	$(BIN)/ruff check attribution tests setup.py
	$(BIN)/ruff format --check attribution tests setup.py

typecheck: $(BIN)/attribution
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info attribution/_compiled.py
	find . -name '*.so' -not -path './.venv/*' -delete
