"""Benchmarks of the analytic core, as ratios against references measured in the same run.

  kernels:  NNGP + NTK Gram matrices, N = 2000, depth 50 (ReLU), against a naive NumPy
            implementation of the same recursion (timed on a subset and scaled per entry).
  neural-tangents: analytic NNGP + NTK (N = 1000, depth 10, ReLU and erf) and the empirical
            NTK of a random ReLU / erf network (N = 128, width 512, depth 3) against
            neural-tangents 0.6.5 in its reference environment (`make nt-env`), float64 on
            both sides, compiled, median of 3; the reference is the fastest of its three
            empirical-NTK implementations.
  phase:    1000 x 1000 phase diagrams (ReLU, erf closed forms; tanh from 1-D tables and
            Mehler's series; GELU's cells near the divergence boundary, where c* is near 1,
            need its pointwise kernels, an exact 1-D integral), against the scalar per-point API
            called in a Python loop (timed
            on a few points and scaled); first call (tables, compilation) and warm call.
  numerical kernels: tanh and GELU NNGP + NTK by Mehler's series, N = 1000 and 4000, depth
            10, against the 2-D quadrature it replaces (timed on a subset of entries and
            scaled), with the largest error against 2-D quadrature on sampled entries; and
            against neural-tangents' ElementwiseNumerical (Gauss–Hermite degree 25 and 80)
            at N = 64 and 256, with each side's error against our 2-D quadrature.
  batch norm: the exact finite-batch BN NNGP + NTK (B = 400, depth 50, ReLU; memory O(B²)),
            against Theorem 2's approximation (`norm="batch_norm_paper"`) on the same batch:
            the price of exactness, not a speed-up (the ratio is below 1).

Run: `make bench` (regenerates benchmarks/README.md's table, with the machine and its load) or
`python benchmarks/run.py [--quick] [--markdown FILE]`.
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
                           n_inputs=n_kernels, nt_python=python, repeat=3, empirical=False,
                           convolutions=False)
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


def _per_point_grid(activation, size, loop_points):
  """The scalar API called point by point (timed on `loop_points`), scaled to the grid."""
  pts = list(zip(np.linspace(0.6, 3.9, loop_points), np.linspace(0.01, 0.29, loop_points)))
  mt.depth_scales(activation, *pts[0])
  per_point = _time(lambda: [(mt.chi1(activation, w, b), mt.depth_scales(activation, w, b))
                             for w, b in pts]) / loop_points
  return per_point * size[0] * size[1]


def bench_phase(size, activation, loop_points=20):
  sw2, sb2 = np.linspace(0.5, 4.0, size[0]), np.linspace(0.0, 0.3, size[1])
  mt.phase_diagram(activation, sw2=sw2[:2], sb2=sb2[:2])  # compile
  ours = _time(lambda: mt.phase_diagram(activation, sw2=sw2, sb2=sb2))
  label = f"phase {activation} {size[0]}x{size[1]}"
  return [(label, ours, _per_point_grid(activation, size, loop_points),
           "per-point loop (extrapolated)")]


def bench_phase_tables(size, activation, loop_points=5):
  """Numerical activations: the first call builds tables and compiles, the second is warm."""
  sw2, sb2 = np.linspace(0.5, 4.0, size[0]), np.linspace(0.0, 0.3, size[1])
  first = _time(lambda: mt.phase_diagram(activation, sw2=sw2, sb2=sb2))
  pd = mt.phase_diagram(activation, sw2=sw2, sb2=sb2)
  warm = _time(lambda: mt.phase_diagram(activation, sw2=sw2, sb2=sb2))
  ref = _per_point_grid(activation, size, loop_points)
  label = f"phase {activation} {size[0]}x{size[1]}"
  return [(label + f" ({pd.fallback} cells pointwise)", warm, ref, "per-point loop (extrapolated)"),
          ("  (first call: tables, compilation)", first, ref, "per-point loop (extrapolated)")]


def _quadrature_entries(activation, x1, x2, depth, sw2, sb2):
  """The old route, the general 2-D quadrature for every entry (for timing and errors; GELU's
  own pointwise route, a 1-D integral of its closed-form smoothing, is switched off): the
  MLP's description traced, where a numerical activation integrates every entry in 2-D."""
  import dataclasses
  import jax
  from mimictheory import stax
  act = dataclasses.replace(mt.get_activation(activation), smoothed=None)
  net = stax.mlp(depth, act, sw2, sb2, "none", width=None)
  with jax.enable_x64(True):
    out = jax.jit(lambda a, b: net.kernel_fn(a, b, ("nngp", "ntk")))(x1, x2)
  return np.asarray(out.nngp), np.asarray(out.ntk)


def bench_numerical_kernels(sizes, activations=("tanh", "gelu"), depth=10, sw2=1.5, sb2=0.05,
                            sample=48):
  """Mehler's series against 2-D quadrature per entry: the reference is timed on one row of
  `sample` entries and scaled to N² entries; the error is measured on those entries."""
  rows = []
  for activation in activations:
    for n in sizes:
      x = np.random.default_rng(0).normal(size=(n, 16))
      first = _time(lambda: mt.kernels(x, depth=depth, activation=activation, sw2=sw2, sb2=sb2))
      warm = _time(lambda: mt.kernels(x, depth=depth, activation=activation, sw2=sw2, sb2=sb2))
      out = mt.kernels(x, depth=depth, activation=activation, sw2=sw2, sb2=sb2)
      t = time.perf_counter()
      nngp, ntk = _quadrature_entries(activation, x[:1], x[:sample], depth, sw2, sb2)
      per_entry = (time.perf_counter() - t) / sample
      err = max(np.max(np.abs(out.nngp[:1, :sample] - nngp)) / np.max(np.abs(nngp)),
                np.max(np.abs(out.ntk[:1, :sample] - ntk)) / np.max(np.abs(ntk)))
      label = f"{activation} NNGP+NTK N={n} depth={depth} (err {err:.0e})"
      rows.append((label, warm, per_entry * n * n, "2-D quadrature per entry (extrapolated)"))
      rows.append(("  (first call: tables, compilation)", first, per_entry * n * n,
                   "2-D quadrature per entry (extrapolated)"))
  return rows


def bench_nt_numerical(sizes, degrees=(25, 80), depth=4, sw2=1.5, sb2=0.05):
  """neural-tangents' ElementwiseNumerical (Gauss–Hermite) against Mehler's series, tanh;
  errors of both against mimictheory's 2-D quadrature on two rows."""
  from mimictheory._src import crosscheck as cc
  try:
    python = cc.reference_python()
  except cc.ReferenceUnavailable as err:
    print(f"skipping neural-tangents: {err}")
    return []
  rows = []
  for n in sizes:
    x = np.random.default_rng(0).normal(size=(n, 16))
    cases = [dict(activation="tanh", depth=depth, sw2=sw2, sb2=sb2, degree=d) for d in degrees]
    import json
    try:
      ref = cc._run_reference(python, dict(x=x, cases=json.dumps(cases), repeat=3,
                                           networks=json.dumps([])), timeout=1800)
    except cc.ReferenceUnavailable as err:
      print(f"neural-tangents at N={n}: {err}")
      continue
    kw = dict(depth=depth, activation="tanh", sw2=sw2, sb2=sb2)
    mt.kernels(x, **kw)
    ours = _time(lambda: mt.kernels(x, **kw), repeat=3)
    out = mt.kernels(x, **kw)
    _, exact = _quadrature_entries("tanh", x[:2], x, depth, sw2, sb2)
    scale = np.max(np.abs(exact))
    ours_err = np.max(np.abs(out.ntk[:2] - exact)) / scale
    for i, d in enumerate(degrees):
      nt_err = np.max(np.abs(ref[f"ntk{i}"][:2] - exact)) / scale
      rows.append((f"tanh NTK N={n} depth={depth}: ours err {ours_err:.0e}, NT {nt_err:.0e}",
                   ours, float(ref[f"time_kernels{i}"]),
                   f"neural-tangents ElementwiseNumerical deg {d}"))
  return rows


def bench_batch_norm(batch, depth):
  x = np.random.default_rng(0).normal(size=(batch, 64))
  kw = dict(depth=depth, activation="relu", sw2=2.0, sb2=0.0)
  first = _time(lambda: mt.kernels(x, norm="batch_norm", **kw))  # includes compilation
  exact = _time(lambda: mt.kernels(x, norm="batch_norm", **kw))
  mt.kernels(x, norm="batch_norm_paper", **kw)
  paper = _time(lambda: mt.kernels(x, norm="batch_norm_paper", **kw), repeat=3)
  return [(f"exact BN relu B={batch} depth={depth}", exact, paper, "Theorem 2 (paper) kernels"),
          ("  (first call, with compilation)", first, paper, "Theorem 2 (paper) kernels")]


def machine() -> str:
  import os
  import platform
  import jax
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{load:.2f} at start, Python {platform.python_version()}, JAX {jax.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
  parser.add_argument("--markdown", help="write the table into this Markdown file, between "
                      "the markers <!-- bench --> and <!-- /bench -->")
  args = parser.parse_args()
  n, depth = (400, 20) if args.quick else (2000, 50)
  grid = (200, 200) if args.quick else (1000, 1000)
  where = machine()
  rows = bench_kernels(n, depth)
  rows += bench_neural_tangents(200 if args.quick else 1000, 32 if args.quick else 128,
                                128 if args.quick else 512)
  rows += bench_phase(grid, "relu")
  rows += bench_phase(grid, "erf")
  rows += bench_phase_tables(grid, "tanh")
  # GELU: cells near the divergence boundary fall back to pointwise kernels (see the README)
  rows += bench_phase_tables(grid, "gelu")
  rows += bench_numerical_kernels((200,) if args.quick else (1000, 4000))
  rows += bench_nt_numerical((64,) if args.quick else (64, 256))
  rows += bench_batch_norm(64 if args.quick else 400, 10 if args.quick else 50)
  lines = [f"Measured on {where}.", "",
           "| benchmark | mimictheory (s) | reference (s) | speed-up | reference |",
           "|---|---:|---:|---:|---|"]
  for label, ours, ref, what in rows:
    lines.append(f"| {label} | {ours:.3f} | {ref:.3f} | {ref / ours:.3g}x | {what} |")
  table = "\n".join(lines)
  print(table)
  if args.markdown:
    from markdown_section import replace_section
    replace_section(args.markdown, "bench", table)

if __name__ == "__main__":
  main()
