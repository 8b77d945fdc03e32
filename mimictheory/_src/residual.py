"""NNGP and NTK of residual networks with a scalar branch weight α_l (the theory behind Figure 5).

The network (neural-tangents' NTK parameterisation, as `kernels`):

    z¹ = Dense(x),    z^{l+1} = z^l + α_l · Dense(φ(N(z^l))),  l = 1..depth,    f = Dense(z^{L+1})

with N the identity (`norm="none"`, `"weight_mean"`: every Dense mean-free), exact batch norm
(`"batch_norm"`, the rows of x are the batch) or Theorem 2's (`"batch_norm_paper"`). At
infinite width the branch's weights are independent of the stream, so the cross terms vanish
(the mean-field residual recursion, cf. Yang & Schoenholz 2017, with the NTK term added):

    K^{l+1} = K^l + α_l² K_b(K^l),        Θ^{l+1} = Θ^l + α_l² Θ_b(K^l, Θ^l),

where K_b, Θ_b are one dense layer's maps (`Layer.covariance_and_slope`, or the BN maps), i.e.
Θ_b = K_b + σw² E[φ'(u)φ'(v)] Θ^l without BN. α_l is a fixed scalar (its own gradient is not
part of the NTK). `alpha="official"` is MimicNorm's official initial value 1.2^k/l (k = 1 dense
per branch), which suppresses the branch's share of the variance like 1/l²; `"sqrt"` is the
paper's text, 1/√l, which gives BN's 1/l.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src import batch_norm as bn
from mimictheory._src import checks
from mimictheory._src.kernels import (
    adequate_batch_nodes, check_batch, dense_step, identical_rows, input_kernel, kernel_layer,
    normalise_full_batch, validate_inputs)
from mimictheory._src.maps import Layer
from mimictheory._src.precision import concrete_only, f64, float64

__all__ = ["ResidualKernels", "residual_kernels", "residual_scalars", "official_residual_scalar",
           "ALPHAS"]

ALPHAS = ("official", "sqrt", "one")


def official_residual_scalar(blocks, convs_per_branch: int = 1) -> np.ndarray:
  """The official code's initial residual scalar 1.2^k / l (k layers per branch, l from 1): the
  one formula behind `residual_scalars("official")`, the Monte Carlo experiments and the Flax
  `ResidualScalar`.

  >>> import mimictheory as mt
  >>> mt.official_residual_scalar([1, 2, 4]).tolist()   # 1.2 / l
  [1.2, 0.6, 0.3]
  """
  return 1.2**convs_per_branch / np.asarray(blocks, dtype=np.float64)


def residual_scalars(alpha, depth: int, convs_per_branch: int = 1) -> np.ndarray:
  """The branch scalars α_1..α_depth from a name, a constant, a sequence or a callable of l.

  "official": 1.2^k / l (MimicNorm's official code, k dense or conv layers per branch);
  "sqrt": 1/√l (the paper's text); "one": 1 (a plain residual network).

  >>> import mimictheory as mt
  >>> mt.residual_scalars("official", 3).round(3).tolist()
  [1.2, 0.6, 0.4]
  """
  blocks = np.arange(1, depth + 1, dtype=np.float64)
  if isinstance(alpha, str):
    checks.check_choice("alpha", alpha, ALPHAS)
    return {"official": official_residual_scalar(blocks, convs_per_branch),
            "sqrt": 1.0 / np.sqrt(blocks), "one": np.ones(depth)}[alpha]
  if callable(alpha):
    values = checks.check_nonnegative("alpha", [alpha(int(l)) for l in blocks])
  else:
    values = checks.check_nonnegative("alpha", alpha)
    if values.ndim == 0:
      values = np.full(depth, float(values))
  if values.shape != (depth,):
    raise ValueError(f"alpha must give one scalar per block ({depth}), got shape {values.shape}")
  return np.array(values, dtype=np.float64)


@partial(jax.tree_util.register_dataclass, data_fields=["nngp", "ntk", "stream", "branch"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class ResidualKernels:
  """Readout NNGP and NTK (N, N), and per block l = 1..depth the mean over inputs of the
  stream variance entering block l and of the (scaled) branch variance, (depth,).

  >>> import numpy as np, mimictheory as mt
  >>> rk = mt.residual_kernels(np.eye(4), depth=3)
  >>> rk.stream.shape, rk.branch.shape
  ((3,), (3,))
  """

  nngp: np.ndarray
  ntk: np.ndarray
  stream: np.ndarray
  branch: np.ndarray

  @property
  def ratio(self) -> np.ndarray:
    """Var(branch) / Var(stream) per block: the branch's share (1/l with BN, α = 1)."""
    return self.branch / self.stream


def _branch(layer: Layer, k, ntk, same, nodes):
  """One branch N -> φ -> Dense: (K_b, Θ_b) from the stream's (K, Θ)."""
  if layer.norm == "batch_norm":
    a, b = bn.homogeneous_coefficients(layer.activation)
    k_b, ntk_b, _, _ = bn.exact_step(a, b, k, ntk, layer.sw2, layer.sb2, same, nodes)
    return k_b, ntk_b
  if layer.norm == "batch_norm_paper":
    k, ntk = normalise_full_batch(k, ntk)
    layer = dataclasses.replace(layer, norm="none")
  q = jnp.diagonal(k)
  k = jnp.where(same, jnp.sqrt(q[:, None] * q[None, :]), k)  # ρ = 1 exactly on the diagonal
  return dense_step(layer, q, q, k, ntk)


@partial(jax.jit, static_argnames=("nodes",))
def _residual(layer: Layer, x, gain, alphas, same, nodes):
  k, _, _ = input_kernel(layer if layer.norm == "weight_mean" else
                          dataclasses.replace(layer, norm="none"), x, x, gain)

  def block(carry, alpha):
    k, ntk = carry
    k_b, ntk_b = _branch(layer, k, ntk, same, nodes)
    stream = jnp.mean(jnp.diagonal(k))
    branch = alpha**2 * jnp.mean(jnp.diagonal(k_b))
    return (k + alpha**2 * k_b, ntk + alpha**2 * ntk_b), (stream, branch)

  (k, ntk), (stream, branch) = jax.lax.scan(block, (k, k), alphas)
  out = layer.sw2 * k + layer.sb2  # the linear readout (not mean-free)
  return out, out + layer.sw2 * ntk, stream, branch


@concrete_only
@float64
def residual_kernels(x, depth: int = 10, activation="relu", sw2=2.0, sb2=0.0, norm="none",
                     alpha="official", fan_in=None, input_gain: float = 1.0) -> ResidualKernels:
  """NNGP and NTK of a residual network with branch scalars α_l (see the module docstring).

  `alpha`: "official" (1.2/l), "sqrt" (1/√l), "one", a constant, a sequence of `depth` values
  or a callable l -> α_l (l = 1..depth). With `norm="batch_norm"` the rows of x are the batch
  and BN is exact (relu, leaky_relu or identity, batch >= 4).

  >>> import numpy as np, mimictheory as mt
  >>> x = np.random.default_rng(0).normal(size=(6, 5))
  >>> r = mt.residual_kernels(x, depth=20, sw2=2.0, norm="batch_norm", alpha="one")
  >>> bool(np.allclose(r.branch, 1.0))   # BN: mean E[relu(ĥ)²] = |ĥ|²/(2B) = 1/2, times σw²
  True
  >>> bool(abs(r.stream[-1] - r.stream[0] - np.sum(r.branch[:-1])) < 1e-9)   # K accumulates
  True
  """
  x, _, depth, gain = validate_inputs(x, None, depth, input_gain)
  layer = kernel_layer(activation, sw2, sb2, norm, fan_in)
  alphas = residual_scalars(alpha, depth)
  nodes = 0
  if norm == "batch_norm":
    if bn.homogeneous_coefficients(layer.activation) is None:
      raise ValueError("residual_kernels with norm='batch_norm' needs a positively homogeneous "
                       f"activation ('relu', 'leaky_relu', 'identity'), got "
                       f"{layer.activation.name!r}")
    x, same = check_batch(x, ntk=True)
    nodes = adequate_batch_nodes(layer, x, gain, same, True)
  else:
    same = identical_rows(x)
  nngp, ntk, stream, branch = _residual(layer, f64(x), gain, f64(alphas), same, nodes)
  if not np.all(np.isfinite(np.asarray(ntk))):
    raise FloatingPointError(f"depth={depth}: the NTK of this residual network overflows "
                             "float64 (it grows exponentially with depth); use a smaller depth "
                             "or smaller branch scalars alpha")
  return ResidualKernels(nngp, ntk, stream, branch)
