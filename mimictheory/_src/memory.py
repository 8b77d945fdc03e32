"""Training-step memory of a model with BN against MimicNorm, from XLA's own analysis.

The jitted step (forward, backward, SGD-momentum update, weight-mean projection) is lowered and
compiled; `compiled.memory_analysis()` reports the bytes XLA allocates for it: arguments
(parameters, optimiser state, batch), outputs, and the temporaries (activations kept for the
backward pass, gradients). On a GPU the device's peak is reported as well. Nothing is executed
on CPU, so the measurement takes compile time only.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mimictheory._src.models import make_model
from mimictheory._src.nn import project_weight_mean

__all__ = ["StepMemory", "train_step_memory", "compare", "format_table"]


@dataclasses.dataclass(frozen=True)
class StepMemory:
  model: str
  norm: str
  batch: int
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  peak_bytes: int | None  # device peak on a GPU after one step, None on CPU

  @property
  def total_bytes(self) -> int:
    """What the compiled step needs at once: arguments, outputs and temporaries."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes


def train_step_memory(model: str, norm: str, batch: int = 128, classes: int = 100,
                      width: float = 1.0, run: bool = False) -> StepMemory:
  """Compile one training step of `model` with `norm` and read XLA's memory analysis.

  `run=True` also executes the step once and reads the device's peak memory (GPU only).
  """
  net = make_model(model, classes=classes, norm=norm, width=width)
  optimizer = nnx.Optimizer(net, optax.chain(optax.add_decayed_weights(5e-4),
                                             optax.sgd(0.1, momentum=0.9)), wrt=nnx.Param)
  graphdef, state = nnx.split((net, optimizer))

  def step(state, x, y):
    net, optimizer = nnx.merge(graphdef, state)

    def loss_fn(net):
      return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(net)
    optimizer.update(net, grads)
    project_weight_mean(net)
    return nnx.state((net, optimizer)), loss

  x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  compiled = jax.jit(step, donate_argnums=0).lower(state, x, y).compile()
  analysis = compiled.memory_analysis()
  peak = None
  if run and jax.default_backend() == "gpu":
    compiled(state, jnp.zeros(x.shape, x.dtype), jnp.zeros(y.shape, y.dtype))
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
  return StepMemory(model, norm, batch, int(analysis.argument_size_in_bytes),
                    int(analysis.output_size_in_bytes), int(analysis.temp_size_in_bytes), peak)


def compare(models, batch: int = 128, width: float = 1.0, classes: int = 100, progress=False):
  """[(BN StepMemory, MimicNorm StepMemory)] for each model name."""
  from mimictheory._src import checks
  from mimictheory._src.io import progress_bar
  from mimictheory._src.models import MODELS
  models = [checks.check_choice("model", m, tuple(MODELS)) for m in models]
  checks.check_int("batch", batch)
  checks.check_positive("width", width)
  return [(train_step_memory(m, "bn", batch, classes, width, run=True),
           train_step_memory(m, "mimic", batch, classes, width, run=True))
          for m in progress_bar(models, progress, "models")]


def format_table(rows) -> str:
  """A markdown table of `compare`'s rows: MiB with BN, with MimicNorm, and the saving."""
  lines = ["| model | BN (MiB) | MimicNorm (MiB) | saving | device peak BN / MimicNorm (MiB) |",
           "|---|---|---|---|---|"]
  for bn, mimic in rows:
    peak = ("—" if bn.peak_bytes is None else
            f"{bn.peak_bytes / 2**20:.0f} / {mimic.peak_bytes / 2**20:.0f}")
    lines.append(f"| {bn.model} | {bn.total_bytes / 2**20:.0f} | {mimic.total_bytes / 2**20:.0f}"
                 f" | {100 * (1 - mimic.total_bytes / bn.total_bytes):.1f}% | {peak} |")
  return "\n".join(lines)
