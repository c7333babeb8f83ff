# enclavekit — every target sets itself up first (idempotent), so a fresh clone needs nothing else.
SHELL := /bin/bash
ROOT := $(CURDIR)
# The project's own Node.js 22 and CDK CLI come first, then the project's venv.
export PATH := $(ROOT)/node_modules/node/bin:$(ROOT)/node_modules/.bin:$(ROOT)/.venv/bin:$(PATH)
PY := $(ROOT)/.venv/bin/python
# The local endpoint's loopback port: `make demo PORT=4600` when 4599 is taken.
PORT ?= 4599
# `make test`'s pytest-xdist workers: 2 (CI has 2 cores, and the suite mostly waits on
# subprocesses). `make test PYTEST_ARGS=-n0` runs it serially; more arguments may follow,
# e.g. `make test PYTEST_ARGS="-n0 tests/test_lint.py"`.
PYTEST_ARGS ?= -n 2

.PHONY: setup demo test bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup  ## deploy the sample app locally and verify it end to end
	@$(PY) -m enclavekit demo --port $(PORT)

test: setup  ## the whole test suite, on 2 workers; the slowest tests listed at the end
	@$(PY) -m pytest -q --durations=20 $(PYTEST_ARGS)

bench: setup  ## benchmarks, each reported as a ratio against a baseline measured in the same run
	@$(PY) -m bench

lint: setup  ## ruff
	@$(ROOT)/.venv/bin/ruff check . && $(ROOT)/.venv/bin/ruff format --check .

clean:
	rm -rf cdk.out .enclavekit build *.egg-info
