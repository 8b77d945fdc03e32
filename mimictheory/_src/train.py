"""Training MimicNorm models with Optax, checkpointed with Orbax, resumable bit for bit.

The paper's recipe (section 4) as the official code runs it: SGD with momentum 0.9, learning
rate 0.1, weight decay 5e-4, a linear warm-up over 2 epochs from 1e-4 (per step), and the rate
× 0.1 at epochs 82, 112 and 137 of 150 (the official scheduler's milestones are 80/110/135, but
it steps only after the warm-up epochs); every epoch's last, partial batch is trained on (as
PyTorch's DataLoader does by default); the augmentation fills with black. Weight mean is
re-projected after every optimiser step. Every epoch ends with a checkpoint (Orbax
writes it under a temporary name and renames it) and one JSON line of metrics; an interrupted
run started again with the same arguments resumes from the last checkpoint, and because the
data order of every epoch derives from (seed, epoch) it ends exactly where an uninterrupted
run ends. A NaN or infinite loss stops the run and is recorded as diverged.

Robustness: everything is validated (configuration, data, model) before anything is written;
a lock on the output folder refuses a second run into it; a damaged checkpoint is named, set
aside, and the newest intact one is used; Ctrl-C stops at the next step boundary with the last
complete checkpoint intact (`TrainingInterrupted`); the metrics are strict JSON (a non-finite
loss is null); a finished run is extended by raising `epochs`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mimictheory._src import checks
from mimictheory._src import run_folder as runs
from mimictheory._src.data import augment
from mimictheory._src.io import progress_bar
from mimictheory._src.norms import check_norm
from mimictheory._src.nn import MLP, NORM_OPTIONS, RESIDUAL_BASELINES, project_weight_mean

__all__ = [
  "TrainConfig",
  "TrainResult",
  "TrainingInterrupted",
  "learning_rate_schedule",
  "optimizer",
  "train_step",
  "evaluate",
  "data_mesh",
  "epoch_batches",
  "train",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines a run (saved next to its checkpoints).

  >>> from mimictheory.train import TrainConfig
  >>> TrainConfig(norm="mimic", epochs=3, lr=0.1).validate().epochs
  3
  >>> TrainConfig(lr=-1).validate()
  Traceback (most recent call last):
  ...
  ValueError: lr must be > 0 and finite, got -1
  """

  norm: str = "mimic"
  model: str = "mlp"  # or a CIFAR model of mimictheory.nn.MODELS (NHWC image data)
  model_width: float = 1.0  # channel multiplier of the CIFAR models
  augment: bool = True  # random crop (padding 4), flip and rotation (15°) for image data
  depth: int = 8
  width: int = 256
  epochs: int = 150
  batch_size: int = 128
  lr: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 5e-4
  warmup_epochs: float = 2.0
  warmup_start: float = 1e-4  # the rate at the warm-up's first step (official: 1e-4)
  milestones: tuple = (82, 112, 137)  # the official 80/110/135, counted after the warm-up
  decay: float = 0.1
  seed: int = 0
  data: str = "custom"  # the data set's name (recorded; a run is resumed on the same data only)
  eval_batch: int = 1000  # test images per evaluation batch (bounds evaluation memory)
  drop_last: bool = False  # drop each epoch's last, partial batch (official: kept)

  def validate(self) -> "TrainConfig":
    from mimictheory._src.models import MODELS
    norm = check_norm(self.norm, NORM_OPTIONS + RESIDUAL_BASELINES)
    if norm != self.norm:  # one spelling in the saved config ("bn" -> "batch_norm")
      return dataclasses.replace(self, norm=norm).validate()
    checks.check_choice("model", self.model, ("mlp",) + tuple(MODELS))
    if self.norm in RESIDUAL_BASELINES and self.model not in ("resnet18", "resnet50"):
      raise ValueError(f"norm {self.norm!r} is a baseline of the residual models: model must be "
                       f"resnet18 or resnet50, got {self.model!r}")
    checks.check_positive("model_width", self.model_width)
    for name in ("depth", "width", "epochs", "batch_size", "eval_batch"):
      checks.check_int(name, getattr(self, name), minimum=1)
    checks.check_positive("lr", self.lr)
    checks.check_interval("momentum", self.momentum, 0.0, 1.0)
    checks.check_nonnegative("weight_decay", self.weight_decay)
    checks.check_nonnegative("warmup_epochs", self.warmup_epochs)
    checks.check_nonnegative("warmup_start", self.warmup_start)
    if self.warmup_start > self.lr:
      raise ValueError(f"warmup_start must be <= lr ({self.lr}), got {self.warmup_start}")
    checks.check_int("seed", self.seed, minimum=0)
    for m in self.milestones:
      checks.check_positive("milestones", m)
    if list(self.milestones) != sorted(set(self.milestones)):
      raise ValueError(f"milestones must be strictly increasing epochs, got "
                       f"{tuple(self.milestones)}")
    if not isinstance(self.data, str) or not self.data:
      raise ValueError(f"data must be a non-empty name, got {self.data!r}")
    return self


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C during `train`: the run stopped at a step boundary; `epochs` are checkpointed.

  >>> from mimictheory.train import TrainingInterrupted
  >>> err = TrainingInterrupted("runs/a", 3)
  >>> err.epochs, isinstance(err, KeyboardInterrupt)
  (3, True)
  """

  def __init__(self, out, epochs: int):
    super().__init__(f"interrupted; {out} keeps its last complete checkpoint (epoch {epochs}); "
                     "run the same command again to resume")
    self.epochs = epochs


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What `train` returns: the per-epoch metrics, how the run ended, and the trained model.

  >>> import tempfile
  >>> from mimictheory.train import TrainConfig, synthetic_data, train
  >>> with tempfile.TemporaryDirectory() as out:
  ...   config = TrainConfig(epochs=1, depth=2, width=32, batch_size=16, milestones=())
  ...   result = train(config, synthetic_data(64), out)
  >>> result.status, len(result.history)
  ('finished', 1)
  """

  history: list  # one dict per epoch
  status: str  # "finished", "diverged" or "stopped" (max_epochs reached before the end)
  model: nnx.Module
  resumed_from: int = 0  # the epoch of the checkpoint this call started from (0: a new run)


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
  """The rate at each optimiser step (from 0): a linear warm-up over `warmup_epochs`,
  warmup_start + lr·step/W for the W warm-up steps (the official `WarmUpLR`), then `lr`, × `decay`
  at each milestone epoch (counted from the start of training).

  >>> from mimictheory.train import TrainConfig, learning_rate_schedule
  >>> config = TrainConfig(lr=0.1, epochs=4, warmup_epochs=0, milestones=(2,))
  >>> lr = learning_rate_schedule(config, steps_per_epoch=10)
  >>> round(float(lr(0)), 6), round(float(lr(25)), 6)   # ×0.1 at the epoch-2 milestone
  (0.1, 0.01)
  >>> warm = learning_rate_schedule(TrainConfig(lr=0.1, warmup_epochs=1), steps_per_epoch=10)
  >>> [round(float(warm(s)), 6) for s in (0, 5, 10)]
  [0.0001, 0.0501, 0.1]
  """
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  boundaries = {int(round(m * steps_per_epoch)): config.decay for m in config.milestones}
  steps = optax.piecewise_constant_schedule(config.lr, boundaries)
  if warmup == 0:
    return steps
  return lambda step: jnp.where(step < warmup,
                                config.warmup_start + config.lr * step / warmup, steps(step))


def optimizer(model: nnx.Module, learning_rate, momentum: float = 0.9,
              weight_decay: float = 5e-4) -> nnx.Optimizer:
  """The paper's optimiser: SGD with momentum and weight decay (a rate or an Optax schedule).

  >>> from flax import nnx
  >>> from mimictheory.nn import MLP
  >>> from mimictheory.train import optimizer
  >>> opt = optimizer(MLP(16, 4, depth=2, width=32, rngs=nnx.Rngs(0)), 0.1)
  >>> type(opt).__name__
  'Optimizer'
  """
  tx = optax.chain(optax.add_decayed_weights(weight_decay),
                   optax.sgd(learning_rate, momentum=momentum))
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def train_step(model: nnx.Module, opt: nnx.Optimizer, x, y):
  """One optimiser step on the batch (x, y), then the weight-mean projection; the loss.

  The one training step of the project: `train` runs it under `nnx.jit`, and
  `memory.train_step_memory` compiles the same function to measure it.

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from mimictheory.nn import MLP
  >>> from mimictheory.train import optimizer, synthetic_data, train_step
  >>> (x, y), _ = synthetic_data(32)
  >>> model = MLP(16, 4, depth=2, width=32, rngs=nnx.Rngs(0))
  >>> loss = nnx.jit(train_step)(model, optimizer(model, 0.1), jnp.asarray(x), jnp.asarray(y))
  >>> bool(jnp.isfinite(loss))
  True
  """
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  opt.update(model, grads)
  project_weight_mean(model)
  return loss


_jit_train_step = nnx.jit(train_step)


@nnx.jit
def _eval_sums(model, x, y, valid):
  """Summed loss and correct predictions over the rows marked `valid` (padding excluded)."""
  logits = model(x)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  correct = jnp.argmax(logits, -1) == y
  return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(valid & correct)


def evaluate(model: nnx.Module, x, y, batch: int = 1000, mesh=None):
  """(mean loss, accuracy) of `model` in its current mode on (x, y), `batch` rows at a time
  (the last batch padded to the same shape: one compilation), each batch split over `mesh`.

  >>> from flax import nnx
  >>> from mimictheory.nn import MLP
  >>> from mimictheory.train import evaluate, synthetic_data
  >>> (_, _), (x, y) = synthetic_data(64)
  >>> loss, accuracy = evaluate(MLP(16, 4, depth=2, width=32, rngs=nnx.Rngs(0)), x, y, batch=10)
  >>> 0.0 <= accuracy <= 1.0
  True
  """
  batch = min(checks.check_int("batch", batch, minimum=1), len(x))
  if mesh is not None:
    batch = -(-batch // mesh.devices.size) * mesh.devices.size
  put = _batch_placement(mesh)
  loss = correct = 0.0
  for start in range(0, len(x), batch):
    xb, yb = x[start:start + batch], y[start:start + batch]
    valid = np.arange(batch) < len(xb)
    if len(xb) < batch:
      xb = np.concatenate([xb, np.zeros((batch - len(xb),) + xb.shape[1:], xb.dtype)])
      yb = np.concatenate([yb, np.zeros(batch - len(yb), yb.dtype)])
    sums = _eval_sums(model, put(xb), put(yb), put(valid))
    loss, correct = loss + float(sums[0]), correct + float(sums[1])
  return loss / len(x), correct / len(x)


def data_mesh(devices=None, axis: str = "data"):
  """A one-axis `jax.sharding.Mesh` over `devices` (default: all devices of the process, or of
  every process after `jax.distributed.initialize()`) for data-parallel training.

  >>> from mimictheory.train import data_mesh
  >>> data_mesh().axis_names
  ('data',)
  """
  from jax.sharding import Mesh
  return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (axis,))


def _batch_placement(mesh):
  """Puts a batch on the device(s): its leading axis split over `mesh` (data parallel)."""
  if mesh is None:
    return jnp.asarray
  from jax.sharding import NamedSharding, PartitionSpec
  sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
  return lambda a: jax.device_put(np.asarray(a), sharding)


def _replicate(tree, mesh):
  """`tree`'s arrays replicated on every device of `mesh` (parameters, optimiser state)."""
  from jax.sharding import NamedSharding, PartitionSpec
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _build(config: TrainConfig, shape, classes: int, steps_per_epoch: int):
  if config.model == "mlp":
    if len(shape) != 1:
      raise ValueError(f"model 'mlp' needs flat inputs, got inputs of shape {shape}")
    model = MLP(shape[0], classes, depth=config.depth, width=config.width, norm=config.norm,
                rngs=nnx.Rngs(config.seed))
  else:
    if tuple(shape) != (32, 32, 3):
      raise ValueError(f"model {config.model!r} needs 32x32x3 images, got shape {shape}")
    from mimictheory._src.models import make_model
    model = make_model(config.model, classes=classes, norm=config.norm, seed=config.seed,
                       width=config.model_width)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  return model, optimizer(model, schedule, config.momentum, config.weight_decay)


def _check_model_memory(config: TrainConfig, shape, classes: int) -> None:
  """Refuse, before building, an MLP whose parameters (with their gradients and momentum) and
  activations (kept for the backward pass) do not fit: `train --depth 100000 --width 100000`
  ran for 7 minutes before the kernel's OOM killer ended it without a word. The CIFAR models
  have fixed sizes (`width` is their channel multiplier; the `memory` command measures them)."""
  if config.model != "mlp":
    return
  d, w, depth = int(np.prod(shape)), config.width, config.depth
  params = d * w + (depth - 1) * w * w + w * classes + (depth + 1) * w
  activations = 4 * config.batch_size * w * depth  # pre/post activation, norm, gradient
  need = 4.0 * (3 * params + activations)
  checks.check_memory(
      "train", need, f"{params:.3g} float32 parameters with their gradients and momentum, and "
      f"{activations:.3g} activations at batch {config.batch_size}",
      "use a smaller depth, width or batch_size")


def _last_bn_variance(model):
  return None if model.last_bn is None else np.asarray(model.last_bn.var[...]).tolist()


def train(config: TrainConfig, data, out, max_epochs: int | None = None,
          progress: bool = False, on_step=None, mesh=None) -> TrainResult:
  """Train (or resume) `config` on `data` = ((x_train, y_train), (x_test, y_test)) in `out`.

  Writes `out/config.json` (with a fingerprint of the data), `out/metrics.jsonl` (one strict
  JSON line per epoch) and Orbax checkpoints in `out/checkpoints`, each epoch's metrics line
  before its checkpoint. `max_epochs` stops after that many epochs in total; calling again
  resumes. Another configuration or other data in `out` is an error, except a larger `epochs`,
  which extends a run. `on_step(step, model, loss)` is called after every optimiser step.
  Raises `TrainingInterrupted` on Ctrl-C (after the last complete checkpoint).

  `mesh` (see `data_mesh`): data-parallel training, each batch split over the mesh's devices,
  parameters and optimiser state replicated. XLA inserts the gradient all-reduce, and BN's
  batch statistics (the last BN's too) are over the whole batch, so a step is the
  single-device step up to float32 summation order; the weight-mean projection acts on the
  replicated kernels. Several processes (`mimictheory._src.distributed.initialize`, or
  `jax.distributed.initialize()`, first in every process): each calls `train` with the same
  configuration, data and `out` (a folder they all see) and `data_mesh()` (every process's
  devices); process 0 writes config.json and the metrics, Orbax writes the checkpoints with
  all of them, and a rerun of all of them resumes (tests/test_multiprocess_training.py).

  >>> import tempfile
  >>> from mimictheory.train import TrainConfig, synthetic_data, train
  >>> with tempfile.TemporaryDirectory() as out:
  ...   config = TrainConfig(epochs=2, depth=2, width=32, batch_size=32, milestones=())
  ...   result = train(config, synthetic_data(128), out)
  >>> result.status, [r["epoch"] for r in result.history]
  ('finished', [1, 2])
  """
  config = config.validate()
  (x_train, y_train), (x_test, y_test) = data
  if config.model == "mlp" and x_train.ndim > 2:  # images into an MLP: flattened
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
  classes = int(max(y_train.max(), y_test.max())) + 1
  if len(x_train) < config.batch_size:
    raise ValueError(f"batch_size must be <= the training set size ({len(x_train)})")
  if mesh is not None and config.batch_size % mesh.devices.size:
    raise ValueError(f"batch_size must be a multiple of the {mesh.devices.size} devices of the "
                     f"mesh, got {config.batch_size}")
  batches = epoch_batches(len(x_train), config.batch_size, config.drop_last,
                          1 if mesh is None else mesh.devices.size)
  steps_per_epoch = len(batches)
  _check_model_memory(config, x_train.shape[1:], classes)
  model, opt = _build(config, x_train.shape[1:], classes, steps_per_epoch)  # validates shapes
  if mesh is not None:
    nnx.update((model, opt), _replicate(nnx.state((model, opt)), mesh))
  fingerprint = runs.fingerprint(data)
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  with runs.lock(out):
    runs.start_config(out, config, fingerprint)
    manager, start = runs.restore(out, model, opt)
    if start and progress:
      print(f"resuming {out} from its checkpoint of epoch {start}", file=sys.stderr, flush=True)
    try:
      if start > config.epochs:
        raise ValueError(f"epochs must be >= {start}, the epochs this run in {str(out)!r} has "
                         f"completed, got {config.epochs}")
      return _epochs(config, model, opt, manager, out, start, max_epochs, batches,
                     (x_train, y_train), (x_test, y_test), progress, on_step, mesh)
    finally:
      manager.close()


def epoch_batches(n: int, batch_size: int, drop_last: bool = False, devices: int = 1):
  """The (start, stop) positions of each batch in an epoch's shuffled order of `n` examples:
  full batches, then the last, partial one unless `drop_last` (PyTorch's DataLoader keeps it).
  The partial batch is cut to a multiple of the `devices` it is split over, and dropped below
  2 examples (batch statistics need two).

  >>> from mimictheory.train import epoch_batches
  >>> epoch_batches(10, 4), epoch_batches(10, 4, drop_last=True), epoch_batches(9, 4)
  ([(0, 4), (4, 8), (8, 10)], [(0, 4), (4, 8)], [(0, 4), (4, 8)])
  """
  full = n // batch_size
  spans = [(i * batch_size, (i + 1) * batch_size) for i in range(full)]
  rest = (n - full * batch_size) // devices * devices
  if not drop_last and rest >= 2:
    spans.append((full * batch_size, full * batch_size + rest))
  return spans


def _epochs(config, model, opt, manager, out, start, max_epochs, batches, train_set,
            test_set, progress, on_step, mesh):
  (x_train, y_train), (x_test, y_test) = train_set, test_set
  history = runs.read_history(out, start)
  diverged = runs.read_history(out, start + 1)[len(history):]
  if diverged and diverged[0].get("diverged"):
    # this run diverged in the epoch after its last checkpoint; training is deterministic, so
    # it would again: report it as it ended instead of training that epoch again
    return TrainResult(history + diverged[:1], "diverged", model, start)
  end = config.epochs if max_epochs is None else min(config.epochs, max_epochs)
  status = "finished" if end == config.epochs else "stopped"
  put = _batch_placement(mesh)
  steps_per_epoch = len(batches)
  fill = x_train.min(axis=tuple(range(x_train.ndim - 1))) if x_train.ndim == 4 else None
  with runs.deferred_interrupt() as interrupted:
    for epoch in progress_bar(range(start, end), progress, "epochs"):
      rng = np.random.default_rng([config.seed, epoch])  # data order and augmentation
      order = rng.permutation(len(x_train))
      images = config.augment and x_train.ndim == 4
      model.train()
      losses = []
      for i, (first, stop) in enumerate(batches):
        if interrupted.is_set():
          raise TrainingInterrupted(out, epoch)
        idx = order[first:stop]
        batch = augment(x_train[idx], rng, fill=fill) if images else x_train[idx]
        losses.append(_jit_train_step(model, opt, put(batch), put(y_train[idx])))
        if on_step is not None:
          on_step(epoch * steps_per_epoch + i + 1, model, losses[-1])
      sizes = np.array([stop - first for first, stop in batches], dtype=np.float64)
      train_loss = float(np.dot(jax.device_get(losses), sizes) / sizes.sum())
      model.eval()
      test_loss, test_acc = evaluate(model, x_test, y_test, config.eval_batch, mesh)
      record = dict(epoch=epoch + 1, train_loss=train_loss, test_loss=test_loss,
                    test_accuracy=test_acc, last_bn_variance=_last_bn_variance(model))
      if not math.isfinite(train_loss):
        record["diverged"] = True
        history.append(record)
        runs.write_history(out, history)
        status = "diverged"
        break
      history.append(record)
      # The metrics line first, then the checkpoint: a run killed in between resumes from the
      # previous checkpoint and drops the line (`read_history`), so the two never disagree.
      runs.write_history(out, history)
      runs.save_checkpoint(out, manager, epoch + 1, model, opt)
  return TrainResult(history, status, model, start)


