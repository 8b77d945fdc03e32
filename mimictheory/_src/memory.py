"""Training-step memory of a model with BN against MimicNorm, from XLA's own analysis.

The project's one training step (`train.train_step`: forward, backward, SGD-momentum update,
weight-mean projection) is lowered with its state donated and compiled;
`compiled.memory_analysis()` reports what XLA allocates for it. The figure compared is
arguments + outputs − aliased outputs + temporaries (with the state donated, the updated
parameters and optimiser state reuse their input buffers and are counted once), or XLA's
`peak_memory_in_bytes` where that is larger. On a GPU,
`device_peak` runs the step once in a fresh subprocess (the device's high-water mark is per
process, so each (model, norm) gets its own).

Residual and branch scalars are measured both ways (`compare`): folded into the last conv's
kernel (this library's default, which stores no extra activation) and multiplying the
activation as the official PyTorch code does (`fold_scalars=False`, one stored product per
scalar: the paper's account of Fixup's extra memory).
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

__all__ = ["StepMemory", "StepTime", "PAPER_MEMORY", "train_step_memory", "step_time",
           "device_peak", "compare",
           "format_table", "compare_speed", "format_speed_table"]


@dataclasses.dataclass(frozen=True)
class StepMemory:
  model: str
  norm: str
  batch: int
  fold_scalars: bool
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


def _compiled_step(model: str, norm: str, batch: int, classes: int, width: float,
                   fold_scalars: bool = True):
  from mimictheory._src.train import optimizer, train_step
  net = make_model(model, classes=classes, norm=norm, width=width, fold_scalars=fold_scalars)
  graphdef, state = nnx.split((net, optimizer(net, 0.1)))

  def step(state, x, y):
    net, opt = nnx.merge(graphdef, state)
    loss = train_step(net, opt, x, y)
    return nnx.state((net, opt)), loss

  x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return jax.jit(step, donate_argnums=0).lower(state, x, y).compile(), state, x, y


def train_step_memory(model: str, norm: str, batch: int = 128, classes: int = 100,
                      width: float = 1.0, fold_scalars: bool = True) -> StepMemory:
  """Compile one training step of `model` with `norm` and read XLA's memory analysis;
  `fold_scalars` as in `make_model` (False: the official code's stored products)."""
  compiled, _, _, _ = _compiled_step(model, norm, batch, classes, width, fold_scalars)
  a = compiled.memory_analysis()
  return StepMemory(model, norm, batch, fold_scalars, int(a.argument_size_in_bytes),
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


def _run_once(model, norm, batch, classes, width, fold_scalars=True):
  """In a fresh process: one step, then the device's peak bytes (None off GPU)."""
  compiled, state, x, y = _compiled_step(model, norm, batch, classes, width, fold_scalars)
  jax.block_until_ready(compiled(state, jnp.zeros(x.shape, x.dtype), jnp.zeros(y.shape, y.dtype)))
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def device_peak(model: str, norm: str, batch: int = 128, classes: int = 100,
                width: float = 1.0, fold_scalars: bool = True) -> int | None:
  """The device's peak bytes over one training step, measured in a fresh Python process (so
  that neither the other norm nor anything else run before counts); None without a GPU."""
  if jax.default_backend() != "gpu":
    return None
  code = ("import json, sys; from mimictheory._src.memory import _run_once; "
          f"print(json.dumps(_run_once({model!r}, {norm!r}, {batch}, {classes}, {width}, "
          f"{fold_scalars})))")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(res.stdout.strip().splitlines()[-1])


#: The models whose scalars can be folded or stored (the others measure the same both ways).
SCALED_MODELS = ("resnet18", "resnet50", "shufflenetv2")
#: The paper's Table 1 memory (MB, on a GPU): (BN, MimicNorm, Fixup or None).
PAPER_MEMORY = {"vgg11": (2971, 2851, None), "vgg16": (3745, 3489, None),
                "resnet18": (4447, 4157, 4743), "resnet50": (8533, 7533, 10283),
                "squeezenet": (3687, 2693, None), "shufflenetv2": (3915, 3141, None)}


def compare(models, batch: int = 128, width: float = 1.0, classes: int = 100, progress=False):
  """{model: {column: StepMemory}} with the columns "batch_norm", "mimic" (scalars folded),
  "mimic_stored" (scalars multiplying the activation, as the official code), and for the
  ResNets "fixup" and "fixup_stored" (Fixup's multipliers folded / stored). VGG and
  SqueezeNet have no scalars: their MimicNorm is measured once."""
  from mimictheory._src import checks
  from mimictheory._src.io import progress_bar
  from mimictheory._src.models import MODELS
  models = [checks.check_choice("model", m, tuple(MODELS)) for m in models]
  checks.check_int("batch", batch)
  checks.check_positive("width", width)

  def measure(m, norm, fold=True):
    step = train_step_memory(m, norm, batch, classes, width, fold)
    return dataclasses.replace(step, peak_bytes=device_peak(m, norm, batch, classes, width,
                                                            fold))

  table = {}
  for m in progress_bar(models, progress, "models"):
    row = {"batch_norm": measure(m, "batch_norm"), "mimic": measure(m, "mimic")}
    if m in SCALED_MODELS:
      row["mimic_stored"] = measure(m, "mimic", fold=False)
    if m.startswith("resnet"):
      row["fixup"] = measure(m, "fixup")
      row["fixup_stored"] = measure(m, "fixup", fold=False)
    table[m] = row
  return table


def _mib(step):
  return "—" if step is None else f"{step.total_bytes / 2**20:.0f}"


def _saving(step, bn):
  return "—" if step is None else f"{100 * (1 - step.total_bytes / bn.total_bytes):.1f}%"


def format_table(table) -> str:
  """A markdown table of `compare`'s result: MiB per column, MimicNorm's and Fixup's saving
  against BN (negative: more memory), and the paper's savings; then the device peaks where a
  GPU measured them. "folded" is this library's default, "stored" the official code's."""
  lines = ["| model | BN (MiB) | MimicNorm folded | MimicNorm stored | saving folded / stored | "
           "paper's saving | Fixup folded | Fixup stored | Fixup saving folded / stored | "
           "paper's Fixup saving |", "|---|---:|---:|---:|---|---:|---:|---:|---|---:|"]
  for model, row in table.items():
    bn, mimic = row["batch_norm"], row["mimic"]
    stored = row.get("mimic_stored", mimic)
    fixup, fixup_stored = row.get("fixup"), row.get("fixup_stored")
    paper = PAPER_MEMORY.get(model)
    paper_mimic = "—" if paper is None else f"{100 * (1 - paper[1] / paper[0]):.1f}%"
    paper_fixup = ("—" if paper is None or paper[2] is None else
                   f"{100 * (1 - paper[2] / paper[0]):.1f}%")
    lines.append(f"| {model} | {_mib(bn)} | {_mib(mimic)} | {_mib(stored)} | "
                 f"{_saving(mimic, bn)} / {_saving(stored, bn)} | {paper_mimic} | "
                 f"{_mib(fixup)} | {_mib(fixup_stored)} | "
                 + ("—" if fixup is None else
                    f"{_saving(fixup, bn)} / {_saving(fixup_stored, bn)}")
                 + f" | {paper_fixup} |")
  peaks = [(model, label, step) for model, row in table.items() for label, step in row.items()
           if step.peak_bytes is not None]
  if peaks:
    lines += ["", "| model | column | device peak (MiB, fresh process) |", "|---|---|---:|"]
    lines += [f"| {m} | {label} | {step.peak_bytes / 2**20:.0f} |" for m, label, step in peaks]
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
