"""NNGP and NTK of residual networks with a scalar branch weight α_l (the theory behind Figure 5).

The network (neural-tangents' NTK parameterisation, as `kernels`):

    z¹ = Dense(x),    z^{l+1} = z^l + α_l · Dense(φ(N(z^l))),  l = 1..depth,    f = Dense(z^{L+1})

with N the identity (`norm="none"`, `"weight_mean"`: every Dense mean-free), exact batch norm
(`"batch_norm"`, the rows of x are the batch) or Theorem 2's (`"batch_norm_paper"`). At
infinite width the branch's weights are independent of the stream, so the cross terms vanish
(the mean-field residual recursion, cf. Yang & Schoenholz 2017, with the NTK term added):

    K^{l+1} = K^l + α_l² K_b(K^l),        Θ^{l+1} = Θ^l + α_l² Θ_b(K^l, Θ^l),

where K_b, Θ_b are one dense layer's maps (computed by the description's `stax` layers,
`residual_description`), i.e. Θ_b = K_b + σw² E[φ'(u)φ'(v)] Θ^l without BN. α_l is a fixed
scalar (its own gradient is not part of the NTK). `alpha="official"` is MimicNorm's official
initial value 1.2^k/l (k = 1 dense per branch), which suppresses the branch's share of the
variance like 1/l²; `"sqrt"` is the paper's text, 1/√l, which gives BN's 1/l.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import numpy as np

from mimictheory._src import batch_norm as bn
from mimictheory._src import checks, stax
from mimictheory._src.kernels import check_batch, kernel_layer, validate_inputs
from mimictheory._src.maps import Layer
from mimictheory._src.precision import concrete_only, float64

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


def residual_description(layer: Layer, alphas, gain: float = 1.0, fan_in=None) -> stax.Network:
  """The residual network of the module docstring as a description: a `Dense`, then per block
  `FanOut(2)`, `parallel(Identity(), serial([BatchNorm], act, Dense, Scale(α_l)))`,
  `FanInSum()`, then a plain `Dense` readout (`fan_in`: the width, None for infinite).

  >>> import numpy as np, mimictheory as mt
  >>> from mimictheory._src.residual import residual_description
  >>> net = residual_description(mt.make_layer("relu", 2.0, 0.0), [1.0, 0.5])
  >>> k = net.kernel_fn(np.ones((1, 1)), get="nngp")  # K = 2, then K (1 + α²) (ReLU at σw² = 2)
  >>> round(float(k[0, 0]), 12)                          # 2 · 2 · (1 + 1/4), then the readout's 2
  10.0
  """
  w_std, b_std = math.sqrt(float(layer.sw2)), math.sqrt(float(layer.sb2))
  mean_free, norm = stax.norm_layers(layer.norm)

  def block(alpha):
    branch = stax.serial(*norm, stax.Elementwise(layer.activation),
                         stax.Dense(fan_in, w_std, b_std, weight_mean=mean_free),
                         stax.Scale(float(alpha)))
    return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), branch), stax.FanInSum())

  return stax.serial(stax.Dense(fan_in, w_std * math.sqrt(gain), b_std, weight_mean=mean_free),
                     *[block(alpha) for alpha in alphas], stax.Dense(1, w_std, b_std))


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
  if layer.rule.exact_batch:
    if bn.homogeneous_coefficients(layer.activation) is None:
      raise ValueError("residual_kernels with norm='batch_norm' needs a positively homogeneous "
                       f"activation ('relu', 'leaky_relu', 'identity'), got "
                       f"{layer.activation.name!r}")
    check_batch(x, ntk=True)
  net = residual_description(layer, alphas, gain, fan_in)
  # the stream entering block 1 (the first Dense), then per block its scaled branch and the
  # stream after it, then the readout
  found = net.layer_kernels(x, None, (stax.Dense, stax.Scale, stax._FanInSum))
  mean_variance = lambda k: float(np.mean(np.diagonal(np.asarray(k.nngp))))  # noqa: E731
  blocks = found[1:-1]
  stream = np.array([mean_variance(found[0])] + [mean_variance(k) for k in blocks[2:-1:3]])
  branch = np.array([mean_variance(k) for k in blocks[1::3]])
  out = found[-1]
  if not np.all(np.isfinite(np.asarray(out.ntk))):
    raise FloatingPointError(f"depth={depth}: the NTK of this residual network overflows "
                             "float64 (it grows exponentially with depth); use a smaller depth "
                             "or smaller branch scalars alpha")
  return ResidualKernels(np.asarray(out.nngp), np.asarray(out.ntk), stream, branch)
