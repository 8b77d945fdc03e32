"""Execute the notebooks in a real Jupyter kernel and write each .ipynb with its outputs.

The jupytext scripts `notebooks/NN_*.py` are the source; this runs each one top to bottom in
an ipykernel (the project's environment, through nbclient) and writes the paired .ipynb with
its outputs, so that a reader on a code host sees the plots. `make notebooks` runs it in full
mode; the tests run the same `execute` with `small=True` (MIMICTHEORY_NOTEBOOK_SMALL=1).

  python notebooks/_execute.py [--small] [NAME ...]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def sources() -> list[pathlib.Path]:
  """The notebooks' jupytext sources, in order."""
  return sorted(HERE.glob("[0-9][0-9]_*.py"))


@contextlib.contextmanager
def _environment(small: bool):
  """The kernel inherits this process's environment: small mode is passed that way."""
  saved = os.environ.get("MIMICTHEORY_NOTEBOOK_SMALL")
  os.environ["MIMICTHEORY_NOTEBOOK_SMALL"] = "1" if small else "0"
  try:
    yield
  finally:
    if saved is None:
      os.environ.pop("MIMICTHEORY_NOTEBOOK_SMALL", None)
    else:
      os.environ["MIMICTHEORY_NOTEBOOK_SMALL"] = saved


def _client_class():
  """nbclient's NotebookClient, its wait for a cell's execute reply polled every second.

  With an ipywidget in a cell, nbclient sometimes misses the reply and waits out the whole
  cell timeout before reading it (jupyter/nbclient#312, open): the explorer notebook's test
  took 917 s once. Polling the shell channel in one-second steps up to the same deadline
  reads the reply as soon as it is there."""
  import asyncio
  import time
  from queue import Empty

  from nbclient import NotebookClient

  class Client(NotebookClient):
    async def async_start_new_kernel_client(self):
      kc = await super().async_start_new_kernel_client()
      get = kc.shell_channel.get_msg

      async def polled(timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
          step = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
          try:
            reply = get(timeout=step)
            return await reply if asyncio.iscoroutine(reply) else reply
          except Empty:
            if deadline is not None and time.monotonic() >= deadline:
              raise

      kc.shell_channel.get_msg = polled
      return kc

  return Client


def execute(path, small: bool = False, extra_cells=(), timeout: int = 1800):
  """Run the notebook of jupytext source `path` in a fresh ipykernel and return it with its
  outputs (an nbformat NotebookNode). `extra_cells` (code strings) run after the last cell,
  in the same kernel; an error in any cell raises nbclient's CellExecutionError."""
  import jupytext
  import nbformat
  nb = jupytext.read(path)
  nb.metadata["kernelspec"] = dict(KERNEL)
  for code in extra_cells:
    nb.cells.append(nbformat.v4.new_code_cell(code))
  with _environment(small):
    _client_class()(nb, timeout=timeout, kernel_name=KERNEL["name"],
                   resources={"metadata": {"path": str(pathlib.Path(path).parent)}}).execute()
  nb.metadata.pop("widgets", None)  # live widgets need a kernel; the static plots stay
  for cell in nb.cells:  # a widget's output without its state reads as a cut-off repr
    outputs = cell.get("outputs", [])
    if any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs):
      cell.outputs = [o for o in outputs if "application/vnd.jupyter.widget-view+json" not in
                      o.get("data", {}) and "image/png" in o.get("data", {})]
  return nb


def images(nb) -> int:
  """How many image outputs the notebook's cells hold."""
  return sum(1 for cell in nb.cells if cell.cell_type == "code"
             for out in cell.get("outputs", ()) if "image/png" in out.get("data", {}))


def write(nb, path) -> pathlib.Path:
  """Write `nb` as the .ipynb paired with `path`, through a temporary file."""
  import jupytext
  target = pathlib.Path(path).with_suffix(".ipynb")
  tmp = target.with_name(f".{target.stem}.tmp.ipynb")
  jupytext.write(nb, tmp, fmt="ipynb")
  os.replace(tmp, target)
  return target


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", help="notebook names or prefixes (default: all)")
  parser.add_argument("--small", action="store_true", help="small sizes (as the tests)")
  args = parser.parse_args(argv)
  paths = [p for p in sources()
           if not args.names or any(p.name.startswith(n) for n in args.names)]
  if not paths:
    print(f"_execute.py: no notebook matches {args.names}", file=sys.stderr)
    return 2
  for path in paths:
    nb = execute(path, small=args.small)
    print(f"{write(nb, path).name}: {images(nb)} images")
  return 0


if __name__ == "__main__":
  sys.exit(main())
