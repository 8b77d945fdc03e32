"""The import order of the package (issue 22): theory below Monte Carlo below training below
experiments, figures and the command line; nothing in `mimictheory._src` imports the public
package or anything above its own layer. Read from the source (an AST walk), every import
counted, those inside functions too."""
import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "mimictheory" / "_src"

# module -> layer; a module may import its own layer or lower ones
LAYERS = {
    # 0: utilities
    "checks": 0, "precision": 0, "norms": 0, "io": 0, "krylov": 0, "distributed": 0,
    # 1-4: the theory; the description (stax) below the functions of loose arguments over it
    "activations": 1, "tables": 1, "maps": 2, "batch_norm": 2, "gram": 2, "out_of_core": 2,
    "phase": 3, "signals": 3, "stax": 3, "kernels": 4, "residual": 4, "predict": 4,
    # 5: finite networks and Monte Carlo against the theory
    "finite": 5, "experiments": 5, "dynamics": 5,
    # 6: training (Flax models, data, the loop, its memory)
    "nn": 6, "models": 6, "stax_flax": 6, "data": 6, "run_folder": 6, "train": 6, "memory": 6,
    # 7: experiments, figures, cross-checks
    "plotting": 7, "figure_data": 7, "figures": 7, "reproduce": 7, "ablation": 7,
    "crosscheck": 7,
    # the neural-tangents side runs in another environment: it imports nothing of ours
    "nt_reference": -1,
}


def _imports(path):
  """(line, imported mimictheory module path) of every import in the file."""
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mimictheory"):
      if node.module == "mimictheory._src":
        for alias in node.names:
          yield node.lineno, f"mimictheory._src.{alias.name}"
      else:
        yield node.lineno, node.module
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("mimictheory"):
          yield node.lineno, alias.name


def test_every_module_has_a_layer():
  modules = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
  assert modules == set(LAYERS), modules ^ set(LAYERS)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_no_module_imports_upwards_or_the_public_package(module):
  layer = LAYERS[module]
  for line, target in _imports(SRC / f"{module}.py"):
    assert target.startswith("mimictheory._src."), (
        f"{module}.py:{line} imports the public package ({target})")
    name = target.split(".")[2]
    assert layer >= 0, f"{module}.py:{line} imports {target}"
    assert LAYERS[name] <= layer, (f"{module}.py:{line} imports {target} (layer "
                                   f"{LAYERS[name]}) from layer {layer}")


def test_the_check_can_fail(tmp_path):
  """A theory module importing the training loop is caught."""
  path = tmp_path / "kernels.py"
  path.write_text("def f():\n  from mimictheory._src.train import train\n")
  (line, target), = _imports(path)
  assert LAYERS[target.split(".")[2]] > LAYERS["kernels"]
