# Two commands on a fresh clone: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: help setup lock run unit test lint chaos bench profile stack-up stack-down clean
.DEFAULT_GOAL := help

## make help: this list
help:
	@grep -hE '^## ' $(firstword $(MAKEFILE_LIST)) | sed 's/^## //'

# The packages come from the lock (requirements/dev.txt: runtime, local stack, tests, benchmarks, plots),
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
	$(UV_COMPILE) --upgrade --extra local --extra test --extra bench --extra plots -o requirements/dev.txt
	$(UV_COMPILE) --extra local -c requirements/dev.txt -o requirements/local.txt
	$(UV_COMPILE) -c requirements/dev.txt -o requirements/runtime.txt

## make run: the whole pipeline on the embedded local stack, with progress and a summary
run: setup
	$(BIN)/dmd demo

# The tests come in tiers (a marker each, given by tests/conftest.py): unit (no socket at all),
# stack (a real service: the local stack or a server of the test's own), e2e (real processes of
# the Procfile), chaos (fault scenarios). xdist workers each start a stack of their own.
PYTEST       := $(BIN)/python -m pytest -p no:cacheprovider
TEST_WORKERS ?= 3
PYTEST_ARGS  ?=

## make unit: the tests that need no stack at all (sockets refused while they run); seconds
unit: setup
	$(PYTEST) -m unit -q $(PYTEST_ARGS)

## make test: lint, the unit tier, then the stack-backed and end-to-end tests on TEST_WORKERS xdist
## workers (each starts and stops its own moto server and simulators, on a Redis database of its own)
test: setup lint unit
	$(PYTEST) -m "stack or e2e" -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

## make lint: ruff (lint + format) and mypy, configured in pyproject.toml; docs/settings.md against the
## model; imports down the layers only (dmd_tasks/ops/layers.py); modules and functions of one size
## (dmd_tasks/ops/sizes.py); the CloudFormation template against CloudFormation's schemas (cfn-lint,
## warnings included; a rule ignored says why in the template's Metadata)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m dmd_tasks.ops.settings_doc --check
	$(BIN)/python -m dmd_tasks.ops.layers
	$(BIN)/python -m dmd_tasks.ops.sizes
	$(BIN)/cfn-lint deploy/cloudformation/dmd.yaml

## make chaos: the fault suite (kills, freezes, lost messages, a re-saved sale, Redis / AWS / the
## provider down, Redis back empty, AWS slow, the provider throttling everything), figures printed
## at the end. Small by default;
## at size: make chaos CHAOS_FANS=600 CHAOS_KILLS=8 CHAOS_OUTAGE=60 CHAOS_THROTTLE=120 CHAOS_SLOW=120
CHAOS_FANS     ?= 120
CHAOS_KILLS    ?= 5
CHAOS_OUTAGE   ?= 20
CHAOS_THROTTLE ?= $(CHAOS_OUTAGE)
CHAOS_SLOW     ?= $(CHAOS_OUTAGE)
CHAOS_WORKERS  ?= 2
## The scenarios timed against a design bound (marked `alone`: a bridge's takeover in seconds) run
## after the others, by themselves: beside another scenario starting a dozen processes on the same
## cores, a process could wait seconds for a core, and the bound measured the machine.
CHAOS_RUN = DMD_CHAOS_FANS=$(CHAOS_FANS) DMD_CHAOS_KILLS=$(CHAOS_KILLS) DMD_CHAOS_OUTAGE_SECONDS=$(CHAOS_OUTAGE) \
	DMD_CHAOS_THROTTLE_SECONDS=$(CHAOS_THROTTLE) DMD_CHAOS_SLOW_SECONDS=$(CHAOS_SLOW) $(PYTEST)
chaos: setup
	$(CHAOS_RUN) -m "chaos and not alone" -n $(CHAOS_WORKERS) --durations=25 $(PYTEST_ARGS); shared=$$?; \
	$(CHAOS_RUN) -m "chaos and alone" --durations=5 $(PYTEST_ARGS); alone=$$?; \
	test $$shared -eq 0 -a $$alone -eq 0

## make bench: the benchmark suite on the local stack; figures to docs/benchmarks.md (+ .json)
## sizes are parameters, e.g. make bench BENCH_ARGS="--fans 1000000 --only fanout"
BENCH_ARGS ?=
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

## make profile PROFILE=generate|bridge|api|send: one hot path under pyinstrument, with the emulator's share
PROFILE ?= generate
profile: setup
	$(BIN)/python -m bench.profile $(PROFILE)

stack-up: setup
	$(BIN)/dmd stack up && $(BIN)/dmd provision >/dev/null

stack-down: setup
	$(BIN)/dmd stack down

clean:
	rm -rf $(VENV) .dmd *.egg-info
