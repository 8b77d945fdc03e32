# Two commands do everything on a fresh machine: `make figures` and `make test`.
# Each creates .venv and installs the package with what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

NT_VENV  := .nt-env
NT_STAMP := $(NT_VENV)/.installed

.PHONY: figures test test-slow test-all lint docs bench bench-conv bench-predict bench-out-of-core bench-gpu memory phase crosscheck notebooks lab lock nt-env clean

## The main environment, installed from the exact versions in constraints.txt (pyproject.toml
## keeps the ranges; `make lock` refreshes the pins).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
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

PYTEST := MIMICTHEORY_NT_PYTHON=$(NT_VENV)/bin/python MIMICTHEORY_REQUIRE_NT=1 \
	  $(BIN)/python -m pytest -n 2 -q -rs --durations=10

## The check: lint, the API reference (warnings are errors), then the test suite without the
## tests marked slow (doctests, a notebook in a Jupyter kernel and the neural-tangents
## cross-check included); under 10 minutes on 2 cores. Fails if no test runs.
test: lint docs $(STAMP) $(NT_STAMP)
	$(PYTEST) -m "not slow"

## The tests marked slow: every model at size, the other notebooks in a kernel, deep and wide
## Monte Carlo, the full neural-tangents grid (about 15 minutes). CI runs it after `make test`.
test-slow: $(STAMP) $(NT_STAMP)
	$(PYTEST) -m slow

## Everything: `make test`, then `make test-slow`.
test-all: test test-slow

lint: $(STAMP)
	$(BIN)/ruff check .

## The API reference (Sphinx, autodoc + napoleon + MyST) into docs/_build/html.
docs: $(STAMP)
	$(BIN)/python -m sphinx -E -W --keep-going -q -b html docs docs/_build/html

## Pin the main environment's current versions into constraints.txt.
lock: $(STAMP)
	{ head -n 2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^mimictheory'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

## Compare kernels with neural-tangents; writes benchmarks/crosscheck/crosscheck.{md,json}.
crosscheck: $(STAMP) $(NT_STAMP)
	$(BIN)/mimictheory crosscheck --nt-python $(NT_VENV)/bin/python --out benchmarks/crosscheck

## Phase diagram from the command line, e.g. make phase ARGS="--activation erf"
phase: $(STAMP)
	$(BIN)/mimictheory phase $(ARGS)

## Compiled training-step memory, BN against MimicNorm, for every model.
memory: $(STAMP)
	$(BIN)/python benchmarks/memory.py

## Execute the notebooks (jupytext scripts in notebooks/, the source) in a Jupyter kernel at
## full size and write the .ipynb files with their outputs.
notebooks: $(STAMP)
	$(BIN)/python notebooks/_execute.py

## JupyterLab in the project's environment, opened on notebooks/.
lab: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[lab]"
	$(BIN)/jupyter lab --notebook-dir=notebooks

## Benchmarks (ratios against references timed in the same run); rewrites the table in
## benchmarks/README.md with the machine and its load. Run it on a quiet machine.
bench: $(STAMP) $(NT_STAMP)
	MIMICTHEORY_NT_PYTHON=$(NT_VENV)/bin/python $(BIN)/python benchmarks/run.py --markdown benchmarks/README.md
	$(MAKE) bench-conv
	$(MAKE) bench-predict

## Training dynamics: mimictheory.predict against neural-tangents' predict at N = 4000 / 1000,
## 100 times (benchmarks/README.md's predict table).
bench-predict: $(STAMP) $(NT_STAMP)
	MIMICTHEORY_NT_PYTHON=$(NT_VENV)/bin/python $(BIN)/python benchmarks/predict.py --markdown benchmarks/README.md

## Gram matrices on disk at scale: N = 20,000 float64 and 50,000 float32 (20 GB of files in a
## temporary folder), tanh at 20,000, against the in-memory path (benchmarks/README.md)
bench-out-of-core: $(STAMP)
	$(BIN)/python benchmarks/out_of_core.py --markdown benchmarks/README.md

## Convolutional kernels against neural-tangents, N = 1000 in tiles with its peak memory
## (benchmarks/README.md's conv table).
bench-conv: $(STAMP) $(NT_STAMP)
	MIMICTHEORY_NT_PYTHON=$(NT_VENV)/bin/python $(BIN)/python benchmarks/conv.py --markdown benchmarks/README.md

## Step time, images/s and device peak of BN against MimicNorm, kernels at N = 20,000 (GPU).
bench-gpu: $(STAMP)
	bash benchmarks/gpu.sh

clean:
	rm -rf $(VENV) $(NT_VENV) .pytest_cache .hypothesis docs/_build
