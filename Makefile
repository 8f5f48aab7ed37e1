# The two commands a user needs: `make run` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# test processes (pytest-xdist); each test module, and the production tests as a whole, runs in one (tests/conftest.py)
TEST_WORKERS ?= 2
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-fast bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	# torch alone first: pip then takes the CPU wheel instead of a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

run: install  ## the default pipeline, end to end, in this repository's workspace
	$(VENV)/bin/oblivio run

test: install  ## the whole suite (what CI runs)
	$(PY) -m pytest -n $(TEST_WORKERS)

test-fast: install  ## unit tests only
	$(PY) -m pytest -n $(TEST_WORKERS) tests/unit

bench: install  ## benchmarks; prints the README's table
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache
