"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient + ipykernel, small
sizes), shows at least one plot, and ends where the theory says; the committed .ipynb files are
in sync with their jupytext sources and carry their outputs."""
import importlib.util
import pathlib

import pytest

from conftest import REPO as _REPO

REPO = pathlib.Path(_REPO)

_spec = importlib.util.spec_from_file_location("_execute", REPO / "notebooks" / "_execute.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)
NOTEBOOKS = runner.sources()

# Checks run in the notebook's own kernel after its last cell (its variables are in scope).
CHECKS = {
    "01": """
plain = traj["plain"]
assert plain[-1] > 0.98 and all(b > a for a, b in zip(plain, plain[1:])), plain  # power law to 1
assert abs(traj["weight mean"][-1]) < 1e-5
""",
    "02": """
assert abs(float(line.sw2[0]) - 1.0) < 1e-9  # tanh's critical line starts at σw² = 1
assert np.argmax(xi) == np.argmin(np.abs(tanh.sw2 - critical))
""",
    "03": """
assert -0.7 < slope < -0.3, slope
plain, tbar = corr["none"], corr["weight_mean"]
assert plain[1][-1] > plain[1][0] and abs(tbar[1][-1]) < abs(tbar[1][0])
assert np.all(gap.ntk_z < 2.0) and np.all(gap.paper_ntk_z > gap.ntk_z)  # exact BN theory wins
""",
    "04": """
assert rms < 0.1, rms
assert final["mimic"] > 0.5, final  # chance is 0.1
""",
    "06": """
assert curves.predicted_train[-1] < 0.5 * curves.predicted_train[0]
assert np.all(np.isfinite(curves.train_loss)) and limit.monotone_low < limit.high
""",
    "05": """
import numpy as np
assert np.isclose(state["chi1"], 1.0), state  # ReLU at (2, 0) without normalisation: critical
assert state["images"] >= 3
""",
}


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 5
  assert {p.name[:2] for p in NOTEBOOKS} == set(CHECKS)


# One notebook runs in the default tier; the others (1-2 min each in a kernel) in the slow one.
@pytest.mark.parametrize("path", [p if p.name.startswith("01") else
                                  pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS],
                         ids=lambda p: p.name)
def test_notebook_executes_in_a_kernel(path):
  nb = runner.execute(path, small=True, extra_cells=[CHECKS[path.name[:2]]], timeout=900)
  assert runner.images(nb) >= 1, f"{path.name} shows no plot"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_ipynb_is_in_sync_and_has_outputs(path):
  """`make notebooks` writes the .ipynb from the script with its outputs; a stale .ipynb, or
  one without its plots, fails here."""
  import jupytext
  ipynb = path.with_suffix(".ipynb")
  assert ipynb.exists(), f"{ipynb.name} missing: run make notebooks"
  cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]  # noqa: E731
  committed = jupytext.read(ipynb)
  assert cells(committed) == cells(jupytext.read(path)), f"{ipynb.name} is stale"
  assert runner.images(committed) >= 1, f"{ipynb.name} has no plot outputs: make notebooks"
  errors = [o for c in committed.cells for o in c.get("outputs", ()) if o.output_type == "error"]
  assert not errors, f"{ipynb.name} was committed with an error output"
  # What a reader saw instead of a plot or a widget (issue 20, item 15)
  texts = ["".join(o.get("data", {}).get("text/plain", "")) for c in committed.cells
           for o in c.get("outputs", ())]
  stray = [t[:60] for t in texts if "<matplotlib.legend.Legend" in t or "interactive(children" in t]
  assert not stray, f"{ipynb.name} shows reprs instead of pictures: {stray}"
  low = [o["metadata"]["image/png"] for c in committed.cells for o in c.get("outputs", ())
         if "image/png" in o.get("metadata", {}) and o["metadata"]["image/png"].get("width", 999)
         < 400]
  assert not low, f"{ipynb.name} has figures drawn below 400 px: {low}"


def test_runner_finds_only_numbered_notebooks():
  assert all(p.name[:2].isdigit() for p in NOTEBOOKS)
  assert pathlib.Path(runner.__file__).name not in {p.name for p in NOTEBOOKS}
