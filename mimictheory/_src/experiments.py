"""Paper-scale experiments on finite networks: how far real (finite-batch) BN networks are
from the full-batch theory (`batch_norm_gap`), and the residual stream and branch variances
behind Figure 5 (`residual_variances`)."""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src import checks
from mimictheory._src.finite import (
    Estimate, draw_keys, draws_per_call, finite_network, monte_carlo_chi1, monte_carlo_kernels,
    normalise_batch)
from mimictheory._src.io import progress_bar
from mimictheory._src.kernels import kernels
from mimictheory._src.maps import chi1
from mimictheory._src.norms import centre_kernel
from mimictheory._src.precision import f64, float64
from mimictheory._src.residual import residual_scalars

__all__ = ["BatchNormGap", "batch_norm_gap", "ResidualVariances", "residual_variances",
           "RESIDUAL_NORMS"]


# ----------------------------------------------------------------------------------------------
# How far real (finite-batch) BN networks are from the full-batch theory.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BatchNormGap:
  """Finite-width BN networks against the exact finite-batch theory, per batch size.

  chi1: Monte Carlo χ1 of one BN layer (gradient through the batch statistics) against
  `chi1_exact` (`chi1(norm="batch_norm", batch=B)`) and Theorem 2's `chi1_paper`. nngp_z,
  ntk_z: the root-mean-square z-score over all entries of the Monte Carlo kernels of a
  depth-`depth` BN network on `batch` random inputs against the exact kernels (≈ 1.07 for an
  unbiased estimate from 16 draws: t-distributed scores); paper_ntk_z: the same against
  Theorem 2; nngp_gap, ntk_gap: ‖MC mean − exact‖_F /
  ‖exact‖_F; paper_nngp_gap, paper_ntk_gap: the same distance to Theorem 2's kernels; noise:
  ‖MC standard error of the NTK‖_F / ‖exact‖_F. At batch 4 and 5 the NTK and χ1 of a single
  unit have infinite variance (E[1/‖Gh‖⁴] = ∞): their Monte Carlo means converge slowly and
  their standard errors are not reliable there.

  >>> import mimictheory as mt
  >>> gap = mt.batch_norm_gap("relu", batches=(8,), width=32, depth=2, draws=4)  # doctest: +SKIP
  >>> gap.chi1_exact.shape                                                         # doctest: +SKIP
  (1,)
  """

  activation: str
  batch: np.ndarray
  chi1: Estimate
  chi1_exact: np.ndarray
  chi1_paper: float
  nngp_z: np.ndarray
  ntk_z: np.ndarray
  paper_ntk_z: np.ndarray
  nngp_gap: np.ndarray
  ntk_gap: np.ndarray
  paper_nngp_gap: np.ndarray
  paper_ntk_gap: np.ndarray
  noise: np.ndarray

  def markdown(self) -> str:
    lines = ["| batch | χ1 network | χ1 exact | RMS z NNGP | RMS z NTK | NTK gap to exact | "
             "MC noise | Theorem 2: NTK gap | Theorem 2: RMS z NTK |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, b in enumerate(self.batch):
      lines.append(
          f"| {b} | {self.chi1.mean[i]:.3f} ± {self.chi1.se[i]:.3f} | {self.chi1_exact[i]:.3f} | "
          f"{self.nngp_z[i]:.2f} | {self.ntk_z[i]:.2f} | {self.ntk_gap[i]:.3f} | "
          f"{self.noise[i]:.3f} | {self.paper_ntk_gap[i]:.3f} | {self.paper_ntk_z[i]:.1f} |")
    return "\n".join(lines)


def batch_norm_gap(activation="relu", batches=(4, 8, 32, 128), width: int = 512,
                   depth: int = 2, draws: int = 16, dim: int = 32, seed: int = 0,
                   progress: bool = False) -> BatchNormGap:
  """Finite-width BN networks against the exact finite-batch theory and Theorem 2.

  The exact theory (`kernels(norm="batch_norm")`, `chi1(norm="batch_norm", batch=B)`) holds
  at every batch size; Theorem 2's full-batch approximation (`norm="batch_norm_paper"`) is its
  limit B -> ∞. `activation` must be relu, leaky_relu or identity (exact BN maps).

  >>> import mimictheory as mt
  >>> gap = mt.batch_norm_gap("relu", batches=(8,), width=32, depth=1, draws=4, dim=8)
  >>> round(float(gap.chi1_exact[0]), 4), round(gap.chi1_paper, 4)   # exact at B = 8, Thm 2
  (1.7882, 1.4669)
  """
  batches = tuple(checks.check_int("batch", b, minimum=4) for b in batches)
  net = finite_network(activation, depth=depth, width=width, norm="batch_norm")
  rng = np.random.default_rng(checks.check_int("seed", seed, minimum=0))
  rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
  rows = {k: [] for k in ("chi", "nngp_z", "ntk_z", "p_z", "nngp", "ntk", "p_nngp", "p_ntk",
                          "noise")}
  rms = lambda z: float(np.sqrt(np.mean(np.square(z))))  # noqa: E731
  for batch in progress_bar(batches, progress, "batch sizes"):
    rows["chi"].append(monte_carlo_chi1(net, draws=max(draws, 16), rows=batch, seed=seed))
    x = rng.normal(size=(batch, dim))
    mc = monte_carlo_kernels(net, x, draws=draws, seed=seed,
                             networks_per_call=max(1, 64 // batch))
    exact = net.theory_kernels(x)
    paper = kernels(x, depth=depth, activation=net.activation, sw2=net.sw2, sb2=net.sb2,
                    norm="batch_norm_paper")
    rows["nngp_z"].append(rms(mc.nngp.z_scores(exact.nngp)))
    rows["ntk_z"].append(rms(mc.ntk.z_scores(exact.ntk)))
    rows["p_z"].append(rms(mc.ntk.z_scores(paper.ntk)))
    rows["nngp"].append(rel(mc.nngp.mean, exact.nngp))
    rows["ntk"].append(rel(mc.ntk.mean, exact.ntk))
    rows["p_nngp"].append(rel(mc.nngp.mean, paper.nngp))
    rows["p_ntk"].append(rel(mc.ntk.mean, paper.ntk))
    rows["noise"].append(float(np.linalg.norm(mc.ntk.se) / np.linalg.norm(exact.ntk)))
  chi = rows["chi"]
  estimates = Estimate(np.array([float(c.mean) for c in chi]),
                       np.array([float(c.se) for c in chi]), max(draws, 16))
  exact_chi = np.asarray(chi1(net.activation, norm="batch_norm", batch=np.array(batches)))
  return BatchNormGap(net.activation.name, np.array(batches), estimates, exact_chi,
                      float(chi1(net.activation, norm="batch_norm_paper")),
                      *(np.array(rows[k]) for k in ("nngp_z", "ntk_z", "p_z", "nngp", "ntk",
                                                    "p_nngp", "p_ntk", "noise")))


# ----------------------------------------------------------------------------------------------
# Residual networks at initialisation (Figure 5).
# ----------------------------------------------------------------------------------------------
RESIDUAL_NORMS = ("batch_norm", "mimic", "none")


@dataclasses.dataclass(frozen=True)
class ResidualVariances:
  """Per block l = 1..L: the variance of the stream entering it and of its (scaled) branch.

  >>> import mimictheory as mt
  >>> rv = mt.residual_variances("batch_norm", depth=4, width=32, batch=16, draws=2)
  >>> rv.blocks.tolist(), rv.stream.mean.shape
  ([1, 2, 3, 4], (4,))
  """

  norm: str
  blocks: np.ndarray
  stream: Estimate
  branch: Estimate
  alpha: np.ndarray  # the branch scalars α_l (1 without one)

  @property
  def ratio(self) -> np.ndarray:
    """Var(branch) / Var(stream): the branch's relative contribution (≈ 1/l with BN)."""
    return self.branch.mean / self.stream.mean


@partial(jax.jit,
         static_argnames=("norm", "depth", "width", "batch", "networks_per_call"))
def _residual_draws(keys, alpha, norm, depth, width, batch, networks_per_call):
  def draw(key):
    k_x, k_w = jax.random.split(key)
    x = jax.random.normal(k_x, (batch, width))

    def block(x, inputs):
      key, alpha = inputs
      w = jax.random.normal(key, (width, width))
      if norm == "mimic":
        w = centre_kernel(w)
      h = normalise_batch(x) if norm == "batch_norm" else x  # pre-activation block: BN first
      branch = alpha * (jax.nn.relu(h) @ w * jnp.sqrt(2.0 / width))  # He initialisation
      return x + branch, (jnp.var(x), jnp.var(branch))

    _, (stream, branch) = jax.lax.scan(block, x, (jax.random.split(k_w, depth), alpha))
    return stream, branch

  return jax.lax.map(draw, keys, batch_size=networks_per_call)


@float64
def residual_variances(norm: str = "batch_norm", depth: int = 50, width: int = 256,
                       batch: int = 256, draws: int = 8, seed: int = 0,
                       alpha=None) -> ResidualVariances:
  """Variance of the residual stream and of each branch in a residual MLP at initialisation.

  Block l: x ← x + α_l · branch(x), branch = W relu(BN(x)) for `norm="batch_norm"` (α = 1, a
  pre-activation block), α_l W̄ relu(x) for `"mimic"` (weight mean, residual scalar; default
  α_l = 1.2/l, the official code's initial value) and W relu(x) for `"none"`, with
  He-initialised W and no biases: the architecture of `residual_kernels` (which gives the
  infinite-width values). The paper's Figure 5 argument: with BN the stream entering block l
  has variance ≈ l and each branch ≈ 1, so BN suppresses the branch by 1/l; MimicNorm's scalar
  does it explicitly. `alpha`: the branch scalars as in `residual_kernels` ("official", "sqrt",
  "one", a constant, a sequence or a callable of l); None: the defaults above.

  >>> import mimictheory as mt
  >>> rv = mt.residual_variances("batch_norm", depth=20, width=64, batch=64, draws=2)
  >>> bool(abs(rv.stream.mean[-1] / 20 - 1) < 0.1)           # stream variance ≈ l
  True
  """
  checks.check_choice("norm", norm, RESIDUAL_NORMS)
  depth = checks.check_int("depth", depth)
  width = checks.check_int("width", width, minimum=2)
  batch = checks.check_int("batch", batch, minimum=2)
  blocks = np.arange(1, depth + 1)
  if alpha is None:
    alpha = "official" if norm == "mimic" else "one"
  alpha = residual_scalars(alpha, depth)
  keys = draw_keys(seed, draws)
  stream, branch = _residual_draws(keys, f64(alpha), norm, depth, width, batch,
                                   draws_per_call(8, draws))
  return ResidualVariances(norm, blocks, Estimate.from_samples(stream),
                           Estimate.from_samples(branch), alpha)
