"""Phase plots draw every cell at its own (σb², σw²), whatever the order and spacing of the grid
(issue 20, item 6): was imshow(extent=[first, last]), which misplaced them."""
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.collections import QuadMesh

import mimictheory as mt
from conftest import REPO


def _cell_value(mesh: QuadMesh, x: float, y: float):
  """The value of the mesh cell containing (x, y), read from the drawn mesh itself."""
  corners = mesh.get_coordinates()  # (rows + 1, cols + 1, 2)
  xs, ys = corners[0, :, 0], corners[:, 0, 1]
  j = np.searchsorted(xs, x) - 1
  i = np.searchsorted(ys, y) - 1
  assert xs[j] < x < xs[j + 1] and ys[i] < y < ys[i + 1]
  return np.ma.getdata(mesh.get_array()).reshape(len(ys) - 1, len(xs) - 1)[i, j]


@pytest.mark.parametrize("sw2,sb2", [
    ([1.0, 3.0, 2.0, 1.5], [0.0, 0.1, 0.05]),     # unsorted
    ([1.0, 1.9, 2.1, 4.0], [0.0, 0.01, 0.3]),     # uneven
    (np.linspace(2, 1, 5), [0.3, 0.0]),            # descending
])
def test_each_cell_is_drawn_at_its_coordinates(sw2, sb2):
  pd = mt.phase_diagram("relu", sw2=np.asarray(sw2), sb2=np.asarray(sb2))
  fig = mt.plot_phase_diagram(pd)
  chi_axis = fig.axes[0]
  mesh = next(c for c in chi_axis.collections if isinstance(c, QuadMesh))
  for i, w in enumerate(pd.sw2):
    for j, b in enumerate(pd.sb2):
      if pd.regime[i, j] >= 3:  # q* = 0 or ∞: drawn by the regime overlay instead
        assert np.isnan(_cell_value(mesh, b, w))
        continue
      assert _cell_value(mesh, b, w) == pytest.approx(pd.chi1[i, j], rel=1e-12)
      # ReLU: χ1 = σw²/2, so a cell lies wholly on one side of the critical line σw² = 2
      assert (_cell_value(mesh, b, w) < 1) == (w < 2)
  x0, x1 = chi_axis.get_xlim()
  y0, y1 = chi_axis.get_ylim()
  assert x0 < min(sb2) and x1 > max(sb2) and y0 < min(sw2) and y1 > max(sw2)


def test_cli_phase_on_an_unsorted_grid(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "mimictheory.cli", "phase", "--quiet", "--activation", "relu",
       "--norm", "none", "--sw2", "1,3,2,1.5", "--sb2", "0,0.1,0.05", "--out", str(tmp_path)],
      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr
  data = np.load(tmp_path / "phase.npz")
  assert list(data["sw2"]) == [1, 3, 2, 1.5]  # the data keep the user's order
  assert (tmp_path / "phase.png").stat().st_size > 10_000


def test_an_empty_grid_is_refused():
  with pytest.raises(ValueError, match="sw2 must be a one-dimensional grid of at least one"):
    mt.phase_diagram(sw2=np.array([]))
