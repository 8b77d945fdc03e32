"""The public API: every function and class exported by `mimictheory`, `mimictheory.nn`,
`mimictheory.train` and `mimictheory.stax` has a docstring with a runnable example (the
doctests run them), every exported name exists, and the plotting functions leave matplotlib's
backend alone."""
import inspect
import subprocess
import sys

import pytest

import mimictheory as mt
import mimictheory.nn as mnn
import mimictheory.predict as mpredict
import mimictheory.stax as mstax
import mimictheory.train as mtrain

PUBLIC = [(mod.__name__, name, getattr(mod, name)) for mod in (mt, mnn, mtrain, mstax, mpredict)
          for name in mod.__all__]
CALLABLES = [(m, n, o) for m, n, o in PUBLIC if inspect.isfunction(o) or inspect.isclass(o)]


def test_every_exported_name_exists_and_is_unique():
  for mod in (mt, mnn, mtrain, mstax, mpredict):
    assert len(mod.__all__) == len(set(mod.__all__)), mod.__name__
    for name in mod.__all__:
      assert hasattr(mod, name), f"{mod.__name__}.{name}"


@pytest.mark.parametrize("module,name,obj", CALLABLES, ids=[f"{m}.{n}" for m, n, _ in CALLABLES])
def test_public_callable_has_a_docstring_with_an_example(module, name, obj):
  doc = inspect.getdoc(obj) or ""
  assert doc.strip(), f"{module}.{name} has no docstring"
  assert ">>>" in doc, f"{module}.{name}'s docstring has no example"


@pytest.mark.slow
def test_plotting_leaves_the_backend_alone():
  """In a fresh process with a non-Agg backend selected, drawing a phase diagram keeps it."""
  code = (
      "import matplotlib; matplotlib.use('svg'); import numpy as np, mimictheory as mt\n"
      "pd = mt.phase_diagram('erf', sw2=np.linspace(0.5, 3, 6), sb2=np.linspace(0, .2, 4))\n"
      "fig = mt.plot_phase_diagrams([pd]); import matplotlib.pyplot as plt\n"
      "from matplotlib.figure import Figure\n"
      "print(matplotlib.get_backend(), len(plt.get_fignums()), isinstance(fig, Figure),\n"
      "      fig._repr_png_()[0][:4] == b'\\x89PNG', fig._repr_png_()[1]['width'])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  # shown at 100 dpi (half the 200-dpi pixels): 10.5 in wide, about 1000 px once trimmed
  words = out.stdout.split()
  assert words[:4] == ["svg", "0", "True", "True"], out.stdout + out.stderr
  assert 900 < int(words[4]) < 1100


def test_readme_table_names_real_functions_and_tests():
  """Every test the README's "Which function computes what" table cites exists, and every
  function it names is public."""
  import pathlib
  import re
  repo = pathlib.Path(__file__).resolve().parents[1]
  readme = (repo / "README.md").read_text()
  table = readme.split("## Which function computes what")[1].split("\n## ")[0]
  rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
  assert len(rows) >= 10
  cited = 0
  for row in rows:
    cells = row.split(" | ")
    current = None
    for ref in re.findall(r"`([^`]+)`", cells[-1]):
      path, _, name = ref.rpartition("::")
      current = path or current
      source = (repo / "tests" / current).read_text()
      assert re.search(rf"^def {re.escape(name)}\(", source, re.M), ref
      cited += 1
    for ref in re.findall(r"`([A-Za-z_.]+)`", cells[1]):
      obj = ref.split(".")[-1]
      assert any(hasattr(m, obj) or hasattr(mt.Activation, obj) or hasattr(mstax.Network, obj)
                 or hasattr(mstax.Kernel, obj) for m in (mt, mnn, mstax, mpredict)), ref
  assert cited >= len(rows)
