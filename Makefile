# Two commands set everything up on a fresh Linux machine with Python 3.11:
#   make demo   creates .venv, installs segflow, runs `dvc repro` on the embedded synthetic dataset
#   make test   same set-up, then runs the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all test-fast lint format bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (segflow needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

install: $(STAMP)

# dvc needs a git repo (or --no-scm); a tarball checkout gets a private one.
.dvc/config: | $(STAMP)
	@test -d .git || git init -q
	$(BIN)/dvc init -q || true
	$(BIN)/dvc config core.autostage false

demo: $(STAMP) .dvc/config
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Two pytest workers (a test module stays on one worker, with its fixtures): about half of the
# suite's time is spent waiting on Ray, MLflow and subprocess start-ups, which overlap.
# --durations lists the 30 slowest tests: CI must stay under 35 minutes, so the few `slow`
# end-to-end tests (1.5-4 min each) run only in `make test-all`.
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=30 -m "not slow"

test-all: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=30

test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check segflow pipelines tests benchmarks scripts
	$(BIN)/ruff format --check segflow pipelines tests benchmarks scripts

format: $(STAMP)
	$(BIN)/ruff format segflow pipelines tests benchmarks scripts
	$(BIN)/ruff check --fix segflow pipelines tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/loader.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
