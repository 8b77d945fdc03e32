# Two commands do everything on a fresh machine: `make figures` and `make test`.
# Each creates .venv and installs the package with what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

NT_VENV  := .nt-env
NT_STAMP := $(NT_VENV)/.installed

.PHONY: figures test test-fast bench memory phase crosscheck notebooks nt-env clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

## The neural-tangents reference environment (its own pinned JAX; no tensorflow).
nt-env: $(NT_STAMP)
$(NT_STAMP): requirements-nt.txt
	test -x $(NT_VENV)/bin/python || $(PYTHON) -m venv $(NT_VENV)
	$(NT_VENV)/bin/python -m pip install --quiet -r requirements-nt.txt
	$(NT_VENV)/bin/python -m pip install --quiet --no-deps neural-tangents==0.6.5
	touch $(NT_STAMP)

## Regenerate the figures into figures/ (the main job).
figures: $(STAMP)
	$(BIN)/mimictheory figures --out figures

## Run the whole test suite (doctests included, the neural-tangents cross-check among them);
## fails if no test runs.
test: $(STAMP) $(NT_STAMP)
	MIMICTHEORY_NT_PYTHON=$(NT_VENV)/bin/python MIMICTHEORY_REQUIRE_NT=1 \
	  $(BIN)/python -m pytest -n 2 -q -rs --durations=10

## Compare kernels with neural-tangents; writes benchmarks/crosscheck/crosscheck.{md,json}.
crosscheck: $(STAMP) $(NT_STAMP)
	$(BIN)/mimictheory crosscheck --nt-python $(NT_VENV)/bin/python --out benchmarks/crosscheck

## Phase diagram from the command line, e.g. make phase ARGS="--activation erf"
phase: $(STAMP)
	$(BIN)/mimictheory phase $(ARGS)

## Compiled training-step memory, BN against MimicNorm, for every model.
memory: $(STAMP)
	$(BIN)/python benchmarks/memory.py

## The .ipynb notebooks, generated from the jupytext scripts in notebooks/ (the source).
notebooks: $(STAMP)
	$(BIN)/jupytext --to ipynb --update notebooks/*.py

## Benchmarks (ratios against references timed in the same run); rewrites the table in
## benchmarks/README.md with the machine and its load. Run it on a quiet machine.
bench: $(STAMP) $(NT_STAMP)
	MIMICTHEORY_NT_PYTHON=$(NT_VENV)/bin/python $(BIN)/python benchmarks/run.py --markdown benchmarks/README.md

clean:
	rm -rf $(VENV) $(NT_VENV) .pytest_cache .hypothesis
