"""MimicNorm in Flax NNX: weight mean, the residual scalar and the last BN layer (paper section 4).

Weight mean (eq 10) keeps every covered kernel mean-free per output channel: the mean over the
fan-in (and the kernel window, for convolutions) is subtracted at initialisation and again
after every optimiser step (`project_weight_mean`). Kernels whose per-channel fan-in is below
`min_fan_in` (default 50: depthwise convolutions) are plain `nnx.Param`s and never touched. The
initial scale of a covered kernel is Theorem 3's stable σw² for its fan-in, taken from the
analytic module (`mimictheory.stable_sw2`), not a copied constant.

Training runs in float32; nothing here enables float64 (the analytic σw² is a Python float).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mimictheory._src import checks
from mimictheory._src.norms import MODEL_NORMS, RESIDUAL_BASELINES, check_norm
from mimictheory._src.residual import official_residual_scalar
from mimictheory._src.norms import centre_kernel
from mimictheory._src.signals import Signal, signal_metrics
from mimictheory._src.maps import stable_sw2

__all__ = [
  "CentredKernel",
  "MIN_FAN_IN",
  "NORM_OPTIONS",
  "RESIDUAL_BASELINES",
  "centre_kernel",
  "per_channel_fan_in",
  "project_weight_mean",
  "init_sw2",
  "pytorch_init",
  "Dense",
  "LastBatchNorm",
  "ResidualScalar",
  "MLP",
]

MIN_FAN_IN = 50
NORM_OPTIONS = MODEL_NORMS  # the models' norms (module `norms`)


class CentredKernel(nnx.Param):
  """A kernel kept mean-free per output channel (the last axis) by `project_weight_mean`.

  >>> import jax.numpy as jnp
  >>> from mimictheory.nn import CentredKernel
  >>> CentredKernel(jnp.ones((3, 2))).value.shape
  (3, 2)
  """


def per_channel_fan_in(shape) -> int:
  """Inputs feeding one output channel: all axes but the last (dense (in, out): in; conv
  (kh, kw, in, out): kh·kw·in).

  >>> from mimictheory.nn import per_channel_fan_in
  >>> per_channel_fan_in((3, 3, 16, 32)), per_channel_fan_in((64, 10))
  (144, 64)
  """
  return int(math.prod(shape[:-1]))


def project_weight_mean(model: nnx.Module) -> None:
  """Re-centre every `CentredKernel` of `model` in place (after each optimiser step).

  >>> import numpy as np
  >>> from flax import nnx
  >>> from mimictheory.nn import MLP, project_weight_mean
  >>> model = MLP(8, 4, depth=2, width=64, norm="mimic", rngs=nnx.Rngs(0))
  >>> kernel = model.hidden[1].kernel          # a CentredKernel (fan-in 64 >= MIN_FAN_IN)
  >>> kernel[...] = kernel[...] + 1.0          # e.g. an optimiser step moved its mean
  >>> project_weight_mean(model)               # back onto mean-zero kernels
  >>> float(np.abs(np.asarray(kernel[...]).mean(axis=0)).max()) < 1e-6
  True
  """
  state = nnx.state(model, CentredKernel)
  nnx.update(model, jax.tree_util.tree_map(centre_kernel, state))


def init_sw2(fan_in: int, weight_mean: bool, activation: str = "relu") -> float:
  """Initial σw²: Theorem 3's stable value 2n/((n−1)(1−1/π)) with weight mean, He's 2 without
  (for ReLU; `stable_sw2` for other activations).

  >>> from mimictheory.nn import init_sw2
  >>> init_sw2(300, weight_mean=False), round(init_sw2(300, weight_mean=True), 4)
  (2.0, 2.9437)
  """
  norm = "weight_mean" if weight_mean else "none"
  return float(stable_sw2(activation, norm=norm, fan_in=fan_in if fan_in >= 2 else None))


def pytorch_init(rngs: nnx.Rngs, shape, fan_in: int, use_bias: bool = True):
  """(kernel, bias or None) as PyTorch initialises Conv2d and Linear by default
  (`kaiming_uniform_` with a = √5, and the bias alike): both U(±1/√fan-in), a weight variance
  of 1/(3·fan-in), i.e. σw² = 1/3. The official BN ResNet keeps these defaults.

  >>> from flax import nnx
  >>> from mimictheory.nn import pytorch_init
  >>> kernel, bias = pytorch_init(nnx.Rngs(0), (100, 10), fan_in=100)
  >>> float(abs(kernel).max()) <= 0.1, bias.shape
  (True, (10,))
  """
  bound = 1.0 / math.sqrt(fan_in)
  kernel = jax.random.uniform(rngs.params(), shape, minval=-bound, maxval=bound)
  bias = (jax.random.uniform(rngs.params(), shape[-1:], minval=-bound, maxval=bound)
          if use_bias else None)
  return kernel, bias


class Dense(nnx.Module):
  """x W + b with W ~ N(0, σw²/fan-in) and b = 0 (or PyTorch's default with
  `pytorch_default`, see `pytorch_init`); with `weight_mean` the kernel is a `CentredKernel`
  (when its fan-in is at least `min_fan_in`) initialised at Theorem 3's σw².

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from mimictheory.nn import Dense
  >>> layer = Dense(8, 4, weight_mean=True, rngs=nnx.Rngs(0))
  >>> layer(jnp.ones((2, 8))).shape
  (2, 4)
  """

  def __init__(self, fan_in: int, fan_out: int, *, weight_mean: bool, rngs: nnx.Rngs,
               min_fan_in: int = MIN_FAN_IN, sw2: float | None = None, use_bias: bool = True,
               pytorch_default: bool = False):
    covered = weight_mean and fan_in >= min_fan_in
    if pytorch_default:
      kernel, bias = pytorch_init(rngs, (fan_in, fan_out), fan_in, use_bias)
    else:
      sw2 = init_sw2(fan_in, covered) if sw2 is None else sw2
      kernel = jax.random.normal(rngs.params(), (fan_in, fan_out)) * math.sqrt(sw2 / fan_in)
      bias = jnp.zeros((fan_out,)) if use_bias else None
    self.kernel = CentredKernel(centre_kernel(kernel)) if covered else nnx.Param(kernel)
    self.bias = None if bias is None else nnx.Param(bias)

  def __call__(self, x):
    y = x @ self.kernel[...]
    return y if self.bias is None else y + self.bias[...]


class LastBatchNorm(nnx.BatchNorm):
  """BatchNorm on the logits (batch × classes) without affine parameters (the last BN layer).

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from mimictheory.nn import LastBatchNorm
  >>> bn = LastBatchNorm(10, rngs=nnx.Rngs(0))
  >>> bn(jnp.ones((4, 10))).shape
  (4, 10)
  """

  def __init__(self, classes: int, *, rngs: nnx.Rngs, momentum: float = 0.9):
    super().__init__(classes, use_bias=False, use_scale=False, momentum=momentum, rngs=rngs)


class ResidualScalar(nnx.Module):
  """One learnable scalar on a residual branch's output; the official initial value is
  1.2^k / l (k layers in the branch, l the block index counted from 1).

  >>> from mimictheory.nn import ResidualScalar
  >>> scalar = ResidualScalar(ResidualScalar.official(block=4, layers_in_branch=1))
  >>> round(float(scalar.scale[...]), 6)   # 1.2 / l at block 4
  0.3
  """

  def __init__(self, value: float):
    self.scale = nnx.Param(jnp.asarray(value, dtype=jnp.float32))

  def __call__(self, x):
    return self.scale[...] * x

  @staticmethod
  def official(block: int, layers_in_branch: int) -> float:
    """The official initial value 1.2^k / l (one formula: `official_residual_scalar`)."""
    checks.check_int("block", block, minimum=1)
    return float(official_residual_scalar(block, layers_in_branch))


class MLP(nnx.Module):
  """A ReLU MLP with `norm` ∈ bn | none | weight_mean | last_bn | mimic (= weight_mean + last_bn).

  `bn` puts a BatchNorm (with affine parameters) after every hidden dense layer; `last_bn` and
  `mimic` put a `LastBatchNorm` on the logits. `signals(x)` returns the per-layer
  signal-propagation metrics at the current parameters (NFNets-style).

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from mimictheory.nn import MLP
  >>> model = MLP(64, 10, depth=3, width=128, norm="mimic", rngs=nnx.Rngs(0))
  >>> model(jnp.ones((4, 64))).shape
  (4, 10)
  """

  def __init__(self, d: int, classes: int, *, depth: int = 8, width: int = 256,
               norm: str = "mimic", rngs: nnx.Rngs, min_fan_in: int = MIN_FAN_IN):
    norm = check_norm(norm, NORM_OPTIONS)
    depth = checks.check_int("depth", depth)
    width = checks.check_int("width", width, minimum=2)
    self.norm = norm
    weight_mean = norm in ("weight_mean", "mimic")
    dims = [d] + [width] * depth
    self.hidden = nnx.List([Dense(a, b, weight_mean=weight_mean, rngs=rngs, min_fan_in=min_fan_in)
                            for a, b in zip(dims[:-1], dims[1:])])
    self.norms = nnx.List([nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
                           for _ in range(depth)]) if norm == "batch_norm" else None
    self.head = Dense(width, classes, weight_mean=weight_mean, rngs=rngs, min_fan_in=min_fan_in,
                      sw2=1.0)
    self.last_bn = LastBatchNorm(classes, rngs=rngs) if norm in ("last_bn", "mimic") else None

  def _hidden(self, x):
    pre = []
    for i, layer in enumerate(self.hidden):
      h = layer(x)
      if self.norms is not None:
        h = self.norms[i](h)
      pre.append(h)
      x = jax.nn.relu(h)
    return x, pre

  def __call__(self, x):
    x, _ = self._hidden(x)
    logits = self.head(x)
    return logits if self.last_bn is None else self.last_bn(logits)

  def signals(self, x) -> Signal:
    """Per hidden layer: the average unit batch mean² and variance, each input's mean squared
    pre-activation q and the correlation of every input pair (`mimictheory.Signal`)."""
    return signal_metrics(jnp.stack(self._hidden(x)[1]))  # (L, N, n)
