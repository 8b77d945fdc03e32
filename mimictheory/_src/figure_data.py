"""The data behind the figures, computed from the public API: per-unit pre-activations
(Figures 2-3), pair correlations (supplementary 1-2), the residual theory (Figure 5), the NTK
condition points and the last BN's variance during training (supplementary 3). Drawing them
is module `figures`'s job."""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SEED", "WIDTH", "figure_inputs", "sample_rows", "unit_spread_ratio", "unit_boxes",
           "pair_correlations", "residual_theory", "ntk_condition_points", "last_bn_variance"]

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
