# Two commands do everything on a fresh machine: `make figures` and `make test`.
# Each creates .venv and installs the package with what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: figures test test-fast bench phase clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

## Regenerate the figures into figures/ (the main job).
figures: $(STAMP)
	$(BIN)/mimictheory figures --out figures

## Run the whole test suite (doctests included); fails if no test runs.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

## Phase diagram from the command line, e.g. make phase ARGS="--activation erf"
phase: $(STAMP)
	$(BIN)/mimictheory phase $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
