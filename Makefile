# leanvision: `make demo` runs the main job, `make test` the test suite. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the suite runs in this many pytest-xdist workers (one per core of the 2-core machine); the
# tests of one file stay on one worker, so module fixtures (kernel builds, Ray) run once
JOBS   ?= 2

.PHONY: demo test lint format bench-ghost results clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/leanvision quickstart

test: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks tools
	$(VENV)/bin/ruff check --fix src tests benchmarks tools

# docs/RESULTS.md is generated from the committed benchmark JSON, never typed by hand.
results: $(STAMP)
	$(VENV)/bin/leanvision report benchmarks/results -o docs/RESULTS.md

clean:
	rm -rf runs .pytest_cache .ruff_cache
