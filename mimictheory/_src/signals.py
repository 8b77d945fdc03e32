"""Signal-propagation metrics (NFNets' SPPs) of a layer's units: what a finite network, a
MimicNorm model or a CIFAR model at initialisation is measured by, against the theory's maps."""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

__all__ = ["Signal", "unit_statistics", "pair_statistics", "correlation_from_gram",
           "signal_metrics"]


@partial(jax.tree_util.register_dataclass, data_fields=["mean", "variance", "q", "correlation"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Signal:
  """Signal-propagation metrics of the pre-activations of every hidden layer (NFNets' SPPs).

  mean: (L,) average over units of the squared batch mean of a unit; variance: (L,) average
  over units of its batch variance; q: (L, N) the second moment (1/n)‖hˡ(x)‖² of each input;
  correlation: (L, N, N) the correlation of every input pair, hˡ(x)·hˡ(x') / (‖hˡ(x)‖ ‖hˡ(x')‖).

  >>> import jax, numpy as np, mimictheory as mt
  >>> net = mt.finite_network("relu", depth=3, width=32)
  >>> sig = net.signal(net.init(jax.random.key(0), 4), np.eye(4))
  >>> sig.correlation.shape   # (layers, inputs, inputs)
  (3, 4, 4)
  """

  mean: jax.Array
  variance: jax.Array
  q: jax.Array
  correlation: jax.Array



def unit_statistics(h):
  """For h (..., batch, units): the average over units of a unit's squared batch mean, and of
  its batch variance."""
  return jnp.mean(jnp.mean(h, axis=-2) ** 2, axis=-1), jnp.mean(jnp.var(h, axis=-2), axis=-1)


def pair_statistics(h):
  """For h (..., N, features): each input's second moment q = |h(x)|²/n and the correlation
  h(x)·h(x') / |h(x)||h(x')| of every input pair; 0 where h(x) = 0 (e.g. a zero input with
  σb² = 0), the convention of the theory's kernels (`activations._correlation`), never NaN."""
  q = jnp.mean(h * h, axis=-1)
  gram = jnp.einsum("...xi,...yi->...xy", h, h) / h.shape[-1]
  return q, correlation_from_gram(gram, q)


def correlation_from_gram(gram, q):
  """gram / √(q q'), and 0 in every row and column where q = 0 (correlation undefined)."""
  root = jnp.sqrt(q)
  inverse = jnp.where(root > 0, 1.0 / jnp.where(root > 0, root, 1.0), 0.0)
  return gram * inverse[..., :, None] * inverse[..., None, :]


def signal_metrics(pre) -> "Signal":
  """`Signal` of pre-activations (L, N, n): one row of metrics per layer."""
  mean, variance = unit_statistics(pre)
  q, correlation = pair_statistics(pre)
  return Signal(mean, variance, q, correlation)
