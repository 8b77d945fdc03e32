"""`mimictheory.predict` against neural-tangents' `predict`, in the same run (issue 24, item 7).

  The NTK of a ReLU MLP (depth 3, σw² = 2, σb² = 0.1) on N = 4000 training and 1000 test
  random inputs (d = 32), 10 outputs; `gradient_descent_mse(k_train_train, y_train,
  learning_rate)`, then `predict_fn(t, fx_train_0, fx_test_0, k_test_train)` at 100 times in
  one call, float64. "first call": building the predictor and the first 100 times; "again":
  100 new times on the same predictor and the same f_0. Ours with its default route ("auto":
  block Lanczos on f_0 − Y from N = 2000 on, the eigendecomposition below) and with
  `method="eigh"`; neural-tangents always eigendecomposes, so NumPy's float64 `eigh` of the
  same kernel alone (LAPACK) is the floor of that route. neural-tangents runs in its
  reference environment (`make nt-env`) on the same kernels, read from one .npz; "max rel
  diff" is our default route against it.

Run: `make bench-predict` (writes benchmarks/README.md between <!-- predict --> and
<!-- /predict -->) or `python benchmarks/predict.py [--quick] [--markdown FILE]`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from markdown_section import replace_section

_NT = """
import importlib.util, json, sys, time
import numpy as np
import jax
spec = importlib.util.spec_from_file_location("nt_reference", sys.argv[3])
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
predict = ref.load_neural_tangents().predict  # float64, without TensorFlow
d = dict(np.load(sys.argv[1]))
args = (d["k_train_train"], d["y"])
start = time.perf_counter()
fn = predict.gradient_descent_mse(*args, learning_rate=float(d["eta"]))
train, test = fn(d["t"], d["f0"], d["ft0"], d["k_test_train"])
test = np.asarray(jax.block_until_ready(test))
first = time.perf_counter() - start
start = time.perf_counter()
again = np.asarray(jax.block_until_ready(fn(2 * d["t"], d["f0"], d["ft0"],
                                            d["k_test_train"])[1]))
again_s = time.perf_counter() - start
np.save(sys.argv[2], test)
print(json.dumps(dict(first=first, again=again_s)))
"""


def kernels(n_train: int, n_test: int):
  from mimictheory import stax
  x = np.random.default_rng(0).normal(size=(n_train + n_test, 32))
  net = stax.serial(stax.Dense(512, W_std=2**0.5, b_std=0.1**0.5),
                    *[stax.Relu(), stax.Dense(512, W_std=2**0.5, b_std=0.1**0.5)] * 3)
  k = np.asarray(net.kernel_fn(x, None, "ntk"))
  return k[:n_train, :n_train], k[n_train:, :n_train]


def measure(n_train: int, n_test: int, times: int = 100, nt_python=None) -> dict:
  from mimictheory import predict
  k, k_test = kernels(n_train, n_test)
  rng = np.random.default_rng(1)
  y = rng.normal(size=(n_train, 10))
  f0, ft0 = 0.1 * rng.normal(size=(n_train, 10)), 0.1 * rng.normal(size=(n_test, 10))
  eta = 0.5 * predict.max_learning_rate(k, y.size)
  t = np.geomspace(1, 1e4, times)
  start = time.perf_counter()
  np.linalg.eigh(k)
  floor = time.perf_counter() - start
  row = dict(n_train=n_train, n_test=n_test, times=times, floor=floor,
             route="Lanczos" if n_train >= predict.KRYLOV_MIN_INPUTS else "eigh")
  for method in ("eigh", "auto"):
    start = time.perf_counter()
    fn = predict.gradient_descent_mse(k, y, learning_rate=eta, method=method)
    ours = fn(t, f0, ft0, k_test)[1]
    row[f"first_{method}"] = time.perf_counter() - start
    start = time.perf_counter()
    fn(2 * t, f0, ft0, k_test)
    row[f"again_{method}"] = time.perf_counter() - start
  python = nt_python or os.environ.get("MIMICTHEORY_NT_PYTHON", ".nt-env/bin/python")
  with tempfile.TemporaryDirectory() as tmp:
    data, result = f"{tmp}/k.npz", f"{tmp}/nt.npy"
    np.savez(data, k_train_train=k, k_test_train=k_test, y=y, f0=f0, ft0=ft0, eta=eta, t=t)
    reference_module = Path(__file__).resolve().parents[1] / "mimictheory/_src/nt_reference.py"
    out = subprocess.run([python, "-c", _NT, data, result, str(reference_module)], check=True,
                         text=True,
                         stdout=subprocess.PIPE, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    nt = json.loads(out.stdout.strip().splitlines()[-1])
    reference = np.load(result)
  scale = np.max(np.abs(reference))
  row.update(nt_first=nt["first"], nt_again=nt["again"],
             max_rel=float(np.max(np.abs(ours - reference)) / scale))
  return row


def table(rows) -> str:
  from run import machine
  lines = [f"Measured on {machine()}; float64, 10 outputs, 100 times per call.", "",
           "| N train | N test | our route | ours, first call (s) | ours with eigh (s) "
           "| neural-tangents, first call (s) | ours / nt | ours, again (s) | nt, again (s) "
           "| eigh alone (s) | max rel diff |",
           "|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['n_train']} | {r['n_test']} | {r['route']} | {r['first_auto']:.2f} | "
                 f"{r['first_eigh']:.2f} | {r['nt_first']:.2f} | "
                 f"{r['first_auto'] / r['nt_first']:.2f} | {r['again_auto']:.3f} | "
                 f"{r['nt_again']:.3f} | {r['floor']:.2f} | {r['max_rel']:.0e} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="N = 500 / 100 (smoke run)")
  parser.add_argument("--markdown", help="write the table into this Markdown file, between "
                      "the markers <!-- predict --> and <!-- /predict -->")
  args = parser.parse_args()
  sizes = [(500, 100)] if args.quick else [(1000, 250), (4000, 1000)]
  rows = [measure(*s) for s in sizes]
  text = table(rows)
  print(text)
  if args.markdown:
    replace_section(args.markdown, "predict", text)


if __name__ == "__main__":
  main()
