# geoguess: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-slow lint format train smoke bench serve clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv and install the project (editable) with its dev extras

# One pytest worker per core (`-n auto`, at most 8: each imports torch, and past a handful the
# longest test file bounds the time anyway); a file's tests stay on one worker (`loadfile`), so
# its module-scoped fixtures are built once. JOBS=0 runs in this one process (for --pdb).
JOBS ?= auto

test: $(VENV)/.installed ## Run the test suite but its slow end-to-end runs, one worker per core (ARGS= for pytest, JOBS=0 serial)
	WANDB_MODE=offline $(PY) -m pytest -q -m "not slow" -n $(JOBS) --maxprocesses=8 --dist loadfile $(ARGS)

test-slow: $(VENV)/.installed ## Run the slow end-to-end tests (sweeps, DDP, resume after a kill, ...)
	WANDB_MODE=offline $(PY) -m pytest -q -m slow $(ARGS)

lint: $(VENV)/.installed ## Check formatting and lint with ruff
	$(VENV)/bin/ruff format --check geoguess tests
	$(VENV)/bin/ruff check geoguess tests

format: $(VENV)/.installed ## Format and fix lint with ruff
	$(VENV)/bin/ruff format geoguess tests
	$(VENV)/bin/ruff check --fix geoguess tests

train: $(VENV)/.installed ## Train experiment=best_cpu on the embedded dataset, 4-5 CPU minutes (ARGS= for overrides)
	$(PY) -m geoguess.train experiment=best_cpu $(ARGS)

smoke: $(VENV)/.installed ## A two-minute training run on tiny settings
	$(PY) -m geoguess.train experiment=smoke $(ARGS)

bench: $(VENV)/.installed ## Measure loader, cache, training-step and metric speed into bench.json (ARGS= for overrides)
	$(PY) -m geoguess.bench $(ARGS)

serve: $(VENV)/.installed ## Serve the finished runs of outputs/ over HTTP with a map page, on 127.0.0.1:8000 (ARGS= for overrides)
	$(PY) -m geoguess.serve $(ARGS)

clean: ## Remove caches and build artefacts (keeps .venv and outputs/)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
