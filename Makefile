# Two commands for users: `make serve` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed

# The checks type-check and test bench/ too, so they need its peers' libraries.
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: serve test lint typecheck isolation-check pytest bench soak attacks conformance clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "trio-enclave needs Python >= 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

serve: $(STAMP)
	$(VENV)/bin/enclave serve --dev --host $(HOST) --port $(PORT)

lint: $(BENCH_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(BENCH_STAMP)
	$(VENV)/bin/mypy

isolation-check: $(BENCH_STAMP)
	$(PY) -m isolation check app

pytest: $(BENCH_STAMP)
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=90

test: lint typecheck isolation-check pytest

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

bench: $(BENCH_STAMP)
	$(PY) -m bench run $(BENCH_ARGS)

# Bounded soak (10 min): churn, turns, cancels, drops; fails on RSS growth or fd leaks.
soak: $(BENCH_STAMP)
	$(PY) -m bench soak $(SOAK_ARGS)

# Each attack in turn while 1,000 well-behaved users chat; fails when p99 > 2x baseline.
attacks: $(BENCH_STAMP)
	$(PY) -m bench attacks $(ATTACK_ARGS)

# Autobahn|Testsuite (fuzzing client, cases 1-10; 12-13 where permessage-deflate is
# negotiated) against both transports' echo route; needs Python 2.7 (found via PATH or
# pyenv) and builds .venv-autobahn from tests/conformance/requirements-py27.txt.
conformance: $(STAMP)
	$(PY) -m tests.conformance $(CONFORMANCE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
