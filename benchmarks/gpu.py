"""GPU benchmark: the training step of BN against MimicNorm, and the kernels at N = 20,000.

For ResNet18, ResNet50 and ShuffleNetV2 on CIFAR-100-shaped input at batch 128, each
(model, norm) runs in a fresh Python process (the device's high-water mark is per process) and
reports the steady-state step time (`mimictheory._src.memory.step_time`: median of 3 rounds of
10 steps after compilation and 2 warm-up steps), images/s, and the device's peak bytes. Then
the NNGP + NTK Gram matrices of a depth-10 ReLU network on N = 20,000 inputs (float64),
first call (with compilation) and warm call. About 5 minutes on one H100.

Run: `bash benchmarks/gpu.sh` (or `python benchmarks/gpu.py [--quick]`; --quick is a small
smoke run that also works on CPU).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

_CHILD = """
import json, jax
from mimictheory._src.memory import step_time
t = step_time({model!r}, {norm!r}, batch={batch}, steps={steps}, rounds=3, width={width})
stats = jax.local_devices()[0].memory_stats() or {{}}
print(json.dumps(dict(seconds=t.seconds, device=t.device,
                      peak=stats.get("peak_bytes_in_use"))))
"""


def step(model, norm, batch, steps, width):
  code = _CHILD.format(model=model, norm=norm, batch=batch, steps=steps, width=width)
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  if res.returncode:
    raise SystemExit(f"{model}/{norm} failed:\n{res.stderr[-2000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def kernels(n, depth):
  import numpy as np
  import mimictheory as mt
  x = np.random.default_rng(0).normal(size=(n, 64))
  start = time.perf_counter()
  mt.kernels(x, depth=depth)
  first = time.perf_counter() - start
  start = time.perf_counter()
  k = mt.kernels(x, depth=depth)
  warm = time.perf_counter() - start
  assert np.isfinite(k.ntk).all()
  return first, warm


def kernels_on_disk(n, depth):
  """Seconds to write the float32 NNGP and NTK of N inputs to disk (`kernels(out=...)`), and
  CIFAR-10's (N = 60,000) time projected from that per-entry cost."""
  import tempfile

  import numpy as np
  import mimictheory as mt
  x = np.random.default_rng(0).normal(size=(n, 64))
  with tempfile.TemporaryDirectory() as folder:
    start = time.perf_counter()
    mt.kernels(x, depth=depth, out=f"{folder}/k", dtype="float32")
    seconds = time.perf_counter() - start
  return seconds, seconds / n**2 * 60_000**2


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny models and N (smoke run)")
  args = parser.parse_args()
  import jax
  batch, steps, width, n = (8, 2, 0.125, 500) if args.quick else (128, 10, 1.0, 20_000)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"device {jax.devices()[0].device_kind}; batch {batch}, width x{width}")
  print("| model | norm | ms/step | images/s | device peak (MiB) |")
  print("|---|---|---|---|---|")
  for model in ("resnet18", "resnet50", "shufflenetv2"):
    for norm in ("batch_norm", "mimic"):
      r = step(model, norm, batch, steps, width)
      peak = "—" if r["peak"] is None else f"{r['peak'] / 2**20:.0f}"
      print(
        f"| {model} | {norm} | {1e3 * r['seconds']:.1f} | {batch / r['seconds']:.0f} | {peak} |",
        flush=True,
      )
  first, warm = kernels(n, 10)
  print(f"\nkernels (ReLU NNGP + NTK, float64) N = {n}, depth 10: first call {first:.2f} s, "
        f"warm {warm:.2f} s")
  seconds, cifar = kernels_on_disk(n, 10)
  print(f"on disk (float32 files) N = {n}: {seconds:.1f} s, {seconds / n**2 * 1e9:.1f} ns per "
        f"entry; CIFAR-10 (N = 60,000) projected: {cifar / 60:.1f} min")


if __name__ == "__main__":
  main()
