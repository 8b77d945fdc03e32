"""The data behind the figures, computed from the public API: per-unit pre-activations
(Figures 2-3), pair correlations (supplementary 1-2), the residual theory (Figure 5), the NTK
condition points and the last BN's variance during training (supplementary 3). Drawing them
is module `figures`'s job."""
from __future__ import annotations

import dataclasses

import numpy as np

from mimictheory._src.io import progress_bar

__all__ = ["SEED", "WIDTH", "figure_inputs", "sample_rows", "unit_spread_ratio", "unit_boxes",
           "pair_correlations", "residual_theory", "ntk_condition_points", "last_bn_variance",
           "CONV_NORMS", "conv_stack", "conv_signals"]

SEED = 20210202  # every random draw of the figures derives from it (recorded in the npz)
WIDTH = 300


def _preactivations(net, x, seed):
  """Pre-activations of every hidden layer of one random network, (L, N, n), in float64."""
  import jax
  with jax.enable_x64(True):
    params = net.init(jax.random.key(seed), x.shape[1])
    return np.asarray(jax.jit(net.propagate)(params, x)[0])


def unit_spread_ratio(h) -> float:
  """How far units drift apart relative to their spread over the batch, for h of shape (N, n):
  std over units of a unit's batch mean / mean over units of its batch std (Figures 2, 3)."""
  h = np.asarray(h)
  return float(np.std(h.mean(axis=0)) / np.mean(h.std(axis=0)))


def sample_rows(x, size, seed):
  rng = np.random.default_rng(seed)
  return x[rng.permutation(len(x))[:size]]


def unit_boxes(norm: str, x, depth: int = 51, layers=(20, 50), units: int = 30,
               width: int = WIDTH, seed: int = SEED) -> dict:
  """Values over the batch of `units` random units at `layers` of a ReLU network: the data of
  Figures 2 (norm none, (σw², σb²) = (2, 0)) and 3 (batch_norm; weight_mean at Theorem 3's σw²).
  """
  from mimictheory._src.finite import finite_network
  net = finite_network("relu", depth=depth, width=width, norm=norm,
                          sw2=None if norm == "weight_mean" else 2.0)
  pre = _preactivations(net, x, seed)
  pick = np.sort(np.random.default_rng(seed + 1).choice(width, units, replace=False))
  data = {"units": pick, "layers": np.asarray(layers), "seed": seed, "width": width,
          "depth": depth, "sw2": net.sw2, "spread_ratio": np.array([unit_spread_ratio(p)
                                                                    for p in pre])}
  for layer in layers:
    data[f"layer{layer}"] = pre[layer - 1][:, pick]
  return data


def pair_correlations(norm: str, x, pairs: int = 200, depth: int = 50, width: int = WIDTH,
                      seed: int = SEED) -> dict:
  """Correlation of `pairs` random input pairs at every layer of one network of width `width`,
  and the infinite-width theory for the same pairs: supplementary Figures 1 and 2."""
  from mimictheory._src.finite import finite_network
  pairs = min(pairs, len(x) // 2)
  batch = sample_rows(x, 2 * pairs, seed)
  net = finite_network("relu", depth=depth, width=width, norm=norm,
                          sw2=None if norm == "weight_mean" else 2.0)
  import jax
  with jax.enable_x64(True):
    params = net.init(jax.random.key(seed), batch.shape[1])
    corr = np.asarray(jax.jit(net.signal)(params, batch).correlation)
  theory = net.theory_correlations(batch)
  first, second = np.arange(0, 2 * pairs, 2), np.arange(1, 2 * pairs, 2)
  inputs = batch[first] @ batch[second].T
  norms = np.linalg.norm(batch[first], axis=1) * np.linalg.norm(batch[second], axis=1)
  data = {"layers": np.arange(1, depth + 1), "finite": corr[:, first, second],
          "theory": theory[:, first, second], "input": np.diagonal(inputs) / norms,
          "seed": seed, "width": width, "sw2": net.sw2}
  if norm == "batch_norm":  # Theorem 2's approximation beside the exact finite-batch theory
    paper = dataclasses.replace(net, norm="batch_norm_paper").theory_correlations(batch)
    data["theory_paper"] = paper[:, first, second]
  return data


def figure_inputs(source):
  from mimictheory._src.data import load_images
  x, _, name = load_images(source)
  return x, name


# ----------------------------------------------------------------------------------------------
# Figure 5: residual branches at initialisation.
# ----------------------------------------------------------------------------------------------
def residual_theory(norm: str, alpha, depth: int = 50, width: int = 256, inputs: int = 8,
                    seed: int = SEED):
  """Infinite-width stream and branch variances per block of Figure 5's networks
  (`residual_kernels`, σw² = 2, σb² = 0, stream variance 1 entering block 1)."""
  from mimictheory._src.residual import residual_kernels
  x = np.random.default_rng(seed).normal(size=(inputs, width))
  x -= x.mean(axis=1, keepdims=True)  # mean-free rows: weight mean leaves the input layer alone
  x *= np.sqrt(width) / np.linalg.norm(x, axis=1, keepdims=True)
  theory_norm = {"batch_norm": "batch_norm", "mimic": "weight_mean", "none": "none"}[norm]
  return residual_kernels(x, depth=depth, activation="relu", sw2=2.0, sb2=0.0,
                             norm=theory_norm, alpha=alpha, input_gain=0.5,
                             fan_in=None if norm == "batch_norm" else width)


def ntk_condition_points(n_inputs: int = 64):
  """(label, activation, sw2, sb2, norm): erf (closed form, the phase structure of tanh) in the
  ordered phase, on the critical line and in the chaotic phase at σb² = 0.05; ReLU at (2, 0),
  with weight mean (Theorem 3) and with BN (exact at the batch, and Theorem 2)."""
  from mimictheory._src.phase import critical_line
  critical = float(critical_line("erf", sb2=[0.05]).sw2[0])
  return [
    ("erf ordered (σw² = 0.5)", "erf", 0.5, 0.05, "none"),
    (f"erf critical (σw² = {critical:.3f})", "erf", critical, 0.05, "none"),
    ("erf chaotic (σw² = 3)", "erf", 3.0, 0.05, "none"),
    ("ReLU critical (2, 0)", "relu", 2.0, 0.0, "none"),
    ("ReLU weight mean (Theorem 3)", "relu", None, 0.0, "weight_mean"),
    (f"ReLU batch norm (exact, batch = the {n_inputs} inputs)", "relu", 2.0, 0.0, "batch_norm"),
    ("ReLU batch norm (Theorem 2, paper)", "relu", 2.0, 0.0, "batch_norm_paper"),
  ]


def last_bn_variance(norm: str, lr: float, epochs: int = 2, depth: int = 16, width: int = 256,
                     seed: int = SEED, workdir=None) -> dict:
  """Per-step running variance of the last BN (per class) and training loss of a deep ReLU MLP
  on the digits: the data of supplementary Figure 3."""
  import tempfile
  from mimictheory._src.data import digits_split
  from mimictheory._src.train import TrainConfig, train
  steps, variance, loss = [], [], []

  def record(step, model, step_loss):
    steps.append(step)
    variance.append(np.asarray(model.last_bn.var[...]))
    loss.append(float(step_loss))

  config = TrainConfig(norm=norm, depth=depth, width=width, epochs=epochs, lr=lr,
                       warmup_epochs=0.0, milestones=(), seed=seed % 2**31)
  with tempfile.TemporaryDirectory(dir=workdir) as tmp:
    result = train(config, digits_split(), tmp, on_step=record)
  final = result.history[-1] if result.history else {}
  return {"steps": np.asarray(steps), "variance": np.asarray(variance), "loss": np.asarray(loss),
          "status": result.status, "lr": lr, "seed": seed,
          "test_accuracy": float(final.get("test_accuracy", np.nan))}


# ----------------------------------------------------------------------------------------------
# Figures 2 and 3 on convolutions, and the conv phase picture.
# ----------------------------------------------------------------------------------------------
CONV_NORMS = ("none", "batch_norm", "weight_mean")


def conv_stack(norm: str, depth: int, channels, full_batch_limit: bool = False):
  """The layers of a plain, BN or weight-mean stack of `depth` 3 × 3 SAME convolutions with
  ReLU (BN before each activation, as the paper's Figure 3), σb = 0: He's σw² = 2, or with
  weight mean the stable σw² of Theorem 3 (its infinite-width value). `channels` None: the
  infinite-width layers of the theory; `full_batch_limit`: Theorem 2's BN for the theory."""
  import math

  from mimictheory._src import stax
  from mimictheory._src.maps import stable_sw2
  sw2 = float(stable_sw2("relu", norm="weight_mean")) if norm == "weight_mean" else 2.0
  conv = lambda: stax.Conv(channels, (3, 3), padding="SAME", W_std=math.sqrt(sw2),  # noqa: E731
                           weight_mean=norm == "weight_mean")
  layers = [conv()]
  for _ in range(depth - 1):
    if norm == "batch_norm":
      layers.append(stax.BatchNorm(full_batch_limit=full_batch_limit))
    layers += [stax.Relu(), conv()]
  return layers, sw2


def _conv_preactivations(layers, x, seed):
  """Each convolution's output of one random finite network on images x, float64: a list of
  (N, H, W, C) arrays, one per convolution."""
  import jax

  from mimictheory._src import stax
  out = []
  with jax.enable_x64(True):
    h = jax.numpy.asarray(x)
    keys = jax.random.split(jax.random.key(seed), len(layers))
    apply = jax.jit(lambda layer, p, a: layer.apply(p, a), static_argnums=0)
    for layer, key in zip(layers, keys):
      _, params = layer.init(key, h.shape)
      h = apply(layer, params, h)
      if isinstance(layer, stax.Conv):
        out.append(np.asarray(h))
  return out


def _spatial_statistics(cov, own, eye_inputs):
  """From a full image kernel (N, N, H, W, H, W) and each input's own covariance
  (N, H, W, H, W): the mean correlation between distinct inputs at the same position, and
  between positions of one input at distance 1 and ≥ 4."""
  n, h, w = own.shape[:3]
  size = h * w
  flat = cov.reshape(n, n, size, size)
  own = own.reshape(n, size, size)
  var = np.diagonal(own, axis1=1, axis2=2)  # (N, HW)
  same = np.diagonal(flat, axis1=2, axis2=3)  # (N, N, HW)
  rho_inputs = same / np.sqrt(var[:, None] * var[None])
  grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
  dist = np.abs(grid[:, None] - grid[None]).max(-1)
  rho_pos = own / np.sqrt(var[:, :, None] * var[:, None, :])
  return dict(rho_inputs=rho_inputs[~eye_inputs].mean(),
              rho_near=rho_pos[:, dist == 1].mean(), rho_far=rho_pos[:, dist >= 4].mean())


def conv_signals(norm: str, images, depth: int = 51, channels: int = 64, layers=(20, 50),
                 units: int = 30, values: int = 2048, theory_inputs: int = 16,
                 seed: int = SEED) -> dict:
  """A conv stack on `images` (N, H, W, C), measured and predicted layer by layer: the data of
  the convolutional Figures 2 and 3 and of the conv phase picture.

  Measured, in one random network of `channels` channels: each convolution's channels over the
  batch and the positions (`values` of them sampled for `units` random channels at `layers`,
  for the box plots), the spread ratio (std over channels of a channel's mean / mean
  within-channel std), and on the first `theory_inputs` images the correlations between inputs
  at the same position and between positions (distance 1, ≥ 4) of one input. Predicted, by the
  convolutional NNGP of the same description (`stax.Conv`) on those images: a channel's mean
  over the batch and positions has variance S = the mean of K over every pair of (input,
  position) and the within-channel variance is D − S (D: the mean per-position variance;
  `Kernel.unit_statistics`), so the spread ratio is √(S / (D − S)); and the same
  correlations. BN: the exact finite-batch
  kernel at the batch of those images × positions (about two minutes for 16 images and 51
  layers), and Theorem 2's full-batch limit beside it (`theory_paper_*`), which departs from
  the exact kernel and the finite network after about 35 layers on these images."""

  x = np.asarray(images, np.float64)
  body, sw2 = conv_stack(norm, depth, channels)
  pre = _conv_preactivations(body, x, seed)
  rng = np.random.default_rng(seed + 1)
  pick = np.sort(rng.choice(channels, units, replace=False))
  sub = x[:theory_inputs]
  eye = np.eye(len(sub), dtype=bool)  # the measured correlations, on the same images
  measured = dict(ratio=[], rho_inputs=[], rho_near=[], rho_far=[])
  data = {"channels": pick, "layers": np.asarray(layers), "seed": seed, "width": channels,
          "depth": depth, "sw2": sw2, "inputs": len(x), "theory_inputs": len(sub)}
  for i, h in enumerate(pre):
    per_channel = h.reshape(-1, channels)
    means, stds = per_channel.mean(axis=0), per_channel.std(axis=0)
    measured["ratio"].append(means.std() / stds.mean())
    hs = h[:len(sub)]
    cov = np.einsum("xhwc,yHWc->xyhwHW", hs, hs) / channels
    own = np.einsum("xhwc,xHWc->xhwHW", hs, hs) / channels
    stats = _spatial_statistics(cov, own, eye)
    for key in ("rho_inputs", "rho_near", "rho_far"):
      measured[key].append(stats[key])
    if i + 1 in layers:
      rows = rng.choice(len(per_channel), min(values, len(per_channel)), replace=False)
      data[f"layer{i + 1}"] = per_channel[rows][:, pick].astype(np.float32)
  data.update({f"theory_{k}": v for k, v in _conv_theory(norm, depth, sub, len(x)).items()})
  if norm == "batch_norm":  # Theorem 2's full-batch limit beside the exact theory
    data.update({f"theory_paper_{k}": v for k, v in
                 _conv_theory(norm, depth, sub, len(x), full_batch_limit=True).items()})
  data.update({f"measured_{k}": np.asarray(v) for k, v in measured.items()})
  return data


def _conv_theory(norm, depth, sub, batch, full_batch_limit=False) -> dict:
  """The predicted spread ratio and correlations of `conv_signals`, layer by layer, from the
  convolutional NNGP on the images `sub` (every pair of positions), for a batch of `batch`
  inputs."""
  import jax

  from mimictheory._src import stax
  layers, _ = conv_stack(norm, depth, None, full_batch_limit=full_batch_limit)
  net = stax.serial(*layers, stax.GlobalAvgPool())  # every pair of positions
  with jax.enable_x64(True):
    kernels = net.layer_kernels(sub, after=stax.Conv, ntk=False)
  eye = np.eye(len(sub), dtype=bool)
  theory = dict(ratio=[], rho_inputs=[], rho_near=[], rho_far=[], spread=[], within=[])
  for k in kernels:
    stats = _spatial_statistics(np.asarray(k.nngp), np.asarray(k.cov1), eye)
    s, v = (float(a) for a in k.unit_statistics(batch))
    # standardised data have mean 0 over the whole batch, so at the input layer S is 0 and a
    # subsample's estimate a little off it either way: clipped at 0
    s = max(s, 0.0)
    theory["spread"].append(np.sqrt(s))
    theory["within"].append(np.sqrt(v))
    theory["ratio"].append(np.sqrt(s / v))
    for key in ("rho_inputs", "rho_near", "rho_far"):
      theory[key].append(stats[key])
  return {k: np.asarray(v) for k, v in theory.items()}


# ----------------------------------------------------------------------------------------------
# Training dynamics (issue 24): Theorem 1 on training, learning-rate limits, the last BN.
# ----------------------------------------------------------------------------------------------
DYNAMICS_WIDTH = 512
DYNAMICS_CLASSES = 10


def dynamics_task(n_train: int = 128, n_test: int = 128, seed: int = SEED):
  """`n_train` and `n_test` digits (a seeded draw from the standardised 80/20 split) with
  centred one-hot targets (one-hot − 1/10): x (N, 64), Y (N, 10), for both."""
  from mimictheory._src.data import digits_split
  (x, labels), (x_test, labels_test) = digits_split()
  rng = np.random.default_rng(seed)
  a, b = rng.permutation(len(x))[:n_train], rng.permutation(len(x_test))[:n_test]
  onehot = np.eye(DYNAMICS_CLASSES) - 1.0 / DYNAMICS_CLASSES
  return (x[a].astype(np.float64), onehot[labels[a]],
          x_test[b].astype(np.float64), onehot[labels_test[b]])


def dynamics_network(depth: int, activation: str = "relu", sw2=2.0, sb2: float = 0.0,
                     norm: str = "none", width: int = DYNAMICS_WIDTH):
  """The MLP of the dynamics figures as a `stax` description, 10 outputs; sw2 None: the
  stable σw² of Theorem 3 for weight mean (its infinite-width value)."""
  from mimictheory._src import stax
  from mimictheory._src.maps import stable_sw2
  if sw2 is None:
    sw2 = float(stable_sw2(activation, norm="weight_mean"))
  return stax.mlp(depth, activation, sw2, sb2, norm, width=width, out_dim=DYNAMICS_CLASSES)


def dynamics_points(n_inputs: int = 128):
  """(label, activation, sw2, sb2, norm) of Theorem 1's phases on training: the NTK-condition
  figure's erf and ReLU points, BN exact at the batch (Theorem 2's limit has no network)."""
  return [p for p in ntk_condition_points(n_inputs) if p[4] != "batch_norm_paper"]


def dynamics_curves(depth: int = 10, steps: int = 200, seeds: int = 3, lr_fraction: float = 0.25,
                    width: int = DYNAMICS_WIDTH, progress: bool = False) -> dict:
  """Predicted and measured loss curves of every `dynamics_points` network at `depth`,
  trained at `lr_fraction` of its predicted limit (`dynamics.training_curves`)."""
  from mimictheory._src.dynamics import training_curves
  x, y, xt, yt = dynamics_task()
  out = {"depth": depth, "width": width, "lr_fraction": lr_fraction, "seed": SEED}
  points = dynamics_points(len(x))
  for i, (label, act, sw2, sb2, norm) in enumerate(progress_bar(points, progress,
                                                                "training curves")):
    net = dynamics_network(depth, act, sw2, sb2, norm, width)
    test = (xt, yt) if norm != "batch_norm" else (None, None)
    c = training_curves(net, x, y, *test, steps=steps, lr_fraction=lr_fraction, seeds=seeds,
                        seed=SEED % 2**31 + i)
    out.update({f"label{i}": label, f"steps{i}": c.steps, f"predicted_train{i}": c.predicted_train,
                f"train_loss{i}": c.train_loss, f"kappa{i}": c.condition_number,
                f"learning_rate{i}": c.learning_rate, f"max_learning_rate{i}": c.max_learning_rate})
    if c.test_loss is not None:
      out.update({f"predicted_test{i}": c.predicted_test, f"test_loss{i}": c.test_loss})
  return out


DYNAMICS_NORMS = (("none", 2.0), ("weight_mean", None), ("batch_norm", 2.0))


def learning_rate_depths(depths=(2, 5, 10, 20), max_depth: int = 50, width: int = 256,
                         steps: int = 40, seeds: int = 2, iterations: int = 4,
                         progress: bool = False) -> dict:
  """The predicted largest learning rate 2 n_y / λ_max against depth 1..`max_depth` (ReLU;
  plain at (2, 0), weight mean at Theorem 3's σw², BN exact at the batch), and the measured
  brackets of `dynamics.learning_rate_limit` at `depths`, beside the limit of training the
  readout alone (2 n_y / λ_max of the logits' NNGP)."""
  from mimictheory._src.dynamics import learning_rate_limit
  from mimictheory._src.predict import max_learning_rate
  x, y, _, _ = dynamics_task()
  out = {"depths": np.arange(1, max_depth + 1), "measured_depths": np.asarray(depths),
         "width": width, "steps": steps, "seed": SEED}
  jobs = [(norm, sw2, d) for norm, sw2 in DYNAMICS_NORMS for d in depths]
  bar = progress_bar(jobs, progress, "learning-rate limits")
  for norm, sw2 in DYNAMICS_NORMS:
    spec = dynamics_network(max_depth, "relu", sw2, 0.0, norm, width).ntk_spectrum(x)
    lmax = np.asarray(spec.eigenvalues)[:, -1]
    out[f"{norm}_predicted"] = 2 * y.size / lmax[1:]  # after Dense 1..max_depth: depth 1..
  brackets, readout = {}, {}
  for norm, sw2, d in bar:
    net = dynamics_network(d, "relu", sw2, 0.0, norm, width)
    r = learning_rate_limit(net, x, y, steps=steps, seeds=seeds, iterations=iterations,
                            seed=SEED % 2**31)
    brackets.setdefault(norm, []).append([r.predicted, r.low, r.high, r.monotone_low,
                                          r.monotone_high])
    # the limit of training the readout alone: 2 n_y / λ_max of the logits' NNGP
    readout.setdefault(norm, []).append(max_learning_rate(net.kernel_fn(x, None, "nngp"),
                                                          y.size))
  out.update({f"{norm}_measured": np.asarray(v) for norm, v in brackets.items()})
  out.update({f"{norm}_readout": np.asarray(v) for norm, v in readout.items()})
  return out


def last_bn_dynamics(depth: int = 10, multiples=(0.5, 2.0, 8.0, 32.0), steps: int = 200,
                     seeds: int = 2, width: int = DYNAMICS_WIDTH) -> dict:
  """MimicNorm's last BN on the logits of a weight-mean ReLU MLP (`dynamics.last_bn_rate`)."""
  from mimictheory._src.dynamics import last_bn_rate
  x, y, _, _ = dynamics_task()
  r = last_bn_rate(dynamics_network(depth, "relu", None, 0.0, "weight_mean", width), x, y,
                   multiples=multiples, steps=steps, seeds=seeds, seed=SEED % 2**31)
  return {"depth": depth, "steps": r.steps, "learning_rates": r.learning_rates,
          "variance": r.variance, "train_loss": r.train_loss, "body_loss": r.body_loss,
          "limit": r.limit, "exact_limit": r.exact_limit, "nu_0": r.nu_0,
          "body_limit": r.body_limit, "multiples": np.asarray(multiples)}
