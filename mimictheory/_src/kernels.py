"""NNGP and NTK Gram matrices of deep fully connected networks on a data set.

The architecture is neural-tangents' own, so that the two compare entry by entry:

    stax.serial(*[stax.Dense(n, W_std=√σw², b_std=√σb²), act] * depth,
                stax.Dense(1, W_std=√σw², b_std=√σb²))      (NTK parameterisation)

with K¹ = σw² · input_gain · x·x'/d + σb² (the paper's eq 1 is input_gain = 1/2) and, per layer,

    K^{l+1} = σw² E[φ(u)φ(v)] + σb²,       Θ^{l+1} = K^{l+1} + σw² E[φ'(u)φ'(v)] Θ^l,

the layer form of the paper's eq 7. `norm="weight_mean"` centres every dense layer's kernel
(Lemma 1; the input layer exactly: W̄x = W(x - x̄)).

`norm="batch_norm"` puts a BN (no affine parameters) after every hidden dense layer, with the
rows of x as the batch, and is exact at that batch size: every unit is normalised by its own
batch mean and variance and the NTK differentiates through both (module `batch_norm`; Yang et
al. 2019). `norm="batch_norm_paper"` is the paper's full-batch approximation (Theorem 2): the
kernel is centred over the data set, K -> H K H / ν with H = I - 11ᵀ/N and ν the mean diagonal
of H K H, and Θ likewise with the batch statistics held fixed; it is the limit of the exact
kernels as the batch grows. BN couples the inputs of a batch, so the whole Gram matrix is
computed at once and cross-kernels between two batches are refused; without BN every entry
follows its own recursion and large N is computed in row blocks, optionally sharded over a
device mesh.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mimictheory._src import batch_norm as bn
from mimictheory._src import checks
from mimictheory._src.activations import Numerical
from mimictheory._src.io import progress_bar
from mimictheory._src.maps import BATCH_NORMS, Layer, build_layer
from mimictheory._src.precision import concrete_only, f64, float64

__all__ = ["Kernels", "kernels", "layer_kernels", "NTKSpectrum", "ntk_spectrum", "row_mesh",
           "BatchNormKernels", "batch_norm_kernels"]


@partial(jax.tree_util.register_dataclass, data_fields=["nngp", "ntk"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Kernels:
  """NNGP kernel K and NTK Θ of the network's (scalar) output, shape (N1, N2).

  >>> import numpy as np, mimictheory as mt
  >>> k = mt.kernels(np.eye(3), depth=2)
  >>> k.nngp.shape, bool(np.allclose(np.diag(k.nngp), 2 * np.diag(k.nngp)[0] / 2))
  ((3, 3), True)
  """

  nngp: jax.Array
  ntk: jax.Array


class KernelOverflowError(OverflowError, ValueError):
  """A kernel outgrew float64 (about 1.8e308): raised instead of returning inf or NaN.

  >>> import numpy as np, mimictheory as mt
  >>> try:
  ...   mt.kernels(np.eye(3), sw2=1e6, depth=100)
  ... except mt.KernelOverflowError as err:
  ...   print(str(err)[:43])
  kernels: the kernel exceeds float64's range
  """


def _first_nonfinite_depth(stacked) -> int | None:
  bad = ~np.isfinite(np.asarray(stacked)).reshape(len(stacked), -1).all(axis=1)
  return int(np.argmax(bad)) + 1 if bad.any() else None


def _no_overflow(what: str):
  """Decorator for the public kernel functions: their inputs are finite (checked), so a
  non-finite result is float64 overflow; say so, with the depth where it starts when the result
  has one entry per depth, instead of returning inf/NaN. Traced results pass unchecked."""
  def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      out = fn(*args, **kwargs)
      if isinstance(out, NTKSpectrum):  # κ = ∞ marks a singular NTK, not an overflow
        fields = [out.eigenvalues]
      elif dataclasses.is_dataclass(out):
        fields = [getattr(out, f.name) for f in dataclasses.fields(out)]
      else:
        fields = [out]
      leaves = jax.tree_util.tree_leaves(fields)
      if checks.is_traced(leaves):
        return out
      arrays = [np.asarray(a) for a in leaves]
      if all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f"):
        return out
      per_depth = (out.eigenvalues if isinstance(out, NTKSpectrum)
                   else out if what == "layer_kernels" else None)
      where = ""
      if per_depth is not None and _first_nonfinite_depth(per_depth) is not None:
        first = _first_nonfinite_depth(per_depth)
        where = f" from depth {first} on (ask for depth <= {first - 1})"
      raise KernelOverflowError(
          f"{what}: the kernel exceeds float64's range (~1.8e308){where}; the variance grows "
          "geometrically with depth at this σw² and σb²: use fewer layers, a smaller sw2, or "
          "smaller inputs")
    return wrapper
  return decorate


def row_mesh(devices=None, axis: str = "rows") -> Mesh:
  """A one-dimensional device mesh (all devices by default) to shard Gram rows over.

  >>> import mimictheory as mt
  >>> mesh = mt.row_mesh()
  >>> mesh.axis_names
  ('rows',)
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (axis,))


# ----------------------------------------------------------------------------------------------
# Recursions.
# ----------------------------------------------------------------------------------------------
def input_kernel(layer: Layer, x1, x2, gain):
  """K¹ of the first dense layer (weight mean: inputs centred over their features); x1 (..., N1,
  d) and x2 (..., N2, d), leading axes batch tiles."""
  if layer.norm == "weight_mean":
    x1 = x1 - x1.mean(axis=-1, keepdims=True)
    x2 = x2 - x2.mean(axis=-1, keepdims=True)
  d = x1.shape[-1]
  k = layer.sw2 * gain * (x1 @ jnp.swapaxes(x2, -1, -2)) / d + layer.sb2
  q1 = layer.sw2 * gain * jnp.sum(x1 * x1, axis=-1) / d + layer.sb2
  q2 = layer.sw2 * gain * jnp.sum(x2 * x2, axis=-1) / d + layer.sb2
  return k, q1, q2


def dense_step(layer: Layer, q1, q2, k, ntk):
  """Activation and the next dense layer: (K, Θ) -> (K', Θ') entrywise; q1 indexes the rows,
  q2 the columns (leading axes batch tiles)."""
  k_new, slope = layer.covariance_and_slope(q1[..., :, None], q2[..., None, :], k)
  return k_new, k_new + slope * ntk


def _pairwise(layer: Layer, x1, x2, gain, depth: int, per_depth=None, diagonal=None,
              shared=None):
  """Entrywise recursion (norm none / weight_mean). `per_depth(K, Θ)` collects per-depth output.

  `diagonal` marks the entries (i, i) of a symmetric Gram matrix: they are pinned to the
  variance recursion, and `shared` (broadcast against the column variances) marks the columns
  whose variance is the row's own, so that q12 = q1 = q2 there to the last bit and ρ = 1
  exactly (`activations._correlation`). A rounding excursion ρ = 1 - 1e-16 would cost
  √(1 - ρ²) ~ 1e-8 in the arc-cosine kernel.
  """
  k, q1, q2 = input_kernel(layer, x1, x2, gain)
  same = (lambda q1, q2: q2) if shared is None else (lambda q1, q2: jnp.where(shared, q1, q2))
  pin = (lambda k, q: k) if diagonal is None else (
      lambda k, q: jnp.where(diagonal, q[..., :, None], k))

  def step(carry, _):
    k, ntk, q1, q2 = carry
    q2 = same(q1, q2)
    k = pin(k, q1)
    k, ntk = dense_step(layer, q1, q2, k, ntk)
    q1, q2 = layer.variance_map(q1), layer.variance_map(q2)
    return (k, ntk, q1, q2), (None if per_depth is None else per_depth(k, ntk))

  k = pin(k, q1)
  (k, ntk, q1, _), ys = jax.lax.scan(step, (k, k, q1, q2), None, length=depth)
  return pin(k, q1), ntk, ys


def _center(m):
  return m - m.mean(axis=0, keepdims=True) - m.mean(axis=1, keepdims=True) + m.mean()


def normalise_full_batch(k, ntk):
  """Full-batch BN of a dense layer's output: K -> H K H / ν, Θ -> H Θ H / ν (Theorem 2)."""
  centred = _center(k)
  nu = jnp.mean(jnp.diagonal(centred))
  k_bn = centred / nu
  q = jnp.diagonal(k_bn)
  eye = jnp.eye(k.shape[0], dtype=bool)
  k_bn = jnp.where(eye, q[:, None], k_bn)  # ρ = 1 exactly on the diagonal (see _pairwise)
  return k_bn, _center(ntk) / nu


def _batch_norm_paper(layer: Layer, x, gain, depth: int, per_depth=None):
  """Theorem 2's full-batch BN after every hidden dense layer; the output layer is plain."""
  dense = dataclasses.replace(layer, norm="none")
  k, _, _ = input_kernel(dense, x, x, gain)

  def step(carry, _):
    k_bn, ntk_bn = normalise_full_batch(*carry)
    q = jnp.diagonal(k_bn)
    k, ntk = dense_step(dense, q, q, k_bn, ntk_bn)
    return (k, ntk), (None if per_depth is None else per_depth(k, ntk))

  (k, ntk), ys = jax.lax.scan(step, (k, k), None, length=depth)
  return k, ntk, ys


@partial(jax.jit, static_argnames=("depth",))
def _gram_block(layer, x1, x2, gain, depth):
  k, ntk, _ = _pairwise(layer, x1, x2, gain, depth)
  return Kernels(k, ntk)


@partial(jax.jit, static_argnames=("depth",))
def _gram_tiles(layer, x_rows, x_cols, on_diagonal, gain, depth):
  """NNGP and NTK of C square tiles (C, B, B) of a symmetric Gram matrix from their row and
  column inputs (C, B, d); `on_diagonal` (C,) marks the tiles on the diagonal."""
  diagonal = on_diagonal[:, None, None] & jnp.eye(x_rows.shape[1], dtype=bool)
  k, ntk, _ = _pairwise(layer, x_rows, x_cols, gain, depth, diagonal=diagonal,
                        shared=on_diagonal[:, None])
  return Kernels(k, ntk)


@partial(jax.jit, static_argnames=("depth",))
def _gram_batch_norm_paper(layer, x, gain, depth):
  k, ntk, _ = _batch_norm_paper(layer, x, gain, depth)
  return Kernels(k, ntk)


# ----------------------------------------------------------------------------------------------
# Exact batch norm at the batch size of x (module batch_norm).
# ----------------------------------------------------------------------------------------------
def _exact_batch_norm(layer: Layer, x, gain, same, depth: int, nodes: int, with_ntk: bool,
                      per_depth=None):
  """Exact BN recursion for φ = a x + b relu(x): (K, Θ of the output layer, max errors, ys)."""
  a, b = bn.homogeneous_coefficients(layer.activation)
  k, _, _ = input_kernel(dataclasses.replace(layer, norm="none"), x, x, gain)

  def step(carry, _):
    k, ntk = carry
    k, ntk, err_k, err_t = bn.exact_step(a, b, k, ntk, layer.sw2, layer.sb2, same, nodes)
    return (k, ntk), (err_k, err_t, None if per_depth is None else per_depth(k, ntk))

  (k, ntk), (err_k, err_t, ys) = jax.lax.scan(step, (k, k if with_ntk else None), None,
                                              length=depth)
  return k, ntk, jnp.max(err_k), jnp.max(err_t), ys


def _monte_carlo_batch_norm(layer: Layer, x, gain, depth: int, key, samples: int,
                            with_ntk: bool, per_depth=None):
  """The same recursion with each BN layer's expectation by Monte Carlo over units."""
  k, _, _ = input_kernel(dataclasses.replace(layer, norm="none"), x, x, gain)

  def step(carry, key):
    k, ntk = carry
    k, ntk = bn.monte_carlo_step(layer.activation, k, ntk, layer.sw2, layer.sb2, key, samples)
    return (k, ntk), (None if per_depth is None else per_depth(k, ntk))

  (k, ntk), ys = jax.lax.scan(step, (k, k if with_ntk else None), jax.random.split(key, depth))
  return k, ntk, ys


@partial(jax.jit, static_argnames=("depth", "nodes", "with_ntk"))
def _gram_batch_norm(layer, x, gain, same, depth, nodes, with_ntk=True):
  k, ntk, err_k, err_t, _ = _exact_batch_norm(layer, x, gain, same, depth, nodes, with_ntk)
  return k, ntk, err_k, err_t


@partial(jax.jit, static_argnames=("depth", "samples", "with_ntk"))
def _gram_batch_norm_mc(layer, x, gain, keys, depth, samples, with_ntk=True):
  def replica(key):
    k, ntk, _ = _monte_carlo_batch_norm(layer, x, gain, depth, key, samples, with_ntk)
    return k, (jnp.zeros_like(k) if ntk is None else ntk)

  return jax.lax.map(replica, keys)


@partial(jax.tree_util.register_dataclass, data_fields=["nngp", "ntk", "nngp_error", "ntk_error"],
         meta_fields=["method"])
@dataclasses.dataclass(frozen=True)
class BatchNormKernels:
  """Kernels of a BN network at the batch of x, with an error estimate for each.

  method: "exact" (φ = a x + b relu(x): the s integral; the errors are the relative changes
  when the trapezoid rule drops every other node, an upper bound on its error; at batch 4,
  where the NTK map is ill-conditioned from layer 2 on, also the change with twice the nodes,
  about 1e-8) or
  "monte_carlo" (other activations: the mean over independent replicas; the errors are the
  largest standard error relative to the largest entry). `ntk` is None when not computed.

  >>> import numpy as np, mimictheory as mt
  >>> x = np.random.default_rng(0).normal(size=(6, 4))
  >>> k = mt.batch_norm_kernels(x, depth=2)
  >>> k.nngp.shape, k.method
  ((6, 6), 'exact')
  """

  nngp: np.ndarray
  ntk: np.ndarray | None
  nngp_error: float
  ntk_error: float
  method: str


@partial(jax.jit, static_argnames=("depth",))
def _layer_kernels(layer, x, gain, depth):
  """Pre-activation NNGP kernels K^1 .. K^depth of the hidden layers (after BN with BN)."""
  first, _, _ = input_kernel(layer if layer.norm not in BATCH_NORMS else
                              dataclasses.replace(layer, norm="none"), x, x, gain)
  record = lambda k, ntk: k  # noqa: E731
  if layer.norm == "batch_norm_paper":
    rest = _batch_norm_paper(layer, x, gain, depth - 1, record)[2]
    dense = jnp.concatenate([first[None], rest])
    return jax.vmap(lambda k: normalise_full_batch(k, k)[0])(dense)
  diagonal = jnp.eye(x.shape[0], dtype=bool)
  rest = _pairwise(layer, x, x, gain, depth - 1, record, diagonal, shared=True)[2]
  return jnp.concatenate([first[None], rest])


def adequate_batch_nodes(layer: Layer, x, gain, same, with_ntk: bool) -> int:
  """Adequate trapezoid nodes for the exact BN recursion on the batch x (`adequate_nodes`)."""
  coeffs = bn.homogeneous_coefficients(layer.activation)
  if coeffs is None:  # only the normalised kernels E[ĥĥᵀ] are exact: the identity's map
    coeffs, with_ntk = (1.0, 0.0), False
  k, _, _ = input_kernel(dataclasses.replace(layer, norm="none"), f64(x), f64(x), gain)
  return bn.adequate_nodes(*coeffs, k, with_ntk, layer.sw2, layer.sb2, same)


def _normalised_kernel(k, same, nodes):
  """E[ĥ ĥᵀ] of BN'd pre-activations h ~ N(0, K): the identity's exact BN map with σw² = 1."""
  return bn.exact_step(1.0, 0.0, k, None, 1.0, 0.0, same, nodes)[0]


@partial(jax.jit, static_argnames=("depth", "nodes", "samples"))
def _layer_kernels_batch_norm(layer, x, gain, same, depth, nodes, key, samples):
  """Exact BN: the kernel after BN at every hidden layer (exact for every activation; the
  dense kernels in between by the exact map or, for other activations, Monte Carlo)."""
  record = lambda k, ntk: k  # noqa: E731
  first, _, _ = input_kernel(dataclasses.replace(layer, norm="none"), x, x, gain)
  if bn.homogeneous_coefficients(layer.activation) is not None:
    rest = _exact_batch_norm(layer, x, gain, same, depth - 1, nodes, False, record)[4]
  else:
    rest = _monte_carlo_batch_norm(layer, x, gain, depth - 1, key, samples, False, record)[2]
  dense = jnp.concatenate([first[None], rest])
  return jax.lax.map(lambda k: _normalised_kernel(k, same, nodes), dense)


@_no_overflow("layer_kernels")
@float64
def layer_kernels(x, depth: int = 10, activation="relu", sw2=2.0, sb2=0.0, norm="none",
                  fan_in=None, input_gain: float = 1.0) -> np.ndarray:
  """The NNGP kernel of the pre-activations of every hidden layer l = 1..`depth`, (depth, N, N).

  Layer l's kernel is the input of its activation (after BN with a batch norm), so
  `layer_kernels(x, L)[l - 1]` normalised to unit diagonal is the correlation of every input
  pair at layer l: the correlation map T (or T̄) iterated l - 1 times from the inputs.
  `kernels(x, depth=l - 1).nngp` equals `layer_kernels(x, l)[l - 1]` without BN. With
  `norm="batch_norm"` (the rows of x are the batch) it is E[ĥĥᵀ] of the normalised units,
  exact for every activation; the layers in between are exact for relu, leaky_relu and identity
  and Monte Carlo otherwise (see `batch_norm_kernels`).

  >>> import numpy as np, mimictheory as mt
  >>> x = np.array([[1.0, 0.0], [0.6, 0.8]])
  >>> k = mt.layer_kernels(x, depth=3, activation="relu", sw2=2.0)
  >>> bool(np.allclose(np.diagonal(k, axis1=1, axis2=2), 1.0))      # q* = 1 at (2, 0)
  True
  >>> float(np.round(k[1, 0, 1], 6)) == float(np.round(2 * mt.relu_dual(0.6), 6))  # T(0.6)
  True
  """
  x, _, depth, gain = validate_inputs(x, None, depth, input_gain)
  layer = kernel_layer(activation, sw2, sb2, norm, fan_in)
  if not checks.is_traced(x):
    check_gram_memory("layer_kernels", x.shape[0], x.shape[0], stored=depth)
  if checks.is_traced(x, layer, gain):
    _refuse_traced_exact_batch_norm("layer_kernels", norm)
    return _layer_kernels(layer, f64(x), gain, depth)
  if norm == "batch_norm":
    x, same = check_batch(x, ntk=False)
    nodes = adequate_batch_nodes(layer, x, gain, same, False)
    return _layer_kernels_batch_norm(layer, f64(x), gain, same, depth, nodes, jax.random.key(0),
                                     MC_SAMPLES)
  if isinstance(layer.activation, Numerical) and norm in ("none", "weight_mean"):
    first = np.asarray(input_kernel(layer, f64(x), f64(x), gain)[0])
    rest = _numerical_kernels(layer, x, x, gain, depth - 1, True, False,
                              lambda k, ntk: k, with_ntk=False)[2]
    return np.stack([first] + rest)
  return _layer_kernels(layer, f64(x), gain, depth)


MC_SAMPLES = 1 << 16  # units per BN layer and replica in the Monte Carlo method
MC_REPLICAS = 8


def identical_rows(x) -> np.ndarray:
  """(N, N) booleans: rows i and j of x are equal (memory O(N²), not O(N² d))."""
  labels = np.unique(x, axis=0, return_inverse=True)[1].reshape(-1)
  return labels[:, None] == labels[None, :]


def check_batch(x, ntk: bool, name: str = "x"):
  """The rows of x as one BN batch: at least 2 (4 for the NTK) and not all identical."""
  need = bn.MIN_BATCH_NTK if ntk else 2
  if x.shape[0] < need:
    why = ("the NTK of a BN network is infinite at batch 2 or 3: the gradient through the "
           "batch variance has E[1/|Gh|²] = ∞ (use layer_kernels for the NNGP)"
           if ntk and x.shape[0] >= 2 else "batch norm needs a batch")
    raise ValueError(f"{name} must have at least {need} rows (the batch) with batch norm, "
                     f"got {x.shape[0]}: {why}")
  if np.all(x == x[:1]):
    raise ValueError(f"{name}: every row of the batch is the same (or zero), so every unit has "
                     "batch variance 0 and batch norm is undefined; pass distinct inputs")
  rank = np.linalg.matrix_rank(x - x.mean(axis=0))
  if ntk and rank < 3:
    raise ValueError(f"{name}: the centred rows of the batch span {rank} dimension(s); the NTK "
                     "of a BN network is then infinite (the first layer's centred "
                     "pre-activations live in fewer than 3 dimensions, so E[1/|Gh|²] = ∞); "
                     "pass inputs whose centred rows span at least 3 dimensions")
  same = identical_rows(x)
  return x, same


def _check_finite_batch_norm(values, layer, batch: int, depth: int):
  """BN networks are chaotic (χ1(B) > 1): the NTK grows like χ1^depth and overflows float64
  past a few hundred to a few thousand layers. Say so instead of returning NaN."""
  if np.all(np.isfinite(np.asarray(values))):
    return
  rate = ""
  if bn.homogeneous_coefficients(layer.activation) is not None and batch >= bn.MIN_BATCH_NTK:
    chi = float(bn.symmetric_chi1(*bn.homogeneous_coefficients(layer.activation), batch))
    rate = (f" (χ1 = {chi:.3f} at batch {batch}: about {int(709 / math.log(chi))} layers "
            "before float64's 1e308)")
  raise FloatingPointError(
      f"depth={depth}: the NTK of this batch-norm network overflows float64{rate}; BN networks "
      "are chaotic at every batch size, so the NTK grows exponentially with depth. Use a "
      "smaller depth")


def _batch_norm_kernels(layer, x, gain, depth, with_ntk, nodes, samples, replicas, seed,
                        name="x"):
  x, same = check_batch(x, ntk=with_ntk, name=name)
  if bn.homogeneous_coefficients(layer.activation) is not None:
    nodes = adequate_batch_nodes(layer, x, gain, same, with_ntk) if nodes is None else nodes
    k, ntk, err_k, err_t = _gram_batch_norm(layer, f64(x), gain, same, depth, nodes, with_ntk)
    _check_finite_batch_norm(k if ntk is None else ntk, layer, x.shape[0], depth)
    if with_ntk and x.shape[0] == bn.MIN_BATCH_NTK and depth > 1:
      # At batch 4 (E[1/r²] only just finite) the NTK from layer 2 on is ill-conditioned:
      # results with different node sets differ by ~1e-8 although each step's estimate is
      # ~1e-15. Measure that too: the estimate includes the change with 2N - 1 nodes.
      other = _gram_batch_norm(layer, f64(x), gain, same, depth, 2 * nodes - 1, True)[1]
      spread = jnp.max(jnp.abs(other - ntk)) / jnp.max(jnp.abs(ntk))
      err_t = jnp.maximum(err_t, spread)
    return BatchNormKernels(k, ntk, float(err_k), float(err_t), "exact")
  keys = jax.random.split(jax.random.key(seed), replicas)
  k, ntk = _gram_batch_norm_mc(layer, f64(x), gain, keys, depth, samples, with_ntk)

  def summary(m):
    se = jnp.std(m, axis=0, ddof=1) / np.sqrt(replicas)
    mean = jnp.mean(m, axis=0)
    return mean, float(jnp.max(se) / jnp.max(jnp.abs(mean)))

  _check_finite_batch_norm(ntk if with_ntk else k, layer, x.shape[0], depth)
  k, err_k = summary(k)
  ntk, err_t = summary(ntk) if with_ntk else (None, 0.0)
  return BatchNormKernels(k, ntk, err_k, err_t, "monte_carlo")


@concrete_only
@_no_overflow("batch_norm_kernels")
@float64
def batch_norm_kernels(x, depth: int = 10, activation="relu", sw2=2.0, sb2=0.0,
                       input_gain: float = 1.0, ntk: bool = True, nodes: int | None = None,
                       samples: int = MC_SAMPLES, replicas: int = MC_REPLICAS,
                       seed: int = 0) -> BatchNormKernels:
  """Exact NNGP and NTK of a BN network whose batch is the rows of x, with error estimates.

  BN (no affine parameters) follows every hidden dense layer and normalises each unit by its
  own batch mean and variance; the NTK differentiates through both (Yang et al. 2019; see the
  module `batch_norm` for the derivation). For φ = a x + b relu(x) (relu, leaky_relu,
  identity) the maps are one-dimensional integrals, computed to ~1e-14 with `nodes` trapezoid
  nodes in ln s (default: doubled from a count by batch size until the first layer's error
  estimate is below 1e-11; data of low rank need more); other activations use Monte Carlo with
  `samples`
  units per layer in each of `replicas` independent replicas, and report the standard error.
  Memory O(B²) for the exact method. The NTK needs B >= 4, the NNGP B >= 2.

  >>> import numpy as np, mimictheory as mt
  >>> x = np.random.default_rng(0).normal(size=(6, 4))
  >>> out = mt.batch_norm_kernels(x, depth=2, activation="relu", sw2=2.0, sb2=0.1)
  >>> out.method, bool(out.ntk_error < 1e-9)
  ('exact', True)
  """
  x = checks.check_data("x", x)
  depth = checks.check_int("depth", depth, minimum=1)
  gain = float(checks.check_positive("input_gain", input_gain))
  if nodes is not None:
    nodes = checks.check_int("nodes", nodes, minimum=9)
    nodes += 1 - nodes % 2  # odd: the coarse rule uses every other node
  samples = checks.check_int("samples", samples, minimum=4096)
  samples -= samples % 4096
  replicas = checks.check_int("replicas", replicas, minimum=2)
  seed = checks.check_int("seed", seed, minimum=0)
  layer = kernel_layer(activation, sw2, sb2, "batch_norm", None)
  return _batch_norm_kernels(layer, x, gain, depth, bool(ntk), nodes, samples, replicas, seed)


def kernel_layer(activation, sw2, sb2, norm, fan_in):
  """`make_layer` for the Gram-matrix functions, which take one (σw², σb²) each call."""
  for name, value in (("sw2", sw2), ("sb2", sb2)):
    if value is not None and not checks.is_traced(value) and np.ndim(value) != 0:
      raise ValueError(f"{name} must be a single number here, got shape {np.shape(value)}; "
                       "call once per value (or use phase_diagram for a grid)")
  return build_layer(activation, sw2, sb2, norm, fan_in)


def validate_inputs(x1, x2, depth, gain):
  x1 = checks.check_data("x1", x1)
  x2 = x1 if x2 is None else checks.check_data("x2", x2)
  if x2.shape[1] != x1.shape[1]:
    raise ValueError(f"x2 must have the same number of features as x1 ({x1.shape[1]}), "
                     f"got shape {x2.shape}")
  depth = checks.check_int("depth", depth, minimum=1)
  gain = checks.check_positive("input_gain", gain)
  return x1, x2, depth, gain if checks.is_traced(gain) else float(gain)


#: float64 N1 × N2 arrays alive at once while a Gram matrix is computed (results, the tiles'
#: assembly, Mehler's series and its bounds): the memory estimate's factor
GRAM_ARRAYS = 8


def check_gram_memory(what: str, n1: int, n2: int, stored: int = 0) -> None:
  """Refuse, before any work, Gram matrices that do not fit (`stored`: N1 × N2 arrays kept per
  layer, as `layer_kernels` keeps one per depth)."""
  arrays = GRAM_ARRAYS + 2 * stored  # the stacked layers, on the device and as NumPy
  need = 8.0 * n1 * n2 * arrays
  hint = ("use fewer inputs, or a smaller depth" if stored else "use fewer inputs"
          + (" (or compute the Gram matrix in blocks of rows with x2)"
             if what == "kernels" else ""))
  checks.check_memory(what, need, f"{n1} x {n2} entries, {arrays} float64 arrays of that size",
                      hint)


def _refuse_traced_exact_batch_norm(what: str, norm: str):
  """Exact finite-batch BN picks its quadrature from the batch's values: not traceable."""
  if norm == "batch_norm":
    raise TypeError(f"{what}(norm='batch_norm') cannot be traced (jit/grad/vmap): the exact BN "
                    "kernels choose their quadrature from the values of the batch; call it on "
                    "concrete values, or trace norm 'none', 'weight_mean' or 'batch_norm_paper'")


def _traced_kernels(layer, x1, x2, gain, depth):
  """`kernels` under a transformation: the whole Gram matrix in one traced recursion (no
  blocking, tiling or NumPy), the diagonal of a symmetric one pinned to ρ = 1 as in `_pairwise`."""
  _refuse_traced_exact_batch_norm("kernels", layer.norm)
  if layer.norm == "batch_norm_paper":
    k, ntk, _ = _batch_norm_paper(layer, f64(x1), gain, depth)
    return Kernels(k, ntk)
  diagonal = jnp.eye(x1.shape[0], dtype=bool) if x2 is x1 else None
  k, ntk, _ = _pairwise(layer, f64(x1), f64(x2), gain, depth, diagonal=diagonal,
                        shared=True if x2 is x1 else None)
  return Kernels(k, ntk)


@_no_overflow("kernels")
@float64
def kernels(x1, x2=None, depth: int = 10, activation="relu", sw2=2.0, sb2=0.0, norm="none",
            fan_in=None, input_gain: float = 1.0, block_size: int | None = None,
            mesh: Mesh | None = None, progress: bool = False) -> Kernels:
  """NNGP and NTK Gram matrices of a depth-`depth` network (neural-tangents' convention).

  Args:
    x1: inputs, shape (N1, d). x2: second inputs (N2, d); defaults to x1.
    depth: number of hidden layers (activations); there are depth + 1 dense layers.
    activation, sw2, sb2, norm, fan_in: as in `correlation_map` (`sw2=None`: stable init).
      `norm="batch_norm"`: exact BN with the rows of x1 as the batch (`batch_norm_kernels`;
      Monte Carlo with a warning for activations other than relu, leaky_relu, identity);
      `"batch_norm_paper"`: Theorem 2's approximation. Both refuse x2.
    input_gain: factor on x·x'/d in the first layer (the paper's eq 1 uses 1/2).
    block_size: (norm none / weight_mean) with x2 None, the edge of the square tiles of which
      only those on and above the diagonal are computed (default 64); with x2, rows of x1 per
      block (default about 4M entries a block).
    mesh: a one-axis `jax.sharding.Mesh` (see `row_mesh`): tiles, or a block's rows, are
      sharded over it.
    progress: show a progress bar over the blocks.

  Returns:
    `Kernels(nngp, ntk)`, float64 arrays of shape (N1, N2).

  >>> import numpy as np, mimictheory as mt
  >>> x = np.eye(3)
  >>> k = mt.kernels(x, depth=2, activation="relu", sw2=2.0, sb2=0.0)
  >>> bool(np.allclose(np.diag(k.nngp), 2 / 3)) and bool(np.allclose(np.diag(k.ntk), 2.0))
  True
  """
  x1, x2, depth, gain = validate_inputs(x1, x2, depth, input_gain)
  layer = kernel_layer(activation, sw2, sb2, norm, fan_in)
  layer.activation.require_derivative()  # the NTK needs E[φ'φ']
  if not checks.is_traced(x1, x2):
    check_gram_memory("kernels", x1.shape[0], x2.shape[0])
  if norm in BATCH_NORMS and x2 is not x1:
    raise ValueError(f"x2 must be None with norm={norm!r}: BN couples the inputs of a batch, "
                     "so a cross-kernel depends on the whole batch; pass the whole batch as "
                     "x1 and take the block you need")
  if checks.is_traced(x1, x2, layer, gain):
    return _traced_kernels(layer, x1, x2, gain, depth)
  if norm in BATCH_NORMS:
    if norm == "batch_norm_paper":
      check_batch(x1, ntk=False, name="x1")
      return _gram_batch_norm_paper(layer, f64(x1), gain, depth)
    out = _batch_norm_kernels(layer, x1, gain, depth, True, None, MC_SAMPLES, MC_REPLICAS, 0,
                              "x1")
    if out.method == "monte_carlo":
      warnings.warn(
        f"kernels(norm='batch_norm', activation={layer.activation.name!r}): Monte "
        f"Carlo estimate (relative standard error {max(out.nngp_error, out.ntk_error):.1e}); "
        "only relu, leaky_relu and identity are exact; see batch_norm_kernels",
        stacklevel=3,
      )
    return Kernels(out.nngp, out.ntk)
  if isinstance(layer.activation, Numerical) and mesh is None:
    return _numerical_kernels(layer, x1, x2, gain, depth, x2 is x1, progress)[0]
  if block_size is not None:
    block_size = checks.check_int("block_size", block_size, minimum=1)
  if x2 is x1:
    return symmetric_gram(partial(_gram_tiles, layer, gain=gain, depth=depth), x1, block_size,
                          mesh, progress)
  return blocked_gram(partial(_gram_block, layer, gain=gain, depth=depth), x1, x2, block_size,
                      mesh, progress)


def blocked_gram(block_fn, x1, x2, block_size, mesh, progress):
  """Cross kernel K(x1, x2) in row blocks of x1, each block's rows sharded over `mesh`;
  `block_fn(x1_block, x2)` -> `Kernels` of the block (the network's entrywise recursion)."""
  n1, n2 = x1.shape[0], x2.shape[0]
  if block_size is None:
    block_size = max(1, min(n1, (1 << 22) // max(n2, 1)))
  shards = 1 if mesh is None else mesh.devices.size
  block_size = -(-block_size // shards) * shards  # a multiple of the number of shards
  x2_dev = f64(x2) if mesh is None else jax.device_put(f64(x2), _replicated(mesh))
  nngp, ntk = np.empty((n1, n2)), np.empty((n1, n2))
  for start in progress_bar(range(0, n1, block_size), progress, "kernel blocks"):
    block = _padded(x1[start:start + block_size], block_size)
    out = block_fn(_sharded(block, mesh), x2_dev)
    rows = min(block_size, n1 - start)
    nngp[start:start + rows], ntk[start:start + rows] = out.nngp[:rows], out.ntk[:rows]
  return Kernels(nngp, ntk)


_TILE = 64  # edge of the square tiles of a symmetric Gram matrix


def symmetric_gram(tiles_fn, x, tile, mesh, progress):
  """K(x, x) from the tiles on and above the diagonal (half the work), tiles batched about 4M
  entries a call and sharded over `mesh`; the result is exactly symmetric. `tiles_fn(x_rows,
  x_cols, on_diagonal)` -> `Kernels` of C square tiles (C, B, B) from their row and column
  inputs (C, B, d), `on_diagonal` (C,) marking the tiles on the diagonal: the tiling is one
  step, composable with any entrywise recursion (the MLP's here, a `stax` description's)."""
  n = x.shape[0]
  tile = min(n, _TILE if tile is None else tile)
  blocks = -(-n // tile)
  rows, cols = np.triu_indices(blocks)
  shards = 1 if mesh is None else mesh.devices.size
  per_call = min(len(rows), max(1, (1 << 22) // tile**2))
  per_call = -(-per_call // shards) * shards
  x_tiles = _padded(np.asarray(x), blocks * tile).reshape(blocks, tile, -1)
  out = np.empty((2, blocks, tile, blocks, tile))
  upper = np.triu(np.ones((tile, tile), dtype=bool))
  for start in progress_bar(range(0, len(rows), per_call), progress, "kernel tiles"):
    r, c = rows[start:start + per_call], cols[start:start + per_call]
    pad = per_call - len(r)  # pad with tile (0, 0): one compiled shape for all calls
    r_in, c_in = np.pad(r, (0, pad)), np.pad(c, (0, pad))
    tiles = tiles_fn(_sharded(x_tiles[r_in], mesh), _sharded(x_tiles[c_in], mesh),
                     _sharded(r_in == c_in, mesh))
    diag = r == c
    for m, values in enumerate((tiles.nngp, tiles.ntk)):
      values = np.asarray(values)[:len(r)]
      out[m, c, :, r, :] = np.swapaxes(values, 1, 2)
      out[m, r, :, c, :] = values
      # Diagonal tiles: their upper triangle mirrored, so that K is symmetric to the last bit.
      on = values[diag]
      out[m, r[diag], :, r[diag], :] = np.where(upper, on, np.swapaxes(on, 1, 2))
  full = out.reshape(2, blocks * tile, blocks * tile)[:, :n, :n]
  return Kernels(*(np.ascontiguousarray(m) for m in full))


def _padded(x, rows: int):
  """x with zero rows appended up to `rows`."""
  return (
    x if x.shape[0] == rows else np.concatenate([x, np.zeros((rows - x.shape[0],) + x.shape[1:])])
  )


def _replicated(mesh):
  return NamedSharding(mesh, PartitionSpec())


def _sharded(a, mesh):
  """`a` as float64 (or bool) on the device(s), its leading axis split over `mesh`."""
  a = jnp.asarray(a) if a.dtype == bool else f64(a)
  if mesh is None:
    return a
  spec = PartitionSpec(mesh.axis_names[0], *([None] * (a.ndim - 1)))
  return jax.device_put(a, NamedSharding(mesh, spec))


# ----------------------------------------------------------------------------------------------
# Numerically integrated activations: Mehler's series on the whole Gram matrix.
# ----------------------------------------------------------------------------------------------
SERIES_TOL = 1e-11  # truncation bound accepted per entry, relative to √(E[·²] E[·²])


_UNROLL = 8  # Horner steps fused per pass over the matrix


@partial(jax.jit, static_argnames=("order",))
def _dense_series(table, q1, q2, rho, order: int):
  """E[φ(u)φ(v)] and E[φ'(u)φ'(v)] for every entry from Mehler's series Σ_k a_k(q1) a_k(q2)
  ρ^k (and Stein's lemma, b_k = a_{k+1} √((k+1)/q), for φ'), with the coefficients used (for
  the truncation bounds). Horner's rule runs _UNROLL terms per fused pass over the matrix:
  O(N1 N2 K) time, O(N1 N2) memory. `order` + 1 must be a multiple of _UNROLL."""
  a1, a2 = table(q1), table(q2)  # (N, order + 2)
  scale = jnp.sqrt(jnp.arange(1.0, order + 2.0))
  b1, b2 = a1[:, 1:] * scale / jnp.sqrt(q1[:, None]), a2[:, 1:] * scale / jnp.sqrt(q2[:, None])
  a1, a2 = a1[:, :-1], a2[:, :-1]

  def block(i, acc):
    kernel, deriv = acc
    for u in range(_UNROLL):  # terms order - i·_UNROLL - u, highest first
      k = order - i * _UNROLL - u
      col = lambda m: jax.lax.dynamic_index_in_dim(m, k, axis=1, keepdims=False)  # noqa: E731
      kernel = kernel * rho + col(a1)[:, None] * col(a2)[None, :]
      deriv = deriv * rho + col(b1)[:, None] * col(b2)[None, :]
    return kernel, deriv

  zero = jnp.zeros_like(rho)
  kernel, deriv = jax.lax.fori_loop(0, (order + 1) // _UNROLL, block, (zero, zero))
  return kernel, deriv, a1, a2, b1, b2


@partial(jax.jit, static_argnames=("order",))
def _row_coefficients(table, q, order: int):
  """a_0..a_K and b_0..b_K (φ' by Stein's lemma) at every q."""
  a = table(q)
  b = a[:, 1:] * jnp.sqrt(jnp.arange(1.0, order + 2.0) / q[:, None])
  return a[:, :-1], b[:, :-1]


@jax.jit
def _entry_series(a1, a2, b1, b2, i, j, rho):
  """Mehler's series for the entries (i[n], j[n]) only, from per-row coefficients."""
  def step(acc, k):
    kernel, deriv = acc
    return (kernel * rho + a1[i, k] * a2[j, k], deriv * rho + b1[i, k] * b2[j, k]), None

  zero = jnp.zeros_like(rho)
  order = a1.shape[1] - 1
  return jax.lax.scan(step, (zero, zero), jnp.arange(order, -1, -1))[0]


def _tails(moment, coeffs):
  """Parseval tails E[f²] - Σ_{k<=K} c_k², relative to E[f²] (>= 0 up to rounding)."""
  return np.maximum(moment - np.sum(coeffs**2, axis=-1), 0.0) / np.maximum(moment, 1e-300)


def _series_layer(act, tabulated, q1, q2, rho, symmetric: bool, with_ntk: bool = True):
  """E[φφ] and E[φ'φ'] on the Gram matrix: Mehler's series where its truncation bound is
  below SERIES_TOL, then a longer series on the remaining entries, then 2-D quadrature; on
  the diagonal of a symmetric Gram matrix the 1-D moments. Returns (K, D, moments at q1 and
  q2, number of entries by 2-D quadrature). `with_ntk=False`: D is not needed (zeros; φ may
  jump)."""
  from mimictheory._src import tables
  m1, m2 = (np.array(tables.moments_jit(tabulated.moment, f64(q))) for q in (q1, q2))
  lo, hi = tables.coefficient_range(np.concatenate([q1, q2]))
  first, longer = tables.ORDERS
  table = tables.coefficient_table(act, lo, hi, first)
  kernel, deriv, a1, a2, b1, b2 = (np.array(v) for v in _dense_series(
      table, f64(q1), f64(q2), f64(rho), first))
  power = np.abs(rho) ** (first + 1.0)
  todo = power * np.sqrt(np.outer(_tails(m1[:, 0], a1), _tails(m2[:, 0], a2))) > SERIES_TOL
  if with_ntk:
    todo |= power * np.sqrt(np.outer(_tails(m1[:, 2], b1), _tails(m2[:, 2], b2))) > SERIES_TOL
  if symmetric:
    np.fill_diagonal(todo, False)
  i, j = np.nonzero(todo)
  if i.size:  # the longer series on those entries
    a1, b1 = (np.asarray(v) for v in _row_coefficients(
        tables.coefficient_table(act, lo, hi, longer), f64(q1), longer))
    a2, b2 = (a1, b1) if symmetric else (np.asarray(v) for v in _row_coefficients(
        tables.coefficient_table(act, lo, hi, longer), f64(q2), longer))
    n = i.size
    pad = lambda v: np.pad(v, (0, (1 << max(n - 1, 0).bit_length()) - n), mode="edge")  # noqa: E731
    k, d = (np.asarray(v)[:n] for v in _entry_series(
        f64(a1), f64(a2), f64(b1), f64(b2), pad(i), pad(j), f64(pad(rho[i, j]))))
    kernel[i, j], deriv[i, j] = k, d
    power = np.abs(rho[i, j]) ** (longer + 1.0)
    t_a1, t_a2 = _tails(m1[:, 0], a1), _tails(m2[:, 0], a2)
    t_b1, t_b2 = _tails(m1[:, 2], b1), _tails(m2[:, 2], b2)
    bad = power * np.sqrt(t_a1[i] * t_a2[j]) > SERIES_TOL
    if with_ntk:
      bad |= power * np.sqrt(t_b1[i] * t_b2[j]) > SERIES_TOL
    i, j = i[bad], j[bad]
  if i.size:  # 2-D quadrature entry by entry
    q12 = rho[i, j] * np.sqrt(q1[i] * q2[j])
    kernel[i, j] = np.asarray(act.kernel(q1[i], q2[j], q12))
    if with_ntk:
      deriv[i, j] = np.asarray(act.derivative_kernel(q1[i], q2[j], q12))
  if symmetric:
    np.fill_diagonal(kernel, m1[:, 0])
    np.fill_diagonal(deriv, m1[:, 2])
  if not with_ntk:
    deriv = np.zeros_like(deriv)
  return kernel, deriv, m1, m2, int(i.size)


def _numerical_kernels(layer: Layer, x1, x2, gain, depth: int, symmetric: bool, progress,
                       per_depth=None, with_ntk: bool = True):
  """NNGP and NTK of a numerically integrated activation, layer by layer (norm none or weight
  mean): K' = σw² f (E[φφ] - centring) + σb², Θ' = K' + σw² f E[φ'φ'] Θ (eq 7).
  Returns (Kernels, entries by 2-D quadrature, [per_depth(K, Θ) for every layer]).
  `with_ntk=False`: the NNGP only (Θ is then meaningless; φ may jump)."""
  from mimictheory._src import tables
  act = layer.activation
  tabulated = tables.tabulated(act)
  k, q1, q2 = (np.array(a) for a in input_kernel(layer, f64(x1), f64(x2), gain))
  if symmetric:
    np.fill_diagonal(k, q1)
  ntk = k.copy()
  sw2, sb2, f = float(layer.sw2), float(layer.sb2), float(layer.factor)
  fallback, collected = 0, []
  for _ in progress_bar(range(depth), progress, f"kernel layers ({act.name})"):
    # A zero input row with σb² = 0 has q = 0: use q = 1e-16 (its limit to O(1e-16)).
    q1, q2 = np.maximum(q1, 1e-16), np.maximum(q2, 1e-16)
    rho = np.clip(k / np.sqrt(np.outer(q1, q2)), -1.0, 1.0)
    kern, deriv, m1, m2, n = _series_layer(act, tabulated, q1, q2, rho, symmetric, with_ntk)
    fallback += n
    if layer.norm == "weight_mean":
      kern = kern - np.outer(m1[:, 1], m2[:, 1])
    k = sw2 * f * kern + sb2
    ntk = k + sw2 * f * deriv * ntk
    q1 = np.diagonal(k).copy() if symmetric else sw2 * f * _variance(m1, layer.norm) + sb2
    q2 = q1 if symmetric else sw2 * f * _variance(m2, layer.norm) + sb2
    if per_depth is not None:
      collected.append(per_depth(k, ntk))
  return Kernels(k, ntk), fallback, collected


def _variance(m, norm):
  return m[:, 0] - (m[:, 1] ** 2 if norm == "weight_mean" else 0.0)


# ----------------------------------------------------------------------------------------------
# NTK spectrum against depth (Theorem 1).
# ----------------------------------------------------------------------------------------------
@partial(jax.tree_util.register_dataclass, data_fields=["depths", "eigenvalues", "condition"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class NTKSpectrum:
  """Eigenvalues (ascending) of the NTK Gram matrix for every depth 1..depth, and κ.

  >>> import numpy as np, mimictheory as mt
  >>> s = mt.ntk_spectrum(np.random.default_rng(0).normal(size=(8, 4)), depth=3)
  >>> s.eigenvalues.shape, bool(np.all(s.condition >= 1))
  ((3, 8), True)
  """

  depths: np.ndarray  # (D,)
  eigenvalues: np.ndarray  # (D, N)
  condition: np.ndarray  # (D,) λmax / λmin, ∞ where λmin <= 0 (numerically singular)


def _eigenvalues(k, ntk):
  return jnp.linalg.eigvalsh(0.5 * (ntk + ntk.T))


@partial(jax.jit, static_argnames=("depth", "nodes"))
def _spectrum_batch_norm(layer, x, gain, same, depth, nodes):
  return _exact_batch_norm(layer, x, gain, same, depth, nodes, True, _eigenvalues)[4]


@partial(jax.jit, static_argnames=("depth", "samples"))
def _spectrum_batch_norm_mc(layer, x, gain, keys, depth, samples):
  record = lambda k, ntk: ntk  # noqa: E731
  ntks = jax.lax.map(
      lambda key: _monte_carlo_batch_norm(layer, x, gain, depth, key, samples, True, record)[2],
      keys)
  return jax.vmap(lambda t: _eigenvalues(None, t))(jnp.mean(ntks, axis=0))


@partial(jax.jit, static_argnames=("depth",))
def _spectrum(layer, x, gain, depth):
  eigenvalues = _eigenvalues
  if layer.norm == "batch_norm_paper":
    return _batch_norm_paper(layer, x, gain, depth, eigenvalues)[2]
  diagonal = jnp.eye(x.shape[0], dtype=bool)
  return _pairwise(layer, x, x, gain, depth, eigenvalues, diagonal, shared=True)[2]


@_no_overflow("ntk_spectrum")
@float64
def ntk_spectrum(x, depth: int = 50, activation="relu", sw2=2.0, sb2=0.0, norm="none",
                 fan_in=None, input_gain: float = 1.0) -> NTKSpectrum:
  """The NTK Gram spectrum and condition number κ on `x` for every depth 1..`depth`.

  Theorem 1 (Xiao, Pennington & Schoenholz 2019): κ diverges with depth in the ordered phase
  (χ1 < 1), grows like the data-set size on the critical line, and tends to a constant in the
  chaotic phase (to 1 where c* = 0, as for weight mean and BN with ReLU).

  >>> import numpy as np, mimictheory as mt
  >>> x = np.random.default_rng(0).normal(size=(8, 5))
  >>> s = mt.ntk_spectrum(x, depth=20, sw2=None, norm="weight_mean")
  >>> bool(s.condition[-1] < s.condition[0] * 10)
  True
  """
  x, _, depth, gain = validate_inputs(x, None, depth, input_gain)
  layer = kernel_layer(activation, sw2, sb2, norm, fan_in)
  layer.activation.require_derivative()
  if not checks.is_traced(x):
    check_gram_memory("ntk_spectrum", x.shape[0], x.shape[0])
  if checks.is_traced(x, layer, gain):
    _refuse_traced_exact_batch_norm("ntk_spectrum", norm)
    eig = _spectrum(layer, f64(x), gain, depth)
    return NTKSpectrum(jnp.arange(1, depth + 1), eig, _condition(eig, jnp))
  if norm == "batch_norm":
    x, same = check_batch(x, ntk=True)
    if bn.homogeneous_coefficients(layer.activation) is not None:
      eig = _spectrum_batch_norm(layer, f64(x), gain, same, depth,
                                 adequate_batch_nodes(layer, x, gain, same, True))
    else:
      keys = jax.random.split(jax.random.key(0), MC_REPLICAS)
      eig = _spectrum_batch_norm_mc(layer, f64(x), gain, keys, depth, MC_SAMPLES)
    _check_finite_batch_norm(eig, layer, x.shape[0], depth)
  elif isinstance(layer.activation, Numerical) and norm in ("none", "weight_mean"):
    eig = np.stack(_numerical_kernels(layer, x, x, gain, depth, True, False,
                                      lambda k, ntk: np.linalg.eigvalsh(0.5 * (ntk + ntk.T)))[2])
  else:
    eig = _spectrum(layer, f64(x), gain, depth)
  eig = np.asarray(eig)
  return NTKSpectrum(np.arange(1, depth + 1), eig, _condition(eig, np))


def _condition(eig, xp):
  """κ = λmax / λmin per depth, ∞ where λmin <= 0 (numerically singular); xp: np or jnp."""
  lmin, lmax = eig[:, 0], eig[:, -1]
  return xp.where(lmin > 0, lmax / xp.where(lmin > 0, lmin, 1.0), xp.inf)
