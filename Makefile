# Two commands on a fresh clone: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup lock run test lint chaos bench profile stack-up stack-down clean

# The packages come from the lock (requirements/dev.txt: runtime, local stack, tests, benchmarks),
# dmd itself is installed editable on top, without resolving anything again.
$(STAMP): pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

## make lock: pin every package again from pyproject.toml (uv); runtime.txt is what the image installs,
## local.txt adds the local stack (compose), dev.txt adds tests and benchmarks (the Makefile)
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --no-header --annotation-style line -q
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(UV_COMPILE) --upgrade --extra local --extra test --extra bench -o requirements/dev.txt
	$(UV_COMPILE) --extra local -c requirements/dev.txt -o requirements/local.txt
	$(UV_COMPILE) -c requirements/dev.txt -o requirements/runtime.txt

## make run: the whole pipeline on the embedded local stack, with progress and a summary
run: setup
	$(BIN)/dmd demo

## make test: lint, format and type checks, then the unit and end-to-end tests (they start and stop their own stack)
test: setup lint
	$(BIN)/python -m pytest

## make lint: ruff (lint + format) and mypy, configured in pyproject.toml
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## make chaos: the fault suite at size (kills, freezes, lost messages, a re-saved sale, Redis / AWS /
## the provider down for a minute each, the provider throttling everything for two), figures printed
CHAOS_FANS   ?= 600
CHAOS_KILLS  ?= 8
CHAOS_OUTAGE ?= 60
CHAOS_THROTTLE ?= 120
chaos: setup
	DMD_CHAOS_FANS=$(CHAOS_FANS) DMD_CHAOS_KILLS=$(CHAOS_KILLS) DMD_CHAOS_OUTAGE_SECONDS=$(CHAOS_OUTAGE) \
		DMD_CHAOS_THROTTLE_SECONDS=$(CHAOS_THROTTLE) \
		$(BIN)/python -m pytest tests/chaos -s -p no:cacheprovider

## make bench: the benchmark suite on the local stack; figures to docs/benchmarks.md (+ .json)
## sizes are parameters, e.g. make bench BENCH_ARGS="--fans 1000000 --only fanout"
BENCH_ARGS ?=
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

## make profile PROFILE=generate|bridge|api: one hot path under pyinstrument, with the emulator's share
PROFILE ?= generate
profile: setup
	$(BIN)/python -m bench.profile $(PROFILE)

stack-up: setup
	$(BIN)/dmd stack up && $(BIN)/dmd provision >/dev/null

stack-down: setup
	$(BIN)/dmd stack down

clean:
	rm -rf $(VENV) .dmd *.egg-info
