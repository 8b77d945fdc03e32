"""NNGP and NTK Gram matrices of the library's fully connected network on a data set.

`kernels`, `layer_kernels` and `ntk_spectrum` take the loose arguments of the mean-field maps
(activation, σw², σb², norm, fan-in, depth) and build the network they describe, `stax.mlp`,
neural-tangents' own architecture so that the two compare entry by entry:

    stax.serial(stax.Dense(n, W_std=√(σw² input_gain), b_std=√σb²),
                *[act, stax.Dense(n, W_std=√σw², b_std=√σb²)] * depth)   (NTK parameterisation)

with K¹ = σw² · input_gain · x·x'/d + σb² (the paper's eq 1 is input_gain = 1/2) and, per layer,

    K^{l+1} = σw² E[φ(u)φ(v)] + σb²,       Θ^{l+1} = K^{l+1} + σw² E[φ'(u)φ'(v)] Θ^l,

the layer form of the paper's eq 7; every computation is that description's (`stax`), so
these functions and a user's own description cannot drift apart. `norm="weight_mean"` centres
every dense layer (Lemma 1; the input layer exactly: W̄x = W(x - x̄)).

`norm="batch_norm"` puts a BN (no affine parameters) after every hidden dense layer, with the
rows of x as the batch, and is exact at that batch size: every unit is normalised by its own
batch mean and variance and the NTK differentiates through both (module `batch_norm`; Yang et
al. 2019). `norm="batch_norm_paper"` is the paper's full-batch approximation (Theorem 2): the
kernel is centred over the data set, K -> H K H / ν with H = I - 11ᵀ/N and ν the mean diagonal
of H K H, and Θ likewise with the batch statistics held fixed; it is the limit of the exact
kernels as the batch grows. BN couples the inputs of a batch, so the whole Gram matrix is
computed at once and cross-kernels between two batches are refused; without BN every entry
follows its own recursion and large N is computed in tiles, optionally sharded over a device
mesh (module `gram`).

`batch_norm_kernels` is BN's own estimator with error estimates: the exact s-integral for
φ = a x + b relu(x), and Monte Carlo over units with a standard error for other activations
(which the description does not compute; `kernels` and friends call it for them).
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

from mimictheory._src import batch_norm as bn
from mimictheory._src import checks, stax
from mimictheory._src.gram import (  # noqa: F401 (row_mesh: part of this module's API)
    Kernels, NTKSpectrum, check_gram_memory, condition_numbers, identical_rows, row_mesh)
from mimictheory._src.maps import Layer, build_layer
from mimictheory._src.precision import concrete_only, f64, float64

__all__ = ["Kernels", "kernels", "layer_kernels", "NTKSpectrum", "ntk_spectrum", "row_mesh",
           "BatchNormKernels", "batch_norm_kernels"]


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
      # files on disk (kernels(out=...)) were checked batch by batch as they were written
      arrays = [np.asarray(a) for a in leaves if not isinstance(a, np.memmap)]
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


def description(layer: Layer, depth: int, gain, fan_in) -> stax.Network:
  """The network that the loose arguments describe (`stax.mlp`): `layer`'s activation, σw²,
  σb² (resolved, e.g. the stable σw²) and norm, `fan_in` its hidden width (None: infinite)."""
  return stax.mlp(depth, layer.activation, layer.sw2, layer.sb2, layer.norm, width=fan_in,
                  input_gain=gain)


def _monte_carlo_batch_norm_needed(layer: Layer) -> bool:
  """Exact BN with an activation that is not a x + b relu(x): the description has no exact
  kernel for it, so `batch_norm_kernels`' Monte Carlo estimate is used."""
  return layer.rule.exact_batch and bn.homogeneous_coefficients(layer.activation) is None


def _first_layer(layer: Layer, x, gain):
  """K¹ = σw² gain x xᵀ/d + σb² of a BN network's batch (its first layer is plain)."""
  return layer.sw2 * gain * (x @ x.T) / x.shape[-1] + layer.sb2


def _exact_batch_norm(layer: Layer, x, gain, same, depth: int, nodes: int, with_ntk: bool,
                      per_depth=None):
  """Exact BN recursion for φ = a x + b relu(x): (K, Θ of the output layer, max errors, ys)."""
  a, b = bn.homogeneous_coefficients(layer.activation)
  k = _first_layer(layer, x, gain)

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
  k = _first_layer(layer, x, gain)

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


def adequate_batch_nodes(layer: Layer, x, gain, same, with_ntk: bool) -> int:
  """Adequate trapezoid nodes for the exact BN recursion on the batch x (`adequate_nodes`)."""
  coeffs = bn.homogeneous_coefficients(layer.activation)
  if coeffs is None:  # only the normalised kernels E[ĥĥᵀ] are exact: the identity's map
    coeffs, with_ntk = (1.0, 0.0), False
  k = _first_layer(layer, f64(x), gain)
  return bn.adequate_nodes(*coeffs, k, with_ntk, layer.sw2, layer.sb2, same)


def _normalised_kernel(k, same, nodes):
  """E[ĥ ĥᵀ] of BN'd pre-activations h ~ N(0, K): the identity's exact BN map with σw² = 1."""
  return bn.exact_step(1.0, 0.0, k, None, 1.0, 0.0, same, nodes)[0]


@partial(jax.jit, static_argnames=("depth", "samples"))
def _layer_kernels_monte_carlo(layer, x, gain, same, depth, nodes, key, samples):
  """Exact BN with another activation: the kernel after BN at every hidden layer (the
  normalisation exact, the dense kernels in between by Monte Carlo)."""
  record = lambda k, ntk: k  # noqa: E731
  first = _first_layer(layer, x, gain)
  rest = _monte_carlo_batch_norm(layer, x, gain, depth - 1, key, samples, False, record)[2]
  dense = jnp.concatenate([first[None], rest])
  return jax.lax.map(lambda k: bn.exact_step(1.0, 0.0, k, None, 1.0, 0.0, same, nodes)[0], dense)


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
  and Monte Carlo otherwise (see `batch_norm_kernels`). The description's per-layer kernels
  (`stax.Network.layer_kernels`, NNGP only).

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
    _refuse_traced_exact_batch_norm("layer_kernels", layer)
  elif layer.rule.normalised:
    x, same = check_batch(x, ntk=False)
    if _monte_carlo_batch_norm_needed(layer):
      nodes = adequate_batch_nodes(layer, x, gain, same, False)
      return _layer_kernels_monte_carlo(layer, f64(x), gain, same, depth, nodes,
                                        jax.random.key(0), MC_SAMPLES)
  after = stax.BatchNorm if layer.rule.normalised else stax.Dense
  found = description(layer, depth, gain, fan_in).layer_kernels(x, None, after, ntk=False)
  xp = jnp if checks.is_traced(found) else np
  return xp.stack([xp.asarray(k.nngp) for k in found[:depth]])


MC_SAMPLES = 1 << 16  # units per BN layer and replica in the Monte Carlo method
MC_REPLICAS = 8


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


def _refuse_traced_exact_batch_norm(what: str, layer: Layer):
  """Exact finite-batch BN picks its quadrature from the batch's values: not traceable."""
  if layer.rule.exact_batch:
    raise TypeError(f"{what}(norm='batch_norm') cannot be traced (jit/grad/vmap): the exact BN "
                    "kernels choose their quadrature from the values of the batch; call it on "
                    "concrete values, or trace norm 'none', 'weight_mean' or 'batch_norm_paper'")


@_no_overflow("kernels")
@float64
def kernels(x1, x2=None, depth: int = 10, activation="relu", sw2=2.0, sb2=0.0, norm="none",
            fan_in=None, input_gain: float = 1.0, block_size: int | None = None,
            mesh=None, progress: bool = False, out=None, dtype: str = "float64") -> Kernels:
  """NNGP and NTK Gram matrices of a depth-`depth` network (neural-tangents' convention).

  The network is `stax.mlp(depth, activation, sw2, sb2, norm, width=fan_in, input_gain)` and
  this is its `kernel_fn` (see the module docstring).

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
      sharded over it (closed-form activations without BN; others are refused, not computed
      by another method).
    progress: show a progress bar over the tiles (or, for numerical activations, the layers).
    out: a folder: the Gram matrices are written there tile by tile instead (`nngp.npy`,
      `ntk.npy` in `dtype`, "float64" or "float32"; norm none or weight_mean), resumably,
      shared among the processes of `jax.distributed`; the result holds them opened
      read-only (`np.load(mmap_mode="r")`). See `stax.Network.kernel_fn`.

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
  if not checks.is_traced(x1, x2) and out is None:
    check_gram_memory("kernels", x1.shape[0], x2.shape[0])
  if layer.rule.normalised and x2 is not x1:
    raise ValueError(f"x2 must be None with norm={norm!r}: BN couples the inputs of a batch, "
                     "so a cross-kernel depends on the whole batch; pass the whole batch as "
                     "x1 and take the block you need")
  if checks.is_traced(x1, x2, layer, gain):
    _refuse_traced_exact_batch_norm("kernels", layer)
  elif layer.rule.normalised:
    check_batch(x1, ntk=layer.rule.exact_batch, name="x1")
    if _monte_carlo_batch_norm_needed(layer):
      out = _batch_norm_kernels(layer, x1, gain, depth, True, None, MC_SAMPLES, MC_REPLICAS, 0,
                                "x1")
      warnings.warn(
        f"kernels(norm='batch_norm', activation={layer.activation.name!r}): Monte "
        f"Carlo estimate (relative standard error {max(out.nngp_error, out.ntk_error):.1e}); "
        "only relu, leaky_relu and identity are exact; see batch_norm_kernels",
        stacklevel=3,
      )
      return Kernels(out.nngp, out.ntk)
  k = description(layer, depth, gain, fan_in).kernel_fn(
      x1, None if x2 is x1 else x2, ("nngp", "ntk"), mesh=mesh, block_size=block_size,
      progress=progress, out=out, dtype=dtype)
  if layer.rule.exact_batch:
    _check_finite_batch_norm(k.ntk, layer, x1.shape[0], depth)
  return Kernels(k.nngp, k.ntk)


@partial(jax.jit, static_argnames=("depth", "samples"))
def _spectrum_batch_norm_mc(layer, x, gain, keys, depth, samples):
  record = lambda k, ntk: ntk  # noqa: E731
  ntks = jax.lax.map(
      lambda key: _monte_carlo_batch_norm(layer, x, gain, depth, key, samples, True, record)[2],
      keys)
  return jax.vmap(lambda t: jnp.linalg.eigvalsh(0.5 * (t + t.T)))(jnp.mean(ntks, axis=0))


@_no_overflow("ntk_spectrum")
@float64
def ntk_spectrum(x, depth: int = 50, activation="relu", sw2=2.0, sb2=0.0, norm="none",
                 fan_in=None, input_gain: float = 1.0) -> NTKSpectrum:
  """The NTK Gram spectrum and condition number κ on `x` for every depth 1..`depth`.

  Theorem 1 (Xiao, Pennington & Schoenholz 2019): κ diverges with depth in the ordered phase
  (χ1 < 1), grows like the data-set size on the critical line, and tends to a constant in the
  chaotic phase (to 1 where c* = 0, as for weight mean and BN with ReLU). The description's
  `stax.Network.ntk_spectrum`, from depth 1 on.

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
    _refuse_traced_exact_batch_norm("ntk_spectrum", layer)
  elif layer.rule.exact_batch:
    x, _ = check_batch(x, ntk=True)
    if _monte_carlo_batch_norm_needed(layer):
      keys = jax.random.split(jax.random.key(0), MC_REPLICAS)
      eig = np.asarray(_spectrum_batch_norm_mc(layer, f64(x), gain, keys, depth, MC_SAMPLES))
      _check_finite_batch_norm(eig, layer, x.shape[0], depth)
      return NTKSpectrum(np.arange(1, depth + 1), eig, condition_numbers(eig, np))
  spectrum = description(layer, depth, gain, fan_in).ntk_spectrum(x)
  if layer.rule.exact_batch:
    _check_finite_batch_norm(spectrum.eigenvalues, layer, x.shape[0], depth)
  return NTKSpectrum(spectrum.depths[1:], spectrum.eigenvalues[1:], spectrum.condition[1:])
