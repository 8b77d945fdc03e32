"""Every notebook (stored as a jupytext percent script) runs top to bottom on the public API."""
import pathlib
import runpy

import matplotlib
import pytest

from conftest import REPO

NOTEBOOKS = sorted(pathlib.Path(REPO, "notebooks").glob("*.py"))


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, capsys):
  matplotlib.use("Agg")
  namespace = runpy.run_path(str(path), run_name="__main__")
  import matplotlib.pyplot as plt
  plt.close("all")
  if path.name.startswith("01_"):
    # The iterated maps end where the theory says: near 1 for plain ReLU, near 0 for weight mean.
    plain = namespace["traj"]["plain"]
    assert plain[-1] > 0.98 and all(b > a for a, b in zip(plain, plain[1:]))  # power law to 1
    assert abs(namespace["traj"]["weight mean"][-1]) < 1e-5
