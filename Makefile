# underhood: `make demo` runs the tour on the built-in model, `make test` the default test lane.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
APP_STAMP := $(VENV)/.installed-app

.PHONY: demo test test-slow lint format bench install install-dev explore clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[dev,app]"
	touch $@

$(APP_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[app]"
	touch $@

install: $(STAMP)
install-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/underhood demo --out underhood-out/demo

explore: $(APP_STAMP)
	$(BIN)/underhood explore

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(DEV_STAMP)
	$(BIN)/ruff format src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) underhood-out build *.egg-info src/*.egg-info
