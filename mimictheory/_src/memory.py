"""Training-step memory of a model with BN against MimicNorm, from XLA's own analysis.

The project's one training step (`train.train_step`: forward, backward, SGD-momentum update,
weight-mean projection) is lowered with its state donated and compiled;
`compiled.memory_analysis()` reports what XLA allocates for it. The figure compared is
arguments + outputs − aliased outputs + temporaries (with the state donated, the updated
parameters and optimiser state reuse their input buffers and are counted once), or XLA's
`peak_memory_in_bytes` where that is larger. On a GPU,
`device_peak` runs the step once in a fresh subprocess (the device's high-water mark is per
process, so each (model, norm) gets its own).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from mimictheory._src.models import make_model

__all__ = ["StepMemory", "StepTime", "train_step_memory", "step_time", "device_peak", "compare",
           "format_table", "compare_speed", "format_speed_table"]


@dataclasses.dataclass(frozen=True)
class StepMemory:
  model: str
  norm: str
  batch: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  xla_peak_bytes: int  # XLA's peak_memory_in_bytes, 0 where the backend does not report it
  peak_bytes: int | None = None  # the device's peak in a fresh process (GPU), None on CPU

  @property
  def total_bytes(self) -> int:
    """What the compiled step needs at once: arguments + outputs not aliased to them +
    temporaries, or XLA's peak where that is larger (on CPU XLA's peak covers the arguments
    only, so the sum is what counts there)."""
    live = self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
    return max(live, self.xla_peak_bytes)


def _compiled_step(model: str, norm: str, batch: int, classes: int, width: float):
  from mimictheory._src.train import optimizer, train_step
  net = make_model(model, classes=classes, norm=norm, width=width)
  graphdef, state = nnx.split((net, optimizer(net, 0.1)))

  def step(state, x, y):
    net, opt = nnx.merge(graphdef, state)
    loss = train_step(net, opt, x, y)
    return nnx.state((net, opt)), loss

  x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return jax.jit(step, donate_argnums=0).lower(state, x, y).compile(), state, x, y


def train_step_memory(model: str, norm: str, batch: int = 128, classes: int = 100,
                      width: float = 1.0) -> StepMemory:
  """Compile one training step of `model` with `norm` and read XLA's memory analysis."""
  compiled, _, _, _ = _compiled_step(model, norm, batch, classes, width)
  a = compiled.memory_analysis()
  return StepMemory(model, norm, batch, int(a.argument_size_in_bytes),
                    int(a.output_size_in_bytes), int(a.alias_size_in_bytes),
                    int(a.temp_size_in_bytes), int(getattr(a, "peak_memory_in_bytes", 0) or 0))


@dataclasses.dataclass(frozen=True)
class StepTime:
  """Steady-state cost of one compiled training step (after compilation and warm-up)."""
  model: str
  norm: str
  batch: int
  seconds: float  # the median over timed rounds of the mean step time in each round
  device: str

  @property
  def images_per_second(self) -> float:
    return self.batch / self.seconds


def step_time(model: str, norm: str, batch: int = 128, steps: int = 10, rounds: int = 3,
              warmup: int = 2, classes: int = 100, width: float = 1.0) -> StepTime:
  """Time the project's training step (the one `train` runs) on random images in steady state.

  The step is compiled once and run `warmup` times untimed; then `rounds` rounds of `steps`
  steps are timed, each ending with `block_until_ready`, and the median round's mean step time
  is reported, so compilation and dispatch start-up are excluded.

  >>> t = step_time("vgg11", "mimic", batch=4, steps=1, rounds=1, warmup=1, classes=10,
  ...               width=0.125)
  >>> t.images_per_second > 0
  True
  """
  import statistics
  import time
  from mimictheory._src import checks
  for name, value in (("batch", batch), ("steps", steps), ("rounds", rounds)):
    checks.check_int(name, value)
  checks.check_int("warmup", warmup, minimum=0)
  compiled, state, x, y = _compiled_step(model, norm, batch, classes, width)
  keys = jax.random.split(jax.random.key(0))
  images = jax.random.normal(keys[0], x.shape, x.dtype)
  labels = jax.random.randint(keys[1], y.shape, 0, classes, y.dtype)
  state = jax.tree.map(jnp.copy, state)  # the step donates its state
  for _ in range(warmup):
    state, loss = compiled(state, images, labels)
  jax.block_until_ready(state)
  means = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(steps):
      state, loss = compiled(state, images, labels)
    jax.block_until_ready((state, loss))
    means.append((time.perf_counter() - start) / steps)
  return StepTime(model, norm, batch, statistics.median(means), jax.devices()[0].device_kind)


def _run_once(model, norm, batch, classes, width):
  """In a fresh process: one step, then the device's peak bytes (None off GPU)."""
  compiled, state, x, y = _compiled_step(model, norm, batch, classes, width)
  jax.block_until_ready(compiled(state, jnp.zeros(x.shape, x.dtype), jnp.zeros(y.shape, y.dtype)))
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def device_peak(model: str, norm: str, batch: int = 128, classes: int = 100,
                width: float = 1.0) -> int | None:
  """The device's peak bytes over one training step, measured in a fresh Python process (so
  that neither the other norm nor anything else run before counts); None without a GPU."""
  if jax.default_backend() != "gpu":
    return None
  code = ("import json, sys; from mimictheory._src.memory import _run_once; "
          f"print(json.dumps(_run_once({model!r}, {norm!r}, {batch}, {classes}, {width})))")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(res.stdout.strip().splitlines()[-1])


def compare(models, batch: int = 128, width: float = 1.0, classes: int = 100, progress=False):
  """[(BN StepMemory, MimicNorm StepMemory)] for each model name."""
  from mimictheory._src import checks
  from mimictheory._src.io import progress_bar
  from mimictheory._src.models import MODELS
  models = [checks.check_choice("model", m, tuple(MODELS)) for m in models]
  checks.check_int("batch", batch)
  checks.check_positive("width", width)
  def measure(m, norm):
    step = train_step_memory(m, norm, batch, classes, width)
    return dataclasses.replace(step, peak_bytes=device_peak(m, norm, batch, classes, width))

  return [(measure(m, "batch_norm"), measure(m, "mimic"))
          for m in progress_bar(models, progress, "models")]


def format_table(rows) -> str:
  """A markdown table of `compare`'s rows: MiB with BN, with MimicNorm, and the saving."""
  lines = ["| model | BN step peak (MiB) | MimicNorm step peak (MiB) | saving | device peak BN / "
           "MimicNorm (MiB, fresh process each) |", "|---|---|---|---|---|"]
  for bn, mimic in rows:
    peak = ("—" if bn.peak_bytes is None else
            f"{bn.peak_bytes / 2**20:.0f} / {mimic.peak_bytes / 2**20:.0f}")
    lines.append(f"| {bn.model} | {bn.total_bytes / 2**20:.0f} | {mimic.total_bytes / 2**20:.0f}"
                 f" | {100 * (1 - mimic.total_bytes / bn.total_bytes):.1f}% | {peak} |")
  return "\n".join(lines)


def compare_speed(models, batch: int = 128, width: float = 1.0, classes: int = 100, steps: int = 10,
                  rounds: int = 3, progress=False):
  """[(BN StepTime, MimicNorm StepTime)] for each model name, timed in this process, the two
  norms of a model one after the other (so both see the same machine load)."""
  from mimictheory._src import checks
  from mimictheory._src.io import progress_bar
  from mimictheory._src.models import MODELS
  models = [checks.check_choice("model", m, tuple(MODELS)) for m in models]
  return [tuple(step_time(m, norm, batch, steps, rounds, classes=classes, width=width)
                for norm in ("batch_norm", "mimic"))
          for m in progress_bar(models, progress, "models")]


def format_speed_table(rows) -> str:
  """A markdown table of `compare_speed`'s rows: ms per step, images/s and MimicNorm's speed-up."""
  lines = ["| model | device | BN ms/step | MimicNorm ms/step | BN images/s | MimicNorm images/s |"
           " MimicNorm / BN throughput |", "|---|---|---|---|---|---|---|"]
  for bn, mimic in rows:
    lines.append(f"| {bn.model} | {bn.device} | {1e3 * bn.seconds:.1f} | {1e3 * mimic.seconds:.1f}"
                 f" | {bn.images_per_second:.0f} | {mimic.images_per_second:.0f}"
                 f" | {mimic.images_per_second / bn.images_per_second:.2f}x |")
  return "\n".join(lines)
