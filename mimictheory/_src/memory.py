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

__all__ = ["StepMemory", "train_step_memory", "device_peak", "compare", "format_table"]


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

  return [(measure(m, "bn"), measure(m, "mimic")) for m in progress_bar(models, progress, "models")]


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
