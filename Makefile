# Two commands for a newcomer: `make run` (demo) and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: all run test bench lint typecheck unit integration clean

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

## make bench: ceilings, engine catch-up, naive baseline, latency, memory; writes bench-results.json.
bench: $(BIN)/attribution
	$(BIN)/attribution bench $(BENCH_ARGS)

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
