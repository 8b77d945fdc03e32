"""Gram matrices on disk at scale (issue 25, item 3): `mt.kernels(x, out=folder)` against the
in-memory path, with each run's time, time per entry and peak resident memory.

Every configuration runs in its own subprocess (so that its peak RSS, `ru_maxrss`, is its
own), on standard normal inputs (d = 64), and its folder is deleted after it. The in-memory
reference, `mt.kernels(x)` at N = 4000 (the same network), runs in the same session; "per
entry" divides by N² (both files' entries, which the symmetric tiling computes half of).

Run: `make bench-out-of-core` (writes benchmarks/README.md between <!-- out_of_core --> and
<!-- /out_of_core -->) or `python benchmarks/out_of_core.py [--quick] [--scratch DIR]`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from markdown_section import replace_section

_CHILD = """
import json, resource, sys, time
import numpy as np
import mimictheory as mt
n, activation, sw2, sb2, dtype, out = (int(sys.argv[1]), sys.argv[2], float(sys.argv[3]),
                                       float(sys.argv[4]), sys.argv[5], sys.argv[6])
x = np.random.default_rng(0).normal(size=(n, 64))
start = time.perf_counter()
if out == "memory":
    k = mt.kernels(x, depth=10, activation=activation, sw2=sw2, sb2=sb2)
else:
    k = mt.kernels(x, depth=10, activation=activation, sw2=sw2, sb2=sb2, out=out, dtype=dtype,
                   progress=True)
seconds = time.perf_counter() - start
corner = float(np.asarray(k.ntk[:4, :4]).sum())
print(json.dumps(dict(seconds=seconds, peak_rss_mb=resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, corner=corner)))
"""

CONFIGS = [  # (label, N, activation, sw2, sb2, dtype, where)
    ("ReLU, in memory", 4000, "relu", 2.0, 0.0, "float64", "memory"),
    ("ReLU, on disk", 4000, "relu", 2.0, 0.0, "float64", "disk"),
    ("ReLU, on disk", 20000, "relu", 2.0, 0.0, "float64", "disk"),
    ("ReLU, on disk", 50000, "relu", 2.0, 0.0, "float32", "disk"),
    ("tanh, in memory", 4000, "tanh", 1.5, 0.05, "float64", "memory"),
    ("tanh, on disk", 20000, "tanh", 1.5, 0.05, "float32", "disk"),
]
QUICK = [("ReLU, in memory", 1000, "relu", 2.0, 0.0, "float64", "memory"),
         ("ReLU, on disk", 1000, "relu", 2.0, 0.0, "float64", "disk"),
         ("tanh, on disk", 1000, "tanh", 1.5, 0.05, "float32", "disk")]


def run(config, scratch: Path) -> dict:
  label, n, activation, sw2, sb2, dtype, where = config
  folder = scratch / f"k{n}{activation}{dtype}"
  out = "memory" if where == "memory" else str(folder)
  try:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(n), activation, str(sw2), str(sb2),
                           dtype, out], check=True, text=True, stdout=subprocess.PIPE)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  row = json.loads(done.stdout.strip().splitlines()[-1])
  row.update(label=label, n=n, dtype=dtype,
             gb=0.0 if where == "memory" else 2 * n * n * (8 if dtype == "float64" else 4) / 1e9,
             ns_per_entry=row["seconds"] / n**2 * 1e9)
  print(json.dumps(row), flush=True)
  return row


def table(rows) -> str:
  from run import machine
  reference = {r["label"].split(",")[0]: r["ns_per_entry"] for r in rows
               if "in memory" in r["label"]}
  lines = [f"Measured on {machine()}; depth 10, d = 64, NNGP and NTK.", "",
           "| network | N | files | size (GB) | time (s) | per entry (ns) "
           "| per entry / in memory at N = 4000 | peak RSS (MB) |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    ref = reference.get(r["label"].split(",")[0])
    ratio = "—" if ref is None or "in memory" in r["label"] else f"{r['ns_per_entry'] / ref:.2f}"
    files = "in memory" if "in memory" in r["label"] else r["dtype"]
    lines.append(f"| {r['label'].split(',')[0]} | {r['n']} | {files} | {r['gb']:.1f} | "
                 f"{r['seconds']:.1f} | {r['ns_per_entry']:.0f} | {ratio} | "
                 f"{r['peak_rss_mb']:.0f} |")
  relu = max((r for r in rows if r["label"] == "ReLU, on disk"), key=lambda r: r["n"])
  cifar = relu["ns_per_entry"] * 60000**2 / 1e9
  lines += ["", f"CIFAR-10 (N = 60,000) at this machine's per-entry cost for ReLU (N = "
            f"{relu['n']}): {cifar / 60:.1f} min."]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="N = 1000 (smoke run)")
  parser.add_argument("--scratch", default=None, help="folder for the files (default: a "
                      "temporary folder)")
  parser.add_argument("--markdown", help="write the table into this Markdown file, between "
                      "<!-- out_of_core --> and <!-- /out_of_core -->")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
    rows = [run(c, Path(scratch)) for c in (QUICK if args.quick else CONFIGS)]
  text = table(rows)
  print(text)
  if args.markdown:
    replace_section(args.markdown, "out_of_core", text)


if __name__ == "__main__":
  main()
