"""Convolutional kernels against neural-tangents, in the same run, with their arithmetic floor.

  ReLU, 5 convolutions 3 × 3 SAME (σw² = 2, σb² = 0.1), random 8 × 8 × 3 images, NNGP + NTK in
  float64, behind a `Flatten` (same-position covariances: N² HW entries per layer) and behind a
  `GlobalAvgPool` (every pair of positions: N² (HW)²); each library compiled first, median of
  2 calls (neural-tangents in its reference environment, `make nt-env`).
  Large: the GlobalAvgPool kernel of N = 1000 images, in tiles, in a fresh process whose peak
  resident memory is reported (neural-tangents would hold N² (HW)² entries at once, ~270 GB).
  Floor: entries computed (the upper triangle of a symmetric Gram matrix) × layers × the time
  of one layer of the ReLU recursion on one entry (the fused dual activation, E[φφ] and E[φ'φ']
  from one arccos, and the NTK's multiply-add) measured in cache: the arithmetic a recursion
  cannot avoid; the ratio says how far the whole recursion (patch sums, padding, memory
  traffic, tiling) is above it.

Run: `make bench-conv` (writes benchmarks/README.md between <!-- conv --> and <!-- /conv -->)
or `python benchmarks/conv.py [--quick] [--markdown FILE]`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from markdown_section import replace_section

DEPTH, IMAGE = 5, (8, 8, 3)

_LARGE = """
import json, resource, sys, time
import numpy as np
from mimictheory import stax
n, depth = int(sys.argv[1]), int(sys.argv[2])
x = np.random.default_rng(0).normal(size=(n, 8, 8, 3))
layers = [stax.Conv(None, (3, 3), padding="SAME", W_std=2**0.5, b_std=0.1**0.5), stax.Relu()]
net = stax.serial(*(layers * depth), stax.GlobalAvgPool(), stax.Dense(1, W_std=2**0.5))
start = time.perf_counter()
k = net.kernel_fn(x, get="ntk", progress=True)
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
print(json.dumps(dict(seconds=seconds, rss_mb=rss, finite=bool(np.isfinite(k).all()),
                      symmetric=bool((k == k.T).all()))))
"""


def dual_seconds_per_entry(entries: int = 1 << 16, layers: int = 200) -> float:
  """The time of one fused ReLU dual activation (E[φφ] and E[φ'φ'] from one arccos) and the
  NTK's multiply-add per entry, float64: `layers` of the recursion on `entries` entries small
  enough to stay in cache, so that it is the arithmetic, not the memory traffic."""
  import jax
  import jax.numpy as jnp

  from mimictheory._src.activations import ReLU
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.uniform(1, 2, entries))
    q12 = jnp.asarray(rng.uniform(-1, 1, entries))

    def layer(_, carry):
      k, ntk = carry
      value, slope = ReLU().kernel_pair(q, q, k)
      return 2.0 * value, 2.0 * value + 2.0 * slope * ntk

    fn = jax.jit(lambda k: jax.lax.fori_loop(0, layers, layer, (k, k)))
    jax.block_until_ready(fn(q12))
    best = np.inf
    for _ in range(5):
      start = time.perf_counter()
      jax.block_until_ready(fn(q12))
      best = min(best, time.perf_counter() - start)
  return best / (entries * layers)


def entries(n: int, readout: str) -> int:
  positions = IMAGE[0] * IMAGE[1]
  return n * (n + 1) // 2 * (positions if readout == "flatten" else positions**2)


def against_neural_tangents(sizes) -> list[dict]:
  from mimictheory._src import crosscheck as cc
  python = cc.reference_python()
  rows = []
  for readout, ns in sizes.items():
    for n in ns:
      result = cc.crosscheck(activations=("relu",), depths=(DEPTH,), inits=((2.0, 0.1),),
                             n_inputs=2, nt_python=python, repeat=2, empirical=False,
                             n_images=n, image_shape=IMAGE, readouts=(readout,))
      c = [c for c in result.comparisons if c.quantity == f"conv {readout} ntk"][0]
      rows.append(dict(readout=readout, n=n, ours=c.seconds_ours, nt=c.seconds_nt,
                       rel=max(c.max_rel, c.max_rel_diagonal), ok=c.ok))
  return rows


def large(n: int) -> dict:
  out = subprocess.run([sys.executable, "-c", _LARGE, str(n), str(DEPTH)], check=True,
                       stdout=subprocess.PIPE, text=True)
  return dict(readout="pool", n=n, **json.loads(out.stdout.strip().splitlines()[-1]))


def table(rows, big, per_entry) -> str:
  name = {"flatten": "Flatten", "pool": "GlobalAvgPool"}
  from run import machine
  lines = [f"Measured on {machine()}; one layer of the ReLU recursion costs "
           f"{per_entry * 1e9:.2f} ns per entry here (float64, in cache). The large run is one "
           "fresh process, compilation included.", "",
           "| readout | N | mimictheory (s) | neural-tangents (s) | ours / nt | floor (s) | "
           "ours / floor | max rel diff |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    floor = entries(r["n"], r["readout"]) * DEPTH * per_entry
    lines.append(f"| {name[r['readout']]} | {r['n']} | {r['ours']:.3f} | {r['nt']:.3f} | "
                 f"{r['ours'] / r['nt']:.2f} | {floor:.3f} | {r['ours'] / floor:.1f} | "
                 f"{r['rel']:.0e} |")
  for b in big:
    floor = entries(b["n"], "pool") * DEPTH * per_entry
    lines.append(f"| {name['pool']}, in tiles | {b['n']} | {b['seconds']:.1f} | — | — | "
                 f"{floor:.1f} | {b['seconds'] / floor:.1f} | peak RSS {b['rss_mb']:.0f} MB |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
  parser.add_argument("--markdown", help="write the table into this Markdown file, between "
                      "the markers <!-- conv --> and <!-- /conv -->")
  args = parser.parse_args()
  sizes = ({"flatten": (16,), "pool": (8,)} if args.quick else
           {"flatten": (64, 1000), "pool": (32, 64)})
  per_entry = dual_seconds_per_entry()
  big = [large(64 if args.quick else 1000)]
  rows = against_neural_tangents(sizes)
  text = table(rows, big, per_entry)
  print(text)
  if args.markdown:
    replace_section(args.markdown, "conv", text)

if __name__ == "__main__":
  main()
