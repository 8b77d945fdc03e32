"""Every notebook (a jupytext percent script, paired with a generated .ipynb) runs top to bottom
on the public API, with small parameters, and its .ipynb is in sync with the script."""
import pathlib
import runpy

import matplotlib
import numpy as np
import pytest

from conftest import REPO

NOTEBOOKS = sorted(pathlib.Path(REPO, "notebooks").glob("*.py"))


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, capsys, monkeypatch):
  matplotlib.use("Agg")
  monkeypatch.setenv("MIMICTHEORY_NOTEBOOK_SMALL", "1")
  namespace = runpy.run_path(str(path), run_name="__main__")
  import matplotlib.pyplot as plt
  plt.close("all")
  if path.name.startswith("01_"):
    # The iterated maps end where the theory says: near 1 for plain ReLU, near 0 for weight mean.
    plain = namespace["traj"]["plain"]
    assert plain[-1] > 0.98 and all(b > a for a, b in zip(plain, plain[1:]))  # power law to 1
    assert abs(namespace["traj"]["weight mean"][-1]) < 1e-5
  if path.name.startswith("02_"):
    line = namespace["line"]
    assert abs(float(line.sw2[0]) - 1.0) < 1e-9  # tanh's critical line starts at σw² = 1
    assert np.argmax(namespace["xi"]) == np.argmin(np.abs(namespace["tanh"].sw2 -
                                                          namespace["critical"]))
  if path.name.startswith("03_"):
    assert -0.7 < namespace["slope"] < -0.3
    plain, tbar = namespace["corr"]["none"], namespace["corr"]["weight_mean"]
    assert plain[1][-1] > plain[1][0] and abs(tbar[1][-1]) < abs(tbar[1][0])
    gap = namespace["gap"]  # finite BN networks follow the exact theory, not Theorem 2
    assert np.all(gap.ntk_z < 2.0) and np.all(gap.paper_ntk_z > gap.ntk_z)


  if path.name.startswith("04_"):
    assert namespace["rms"] < 0.1
    assert namespace["final"]["mimic"] > 0.5  # chance is 0.1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ipynb_is_generated_from_the_script(path):
  """`make notebooks` writes the .ipynb from the script; a stale .ipynb fails here."""
  jupytext = pytest.importorskip("jupytext")
  ipynb = path.with_suffix(".ipynb")
  assert ipynb.exists(), f"{ipynb.name} missing: run make notebooks"
  cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]  # noqa: E731
  assert cells(jupytext.read(ipynb)) == cells(jupytext.read(path))
