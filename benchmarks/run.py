"""Benchmarks of the analytic core, as ratios against references measured in the same run.

  kernels:  NNGP + NTK Gram matrices, N = 2000, depth 50 (ReLU), against a naive NumPy
            implementation of the same recursion (timed on a subset and scaled per entry).
  neural-tangents: analytic NNGP + NTK (N = 1000, depth 10, ReLU and erf) and the empirical
            NTK of a random ReLU / erf network (N = 128, width 512, depth 3) against
            neural-tangents 0.6.5 in its reference environment (`make nt-env`), float64 on
            both sides, compiled, median of 3; the reference is the fastest of its three
            empirical-NTK implementations.
  phase:    a 1000 x 1000 phase diagram (ReLU, erf) and 400 x 300 (tanh), against the scalar
            per-point API called in a Python loop (timed on a few points and scaled).
  batch norm: the exact finite-batch BN NNGP + NTK (B = 400, depth 50, ReLU; memory O(B²)),
            against Theorem 2's approximation (`norm="batch_norm_paper"`) on the same batch:
            the price of exactness, not a speed-up (the ratio is below 1).

Run: `make bench` or `python benchmarks/run.py [--quick]`. Prints a table; writes nothing.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

import mimictheory as mt


def _time(fn, repeat=1):
  best = math.inf
  for _ in range(repeat):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def _naive_kernels(x, depth, sw2, sb2):
  """Straightforward NumPy: one Python loop over layers, full matrices, no JAX."""
  d = x.shape[1]
  k = sw2 * x @ x.T / d + sb2
  ntk = k.copy()
  for _ in range(depth):
    q = np.diag(k)
    norm = np.sqrt(np.outer(q, q))
    rho = np.clip(k / norm, -1, 1)
    theta = np.arccos(rho)
    value = norm * (np.sqrt(1 - rho**2) + (np.pi - theta) * rho) / (2 * np.pi)
    deriv = (np.pi - theta) / (2 * np.pi)
    k = sw2 * value + sb2
    ntk = k + sw2 * deriv * ntk
  return k, ntk


def bench_kernels(n, depth):
  x = np.random.default_rng(0).normal(size=(n, 64))
  mt.kernels(x[:8], depth=depth)  # compile outside the timing
  ours = _time(lambda: mt.kernels(x, depth=depth), repeat=2)
  naive = _time(lambda: _naive_kernels(x, depth, 2.0, 0.0), repeat=1)
  return [("kernels relu N=%d depth=%d" % (n, depth), ours, naive, "naive NumPy")]


def bench_neural_tangents(n_kernels, n_empirical, width):
  from mimictheory._src import crosscheck as cc
  try:
    python = cc.reference_python()
  except cc.ReferenceUnavailable as err:
    print(f"skipping neural-tangents: {err}")
    return []
  analytic = cc.crosscheck(activations=("relu", "erf"), depths=(10,), inits=((2.0, 0.1),),
                           n_inputs=n_kernels, nt_python=python, repeat=3, empirical=False)
  empirical = cc.crosscheck(activations=(), n_inputs=n_empirical, width=width,
                            nt_python=python, repeat=3)
  rows = []
  for c in analytic.comparisons[1::2]:  # one row per case (nngp and ntk come together)
    rows.append((f"kernels {c.activation} N={n_kernels} depth={c.depth}", c.seconds_ours,
                 c.seconds_nt, "neural-tangents kernel_fn"))
  for c in empirical.comparisons:
    rows.append((f"empirical NTK {c.activation} N={n_empirical} n={c.width}", c.seconds_ours,
                 c.seconds_nt, "neural-tangents empirical_ntk_fn (best)"))
  return rows


def bench_phase(size, activation, loop_points=20):
  sw2, sb2 = np.linspace(0.5, 4.0, size[0]), np.linspace(0.0, 0.3, size[1])
  mt.phase_diagram(activation, sw2=sw2[:2], sb2=sb2[:2])  # compile
  ours = _time(lambda: mt.phase_diagram(activation, sw2=sw2, sb2=sb2))
  pts = list(zip(np.linspace(0.6, 3.9, loop_points), np.linspace(0.01, 0.29, loop_points)))
  mt.depth_scales(activation, *pts[0])
  per_point = _time(lambda: [(mt.chi1(activation, w, b), mt.depth_scales(activation, w, b))
                             for w, b in pts]) / loop_points
  label = f"phase {activation} {size[0]}x{size[1]}"
  return [(label, ours, per_point * size[0] * size[1], "per-point loop (extrapolated)")]


def bench_batch_norm(batch, depth):
  x = np.random.default_rng(0).normal(size=(batch, 64))
  kw = dict(depth=depth, activation="relu", sw2=2.0, sb2=0.0)
  first = _time(lambda: mt.kernels(x, norm="batch_norm", **kw))  # includes compilation
  exact = _time(lambda: mt.kernels(x, norm="batch_norm", **kw))
  mt.kernels(x, norm="batch_norm_paper", **kw)
  paper = _time(lambda: mt.kernels(x, norm="batch_norm_paper", **kw), repeat=3)
  return [(f"exact BN relu B={batch} depth={depth}", exact, paper, "Theorem 2 (paper) kernels"),
          ("  (first call, with compilation)", first, paper, "Theorem 2 (paper) kernels")]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
  args = parser.parse_args()
  n, depth = (400, 20) if args.quick else (2000, 50)
  grid = (200, 200) if args.quick else (1000, 1000)
  rows = bench_kernels(n, depth)
  rows += bench_neural_tangents(200 if args.quick else 1000, 32 if args.quick else 128,
                                128 if args.quick else 512)
  rows += bench_phase(grid, "relu")
  rows += bench_phase(grid, "erf")
  rows += bench_phase((80, 60) if args.quick else (400, 300), "tanh", loop_points=5)
  rows += bench_batch_norm(64 if args.quick else 400, 10 if args.quick else 50)
  print(f"{'benchmark':<40} {'mimictheory (s)':>16} {'reference (s)':>14} {'speed-up':>9}  reference")
  for label, ours, ref, what in rows:
    print(f"{label:<40} {ours:>16.3f} {ref:>14.3f} {ref / ours:>8.1f}x  {what}")


if __name__ == "__main__":
  main()
