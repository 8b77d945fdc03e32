"""Training MimicNorm models with Optax, checkpointed with Orbax, resumable bit for bit.

The paper's recipe (section 4): SGD with momentum 0.9, learning rate 0.1, weight decay 5e-4,
a linear warm-up over 2 epochs, and the rate × 0.1 at epochs 80, 110 and 135 of 150. Weight
mean is re-projected after every optimiser step. Every epoch ends with a checkpoint (Orbax
writes it under a temporary name and renames it) and one JSON line of metrics; an interrupted
run started again with the same arguments resumes from the last checkpoint, and because the
data order of every epoch derives from (seed, epoch) it ends exactly where an uninterrupted
run ends. A NaN or infinite loss stops the run and is recorded as diverged.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mimictheory._src import checks
from mimictheory._src.io import atomic_path, progress_bar
from mimictheory._src.nn import MLP, NORM_OPTIONS, project_weight_mean

__all__ = ["TrainConfig", "TrainResult", "learning_rate_schedule", "train", "synthetic_data",
           "digits_split", "load_data"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines a run (saved next to its checkpoints)."""

  norm: str = "mimic"
  model: str = "mlp"  # or a CIFAR model of mimictheory.nn.MODELS (NHWC image data)
  model_width: float = 1.0  # channel multiplier of the CIFAR models
  augment: bool = True  # random crop (padding 4) and horizontal flip for image data
  depth: int = 8
  width: int = 256
  epochs: int = 150
  batch_size: int = 128
  lr: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 5e-4
  warmup_epochs: float = 2.0
  milestones: tuple = (80, 110, 135)
  decay: float = 0.1
  seed: int = 0

  def validate(self) -> "TrainConfig":
    from mimictheory._src.models import MODELS
    checks.check_choice("norm", self.norm, NORM_OPTIONS)
    checks.check_choice("model", self.model, ("mlp",) + tuple(MODELS))
    checks.check_positive("model_width", self.model_width)
    for name in ("depth", "width", "epochs", "batch_size"):
      checks.check_int(name, getattr(self, name), minimum=1)
    checks.check_positive("lr", self.lr)
    checks.check_interval("momentum", self.momentum, 0.0, 1.0)
    checks.check_nonnegative("weight_decay", self.weight_decay)
    checks.check_nonnegative("warmup_epochs", self.warmup_epochs)
    checks.check_int("seed", self.seed, minimum=0)
    return self


@dataclasses.dataclass(frozen=True)
class TrainResult:
  history: list  # one dict per epoch
  status: str  # "finished", "diverged" or "stopped" (max_epochs reached before the end)
  model: nnx.Module


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
  """Linear warm-up over `warmup_epochs`, then × `decay` at each milestone epoch."""
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  boundaries = {int(m * steps_per_epoch): config.decay for m in config.milestones}
  steps = optax.piecewise_constant_schedule(config.lr, boundaries)
  if warmup == 0:
    return steps
  ramp = optax.linear_schedule(config.lr / warmup, config.lr, warmup)
  return lambda step: jnp.where(step < warmup, ramp(step), steps(step))


def synthetic_data(n: int = 512, d: int = 16, classes: int = 4, seed: int = 0):
  """Gaussian clusters: a tiny learnable problem for tests (train, test splits)."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, d)) * 2.0
  y = rng.integers(0, classes, size=n)
  x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
  cut = n * 3 // 4
  return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def digits_split(seed: int = 0):
  """scikit-learn's bundled digits, standardised, 80/20 split (train, test)."""
  from mimictheory._src.data import digits
  x, y = digits()
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order].astype(np.float32), y[order]
  cut = len(x) * 4 // 5
  return (x[:cut], y[:cut]), (x[cut:], y[cut:])


DATASETS = ("digits", "synthetic", "synthetic_images", "cifar10", "cifar100")


def load_data(name: str, path=None):
  """((x_train, y_train), (x_test, y_test)) for `name` in digits | synthetic |
  synthetic_images | cifar10 | cifar100 (CIFAR from a local copy in the python-pickle format,
  NHWC; nothing is downloaded). An MLP flattens images itself."""
  checks.check_choice("data", name, DATASETS)
  if name == "digits":
    return digits_split()
  if name == "synthetic":
    return synthetic_data()
  if name == "synthetic_images":
    return synthetic_images()
  from mimictheory._src.data import cifar
  (x_train, y_train), (x_test, y_test) = cifar(path, classes=100 if name == "cifar100" else 10)
  return (x_train, y_train), (x_test, y_test)


def synthetic_images(n: int = 256, classes: int = 4, seed: int = 0):
  """Tiny 32x32x3 images whose class sets a colour pattern: for tests of the CIFAR models."""
  rng = np.random.default_rng(seed)
  patterns = rng.normal(size=(classes, 1, 1, 3)).astype(np.float32)
  y = rng.integers(0, classes, size=n)
  x = (patterns[y] + 0.5 * rng.normal(size=(n, 32, 32, 3))).astype(np.float32)
  cut = n * 3 // 4
  return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def _rotate(x, degrees):
  """Rotate every image of x (N, H, W, C) about its centre by its angle (bilinear, zero fill),
  all at once by gathering the four neighbours of every rotated pixel."""
  n, h, w, _ = x.shape
  theta = np.deg2rad(degrees)[:, None, None]
  yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
  src_y = np.cos(theta) * yy - np.sin(theta) * xx + (h - 1) / 2  # inverse map: output -> input
  src_x = np.sin(theta) * yy + np.cos(theta) * xx + (w - 1) / 2
  y0, x0 = np.floor(src_y).astype(int), np.floor(src_x).astype(int)
  fy, fx = (src_y - y0)[..., None], (src_x - x0)[..., None]
  batch = np.arange(n)[:, None, None]

  def pixel(yi, xi):
    inside = ((yi >= 0) & (yi < h) & (xi >= 0) & (xi < w))[..., None]
    return np.where(inside, x[batch, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0.0)

  return ((1 - fy) * (1 - fx) * pixel(y0, x0) + (1 - fy) * fx * pixel(y0, x0 + 1)
          + fy * (1 - fx) * pixel(y0 + 1, x0) + fy * fx * pixel(y0 + 1, x0 + 1)).astype(x.dtype)


def augment(x, rng: np.random.Generator, rotation: float = 15.0):
  """The paper's CIFAR augmentation, seeded: random 32x32 crop of the 4-padded image, a
  horizontal flip with probability 1/2 and a rotation by up to ±`rotation` degrees (NHWC)."""
  n, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  dy, dx = rng.integers(0, 9, size=n), rng.integers(0, 9, size=n)
  rows = dy[:, None] + np.arange(h)[None, :]
  cols = dx[:, None] + np.arange(w)[None, :]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  flip = rng.random(n) < 0.5
  out[flip] = out[flip, :, ::-1]
  if rotation > 0:
    out = _rotate(out, rng.uniform(-rotation, rotation, size=n))
  return out


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
  tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                   optax.sgd(learning_rate_schedule(config, steps_per_epoch),
                             momentum=config.momentum))
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def _train_step(model, optimizer, x, y):
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  project_weight_mean(model)
  return loss


@nnx.jit
def _eval_step(model, x, y):
  logits = model(x)
  return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
          jnp.mean(jnp.argmax(logits, -1) == y))


def _last_bn_variance(model):
  return None if model.last_bn is None else np.asarray(model.last_bn.var[...]).tolist()


def _checkpointer(out: Path):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(out.resolve() / "checkpoints",
                               options=ocp.CheckpointManagerOptions(max_to_keep=2))


def train(config: TrainConfig, data, out, max_epochs: int | None = None,
          progress: bool = False, on_step=None) -> TrainResult:
  """Train (or resume) `config` on `data` = ((x_train, y_train), (x_test, y_test)) in `out`.

  Writes `out/config.json`, `out/metrics.jsonl` (one line per epoch) and Orbax checkpoints in
  `out/checkpoints`. `max_epochs` stops after that many epochs in total (an interruption you
  choose); calling again resumes. A different config in an existing `out` is an error.
  `on_step(step, model, loss)` is called after every optimiser step (for per-step logging).
  """
  import orbax.checkpoint as ocp
  config = config.validate()
  (x_train, y_train), (x_test, y_test) = data
  if config.model == "mlp" and x_train.ndim > 2:  # images into an MLP: flattened
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
  classes = int(max(y_train.max(), y_test.max())) + 1
  steps_per_epoch = len(x_train) // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size must be <= the training set size ({len(x_train)})")
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  saved = out / "config.json"
  as_json = json.dumps(dataclasses.asdict(config), sort_keys=True)
  if saved.exists() and saved.read_text() != as_json:
    raise ValueError(f"out {str(out)!r} holds a run with another configuration; use a new folder")
  with atomic_path(saved) as tmp:
    tmp.write_text(as_json)
  model, optimizer = _build(config, x_train.shape[1:], classes, steps_per_epoch)
  manager = _checkpointer(out)
  start = 0
  if manager.latest_step() is not None:
    start = manager.latest_step()
    target = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
    restored = manager.restore(start, args=ocp.args.StandardRestore(target))
    nnx.update(model, restored["model"])
    nnx.update(optimizer, restored["optimizer"])
  history = _read_history(out / "metrics.jsonl", start)
  end = config.epochs if max_epochs is None else min(config.epochs, max_epochs)
  status = "finished" if end == config.epochs else "stopped"
  for epoch in progress_bar(range(start, end), progress, "epochs"):
    rng = np.random.default_rng([config.seed, epoch])  # data order and augmentation
    order = rng.permutation(len(x_train))
    images = config.augment and x_train.ndim == 4
    model.train()
    losses = []
    for i in range(steps_per_epoch):
      idx = order[i * config.batch_size:(i + 1) * config.batch_size]
      batch = augment(x_train[idx], rng) if images else x_train[idx]
      losses.append(_train_step(model, optimizer, jnp.asarray(batch),
                                jnp.asarray(y_train[idx])))
      if on_step is not None:
        on_step(epoch * steps_per_epoch + i + 1, model, losses[-1])
    train_loss = float(np.mean(jax.device_get(losses)))
    model.eval()
    test_loss, test_acc = (float(v) for v in _eval_step(model, jnp.asarray(x_test),
                                                         jnp.asarray(y_test)))
    record = dict(epoch=epoch + 1, train_loss=train_loss, test_loss=test_loss,
                  test_accuracy=test_acc, last_bn_variance=_last_bn_variance(model))
    if not math.isfinite(train_loss):
      record["diverged"] = True
      history.append(record)
      _append(out / "metrics.jsonl", history)
      status = "diverged"
      break
    history.append(record)
    manager.save(epoch + 1, args=ocp.args.StandardSave(
        {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}))
    manager.wait_until_finished()
    _append(out / "metrics.jsonl", history)
  manager.close()
  return TrainResult(history, status, model)


def _read_history(path: Path, epochs: int) -> list:
  """The metrics of the first `epochs` epochs (lines beyond the checkpoint are dropped)."""
  if not path.exists():
    return []
  lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in lines if r["epoch"] <= epochs]


def _append(path: Path, history: list) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
