"""Networks as data: neural-tangents' `stax` names, with weight mean and batch norm.

Every layer and every combination of layers is a `Network`: a frozen description that gives
the finite-width JAX network and its infinite-width kernels from the same object, so the two
cannot drift apart. Unpacked, it is neural-tangents' triple:

    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05),
                                               stax.Relu(), stax.Dense(1, W_std=1.5))

- `init_fn(key, input_shape) -> (output_shape, params)`, `apply_fn(params, x)`: the finite
  network in the NTK parameterisation, y = W_std/√n · x W + b_std · b with W, b ~ N(0, 1).
- `kernel_fn(x1, x2=None, get=None)`: the NNGP and NTK of the infinite-width network
  (Jacot et al. 2018; Lee et al. 2019), in float64 whatever JAX's global setting; `get` as in
  neural-tangents ("nngp", "ntk", a tuple of them, or None for the whole `Kernel`).

A neural-tangents user ports a model by changing the import: `Dense`, `Relu`, `LeakyRelu`,
`Erf`, `Gelu`, `Identity`, `ElementwiseNumerical`, `LayerNorm`, `serial`, `parallel`,
`FanOut`, `FanInSum`, and for images `Conv`, `AvgPool`, `GlobalAvgPool` and `Flatten` keep its
names, signatures and kernels (checked against neural-tangents 0.6.5 in `tests/test_stax.py`).
Beyond it, for MimicNorm (Fei et al., AAAI 2021):

- `Dense(..., weight_mean=True)`: each output unit's weights centred over its fan-in (eq 10).
  The unit sees Σᵢ Wᵢ (xᵢ − x̄), so K' = σw² f (K − m₁ m₂ᵀ) + σb² with m the mean over the
  units feeding the layer: the data's feature mean for the input layer (exact, f = 1), E[φ]
  after an activation, and f = (n−1)/n (Lemma 1) for n units of the previous `Dense`.
- `BatchNorm()`: each unit normalised over the batch; exact at the batch's size (Yang et al.
  2019, `mimictheory.batch_norm`) for activations a x + b relu(x), with the activation that
  follows; `BatchNorm(full_batch_limit=True)` is the paper's Theorem 2 (K -> H K H / ν).
- `Scale(alpha)`: a constant multiplier (the residual scalar α of a branch).
- `Tanh`, `Elementwise(activation)`: any activation of `mimictheory` (closed form, or
  numerical with Mehler's series and a quadrature fallback).

>>> import numpy as np
>>> from mimictheory import stax
>>> init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(64, W_std=2**0.5), stax.Relu(),
...                                            stax.Dense(1, W_std=2**0.5))
>>> x = np.eye(3)   # |x|²/d = 1/3: K¹ = 2/3, then E[relu²] = K¹/2 and E[relu'²] = 1/2
>>> k = kernel_fn(x, None, get=("nngp", "ntk"))
>>> np.round(np.diag(k.nngp), 6), np.round(np.diag(k.ntk), 6)   # 2·(1/3), 2·(1/3) + 2/3
(array([0.666667, 0.666667, 0.666667]), array([1.333333, 1.333333, 1.333333]))
"""
from __future__ import annotations

import collections
import contextvars
import dataclasses
import functools
import math
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src import batch_norm as bn
from mimictheory._src import checks, out_of_core, tables
from mimictheory._src.activations import (
    Activation, Erf as _Erf, LeakyReLU, ReLU, get_activation)
from mimictheory._src.gram import (
    ENTRIES_PER_CALL, GRAM_ARRAYS, Kernels, NTKSpectrum, blocked_gram, check_gram_memory,
    condition_numbers, identical_rows, sharded, symmetric_gram, tile_edge)
from mimictheory._src.io import progress_bar
from mimictheory._src.norms import rule
from mimictheory._src.precision import float64, is_traced

__all__ = ["Kernel", "Network", "MeanField", "Dense", "Elementwise", "Relu", "LeakyRelu", "Erf",
           "Gelu", "Tanh", "Identity", "ElementwiseNumerical", "BatchNorm", "LayerNorm", "Scale",
           "serial", "parallel", "FanOut", "FanInSum", "mlp", "norm_layers", "Conv", "Flatten",
           "GlobalAvgPool", "AvgPool"]


# ----------------------------------------------------------------------------------------------
# The kernel that flows through a description.
# ----------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Kernel:
  """The NNGP and NTK of a network's outputs on inputs x1 (rows) and x2 (columns), per unit.

  `ntk` is None where it is not computed (`kernel_fn(..., get="nngp")`: the NNGP alone, which
  also admits activations without a derivative). `cov1`, `cov2`: the variances of the rows'
  and columns' outputs (the diagonal of the NNGP when x2 is x1); `mean1`, `mean2`: the mean
  over units of the outputs, needed by a following
  weight-mean layer (None where it is 0); `same`: pairs of identical inputs (their correlation
  is pinned to 1). Static: `width`, the number of units of the last `Dense` (None: the inputs'
  features); `x1_is_x2`; `pending_batch_norm`, set by an exact `BatchNorm` whose expectation is
  taken with the activation that follows it; `mean_known`, False where the unit mean is not
  computed (after an exact BN and a non-linear activation).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> k = stax.serial(stax.Dense(8), stax.Relu()).kernel_fn(np.eye(2))   # get=None: a Kernel
  >>> np.round(k.nngp, 6).tolist(), np.round(k.mean1, 6).tolist()        # E[relu], √(q/2π)
  ([[0.25, 0.079577], [0.079577, 0.25]], [0.282095, 0.282095])
  """
  nngp: jax.Array
  ntk: jax.Array | None
  cov1: jax.Array
  cov2: jax.Array
  mean1: jax.Array | None = None
  mean2: jax.Array | None = None
  same: jax.Array | None = None
  width: int | None = dataclasses.field(default=None, metadata=dict(static=True))
  x1_is_x2: bool = dataclasses.field(default=False, metadata=dict(static=True))
  pending_batch_norm: bool = dataclasses.field(default=False, metadata=dict(static=True))
  mean_known: bool = dataclasses.field(default=True, metadata=dict(static=True))
  spatial: str | None = dataclasses.field(default=None, metadata=dict(static=True))

  def replace(self, **changes) -> "Kernel":
    return dataclasses.replace(self, **changes)

  # -- broadcasting the per-input quantities against the kernel --------------------------------
  # Shapes by `spatial`: None (vectors): nngp (N1, N2), cov1 (N1,), mean1 (N1,); "diagonal"
  # (images, same-position covariances only): nngp (N1, N2, *S), cov1 (N1, *S), mean1 (N1, *S);
  # "full" (images, every pair of positions): nngp (N1, N2, *S, *S), cov1 (N1, *S, *S) (each
  # input's own covariance across positions), mean1 (N1, *S). S: the spatial shape (H, W).
  def variances(self, cov):
    """The per-position variances of `cov1` or `cov2`: (N, H, W), or (N,) for vectors."""
    if self.spatial != "full":
      return cov
    nd = (cov.ndim - 1) // 2
    flat = cov.reshape(cov.shape[0], math.prod(cov.shape[1:1 + nd]), -1)
    return jnp.diagonal(flat, axis1=1, axis2=2).reshape(cov.shape[:1 + nd])

  def rows(self, a):
    """A per-position quantity of the rows' inputs, (N1, H, W), broadcast against `nngp`."""
    nd = a.ndim - 1
    tail = (1,) * nd if self.spatial == "full" else ()
    return a.reshape(a.shape[:1] + (1,) + a.shape[1:] + tail)

  def cols(self, a):
    """A per-position quantity of the columns' inputs, (N2, H, W), broadcast against `nngp`."""
    nd = a.ndim - 1
    head = (1,) * nd if self.spatial == "full" else ()
    return a.reshape((1,) + a.shape[:1] + head + a.shape[1:])

  def spatial_eye(self, nd: int):
    """True where two spatial positions are the same, (H, W, H, W) for "full"; None otherwise."""
    if self.spatial != "full":
      return None
    shape = self.nngp.shape[2:2 + nd]
    size = math.prod(shape)
    return jnp.eye(size, dtype=bool).reshape(shape + shape)

  def batch_mask(self, mask):
    """An (N1, N2) mask of input pairs as a mask of the kernel's entries that are a variance of
    one input at one position (with "full", only where the two positions are the same)."""
    nd = self.nngp.ndim - 2
    if self.spatial == "full":
      nd //= 2
      return mask.reshape(mask.shape + (1,) * (2 * nd)) & self.spatial_eye(nd)
    return mask.reshape(mask.shape + (1,) * nd)

  def diagonal_of(self, m):
    """The entries (i, i) of a symmetric kernel: its own covariance of each input, shaped like
    cov1."""
    return jnp.moveaxis(jnp.diagonal(m, axis1=0, axis2=1), -1, 0)

  def unit_statistics(self, batch: int | None = None):
    """The infinite-width counterparts of a finite network's `Signal.mean` and
    `Signal.variance` (`nn.signals`, `FiniteNetwork.signal`): over units (channels), the
    average squared batch mean of a unit, S, and its average batch variance, D − S, where the
    batch is these inputs (and, for images, every position): S is the mean of the NNGP over
    every pair of (input, position) and D the mean variance. `batch`: these inputs as a sample
    of a batch of that many (pairs of distinct inputs weighted (B − 1)/B, an input with itself
    1/B). Needs a symmetric kernel and, for images, the covariances of every pair of positions
    (a description that needs them, e.g. ending in `GlobalAvgPool`).

    >>> import numpy as np
    >>> from mimictheory import stax
    >>> x = np.array([[1.0, 1.0], [1.0, -1.0]])          # K = x xᵀ / 2 = [[1, 0], [0, 1]]
    >>> [round(float(v), 6) for v in stax.Identity().kernel_fn(x).unit_statistics()]
    [0.5, 0.5]
    """
    if not self.x1_is_x2:
      raise ValueError("unit_statistics needs the kernel of one batch with itself (x2=None)")
    if self.spatial == "diagonal":
      raise ValueError("unit_statistics of images needs the covariances of every pair of "
                       "positions: describe the network with a GlobalAvgPool (or an AvgPool) "
                       "after the layer, or take its layer_kernels from such a description")
    n = self.nngp.shape[0]
    b = n if batch is None else checks.check_int("batch", batch, minimum=1)
    pairs = self.nngp.reshape(n, n, -1).mean(-1)
    eye = jnp.eye(n, dtype=bool)
    own = jnp.mean(jnp.where(eye, pairs, 0.0)) * n
    others = (jnp.sum(jnp.where(eye, 0.0, pairs)) / (n * (n - 1))) if n > 1 else own
    mean_square = (b - 1) / b * others + own / b
    return mean_square, jnp.mean(self.variances(self.cov1)) - mean_square

  def own(self, a, b=None):
    """Per input, a(p) b(p') at the positions `cov1` holds ((N, H, W, H, W) for "full", (N, H, W)
    or (N,) otherwise): the own-covariance counterpart of `rows(a) * cols(b)`."""
    b = a if b is None else b
    if self.spatial != "full":
      return a * b
    nd = a.ndim - 1
    return a.reshape(a.shape + (1,) * nd) * b.reshape(b.shape[:1] + (1,) * nd + b.shape[1:])


def _identical(x1, x2):
  """The `same` mask of a symmetric kernel (pairs of identical rows; the diagonal when x1 is
  traced), None for a cross-kernel."""
  if x2 is not None:
    return None
  if is_traced(x1):
    return jnp.eye(x1.shape[0], dtype=bool)
  return jnp.asarray(identical_rows(np.asarray(x1)))


def _input_kernel(x1, x2, same, with_ntk: bool = True, spatial: str | None = None) -> Kernel:
  """The kernel of the inputs themselves: x1 x2ᵀ / d (neural-tangents' starting point), with the
  feature means for a weight-mean first layer; its NTK 0 (None without the NTK). Images
  (N, H, W, C): the channel average x(p)·x'(p')/C at every pair of positions (`spatial`
  "full") or at the same positions only ("diagonal")."""
  d = x1.shape[-1]
  symmetric = x2 is None
  if symmetric:
    x2 = x1
  if x1.ndim > 2:
    return _image_kernel(x1, x2, same, with_ntk, spatial, symmetric)
  nngp = x1 @ x2.T / d
  return Kernel(nngp, jnp.zeros_like(nngp) if with_ntk else None, jnp.sum(x1 * x1, -1) / d,
                jnp.sum(x2 * x2, -1) / d,
                jnp.mean(x1, -1), jnp.mean(x2, -1), same, None, symmetric)


def _image_kernel(x1, x2, same, with_ntk, spatial, symmetric) -> Kernel:
  c = x1.shape[-1]
  if spatial == "full":
    pairs = lambda a, b: jnp.einsum("xhwc,yHWc->xyhwHW", a, b) / c  # noqa: E731
    own = lambda a: jnp.einsum("xhwc,xHWc->xhwHW", a, a) / c  # noqa: E731
  else:
    pairs = lambda a, b: jnp.einsum("xhwc,yhwc->xyhw", a, b) / c  # noqa: E731
    own = lambda a: jnp.einsum("xhwc,xhwc->xhw", a, a) / c  # noqa: E731
  nngp = pairs(x1, x2)
  return Kernel(nngp, jnp.zeros_like(nngp) if with_ntk else None, own(x1), own(x2),
                jnp.mean(x1, -1), jnp.mean(x2, -1), same, None, symmetric, spatial=spatial)


# ----------------------------------------------------------------------------------------------
# The description.
# ----------------------------------------------------------------------------------------------
class Network:
  """A network described as data. Unpacks to neural-tangents' `(init_fn, apply_fn, kernel_fn)`.

  Subclasses implement three things: `init(key, input_shape) -> (output_shape, params)`,
  `apply(params, x, rng=None)` (the finite network), and `kernel(k: Kernel) -> Kernel` (its
  infinite-width limit). `kernel_fn` and the Flax model (`mimictheory.nn.from_stax`) are built
  on those.

  >>> import jax
  >>> from mimictheory import stax
  >>> net = stax.serial(stax.Dense(16), stax.Erf(), stax.Dense(2))
  >>> isinstance(net, stax.Network), net.init_fn(jax.random.key(0), (5, 3))[0]
  (True, (5, 2))
  """

  def init(self, key, input_shape):
    raise NotImplementedError

  def apply(self, params, x, rng=None):
    raise NotImplementedError

  def kernel(self, k: Kernel) -> Kernel:
    raise NotImplementedError

  def traceable(self) -> bool:
    """Whether `kernel` is pure JAX (so `kernel_fn` compiles the whole description once):
    True unless a part needs concrete values (an exact `BatchNorm` chooses its quadrature from
    the data; a numerical activation's Mehler series is tabulated on the host)."""
    return True

  def entrywise(self) -> bool:
    """Whether each entry of the kernel depends on its own two inputs only (so the Gram
    matrix can be computed tile by tile, and sharded): True unless a part couples the batch
    (`BatchNorm`)."""
    return True

  def needs_full_spatial(self, full_after: bool) -> bool:
    """For image inputs: whether this layer needs the covariance of every pair of positions of
    its input ("full") given whether what follows it needs that of its output; otherwise the
    same-position covariances suffice ("diagonal", (HW)² times cheaper). Pointwise layers and
    convolutions pass the need on; `GlobalAvgPool` needs full, `Flatten` diagonal."""
    return full_after

  # neural-tangents' triple
  def init_fn(self, key, input_shape):
    return self.init(key, input_shape)

  def apply_fn(self, params, inputs, rng=None, **kwargs):
    return self.apply(params, inputs, rng)

  def kernel_fn(self, x1, x2=None, get=None, *, mesh=None, block_size: int | None = None,
                progress: bool = False, out=None, dtype: str = "float64"):
    """NNGP and NTK on x1 × x2 (x2=None: x1 × x1), float64. `get`: None (the `Kernel`),
    "nngp", "ntk", or a tuple of them (a namedtuple with those fields).

    The route is chosen once, from what the parts declare (`traceable`, `entrywise`): an
    entrywise, pure-JAX description is compiled once and computed tile by tile (a symmetric
    Gram matrix from its upper tiles, exactly symmetric), the tiles sharded over the devices
    of `mesh` (`mimictheory.row_mesh()`), with a progress bar if asked (`block_size`: the
    tiles' edge, or a cross kernel's rows per block). Images read out to vectors (`Flatten`,
    `GlobalAvgPool`) are tiled too, with tiles of about 4M spatial entries (32 × 32 inputs of
    8 × 8 images behind a global pooling), so memory is bounded by the tile and by the N1 × N2
    result, not by N1 N2 (HW)²; a tile that cannot fit is refused before any work. One that
    couples the batch
    (`BatchNorm`) is computed whole, compiled where it is pure JAX; the others (numerical
    activations, exact BN) eagerly, layer by layer (the progress bar counts layers). Under a
    transformation (`jit`, `grad`, `vmap` of the inputs or of a layer's W_std, b_std), the
    description is traced as it stands, into the caller's program.

    `out` (a folder): the Gram matrices are written to disk instead, `out/nngp.npy` and
    `out/ntk.npy` in `dtype` ("float64" or "float32"), tile by tile, with memory bounded by a
    batch of tiles (`mimictheory._src.out_of_core`: resumable after a kill, bit for bit;
    divided among the processes of `jax.distributed`); the `Kernel` returned holds them
    opened read-only (`np.load(mmap_mode="r")`), `same` None. Descriptions without
    `BatchNorm`, on concrete inputs; numerical activations are computed tile by tile
    eagerly."""
    return _in_float64(_kernel_fn, self, x1, x2, get, mesh, block_size, progress, out, dtype)

  def __iter__(self):
    return iter((self.init_fn, self.apply_fn, self.kernel_fn))

  def layer_kernels(self, x1, x2=None, after=None, ntk: bool = True) -> list:
    """The `Kernel` after every layer of class `after` (default `Dense`), in the order they
    run, through the whole description (nested `serial` and `parallel` included): the
    per-layer kernels of one pass. After `Dense` they are the pre-activations of every layer
    (`mimictheory.layer_kernels` for an MLP) and the NTK of every depth
    (`mimictheory.ntk_spectrum`); after `BatchNorm`, the normalised units E[ĥĥᵀ]. `after` may
    be a tuple of classes. `ntk=False`: the NNGP only (each `Kernel`'s ntk is None).

    >>> import numpy as np
    >>> from mimictheory import stax
    >>> net = stax.serial(stax.Dense(8, W_std=2**0.5), stax.Relu(), stax.Dense(8, W_std=2**0.5))
    >>> [np.round(k.nngp[0, 0], 6) for k in net.layer_kernels(np.eye(2))]   # q* = 1/2 each
    [np.float64(1.0), np.float64(1.0)]
    """
    return _in_float64(_layer_kernels, self, x1, x2, Dense if after is None else after,
                       bool(ntk))

  def mean_field(self, batch: int | None = None) -> "MeanField":
    """The one-layer mean-field maps of a stack of identical layers: `Dense`, then
    [`BatchNorm`] activation `Dense` repeated, every `Dense` with the same W_std, b_std and
    weight mean, every activation the same. ValueError names what breaks the pattern.
    `batch`: the batch size of an exact `BatchNorm` (for χ1 at that batch).

    >>> from mimictheory import stax
    >>> net = stax.serial(stax.Dense(300, W_std=2**0.5), *[stax.Relu(),
    ...                   stax.Dense(300, W_std=2**0.5)] * 10)
    >>> round(float(net.mean_field().chi1()), 12)   # ReLU at (2, 0): critical
    1.0
    """
    return _mean_field(self, batch)

  def ntk_spectrum(self, x, after=None):
    """The NTK Gram spectrum and condition number κ after every layer of class `after`
    (default `Dense`): `NTKSpectrum` whose `depths` count the `after` layers before each one
    (0 for the first), so that an MLP's entry at depth d is `mimictheory.ntk_spectrum`'s.

    >>> import numpy as np
    >>> from mimictheory import stax
    >>> net = stax.serial(stax.Dense(8), *[stax.Relu(), stax.Dense(8)] * 3)
    >>> net.ntk_spectrum(np.random.default_rng(0).normal(size=(5, 3))).eigenvalues.shape
    (4, 5)
    """
    return _in_float64(_ntk_spectrum, self, x, Dense if after is None else after)


@dataclasses.dataclass(frozen=True)
class MeanField:
  """The mean-field maps of one layer of a stacked description (`Network.mean_field`): each
  method is the library's function of the same name at this layer's (activation, σw², σb²,
  norm, fan-in). `norm`: "none", "weight_mean" (fan-in: the hidden width, Lemma 1),
  "batch_norm" (an exact `BatchNorm`: χ1 at `batch` only; the other maps exist only in the
  full-batch limit, so describe that with `BatchNorm(full_batch_limit=True)`) or
  "batch_norm_paper" (Theorem 2).

  >>> from mimictheory import stax
  >>> net = stax.serial(stax.Dense(300, W_std=1.2, b_std=0.3), *[stax.Erf(),
  ...                   stax.Dense(300, W_std=1.2, b_std=0.3)] * 5)
  >>> mf = net.mean_field()
  >>> mf.activation.name, round(mf.sw2, 6), round(mf.sb2, 6), mf.norm
  ('erf', 1.44, 0.09, 'none')
  """
  activation: Activation
  sw2: float
  sb2: float
  norm: str
  fan_in: int | None = None
  batch: int | None = None

  def _args(self):
    return dict(activation=self.activation, sw2=self.sw2, sb2=self.sb2, norm=self.norm,
                fan_in=self.fan_in)

  def _limit_only(self, what):
    if rule(self.norm).exact_batch:
      raise ValueError(f"{what} of an exact BatchNorm() stack: only its full-batch limit is "
                       "computed; describe the network with BatchNorm(full_batch_limit=True)")

  def chi1(self):
    """χ1 (`mimictheory.chi1`); at `batch` for an exact BN stack."""
    from mimictheory._src.maps import chi1
    if rule(self.norm).exact_batch and self.batch is None:
      raise ValueError("chi1 of an exact BatchNorm() stack needs mean_field(batch=B), B >= 4")
    return chi1(**self._args(), batch=self.batch)

  def qstar(self):
    """The variance fixed point q* (`mimictheory.qstar`)."""
    from mimictheory._src.maps import qstar
    self._limit_only("qstar")
    return qstar(**self._args())

  def correlation_map(self, rho):
    """T(ρ) at q* (`mimictheory.correlation_map`)."""
    from mimictheory._src.maps import correlation_map
    self._limit_only("correlation_map")
    return correlation_map(rho, **self._args())

  def fixed_points(self):
    """The correlation map's fixed points and their stability (`mimictheory.fixed_points`)."""
    from mimictheory._src.maps import fixed_points
    self._limit_only("fixed_points")
    return fixed_points(**self._args())

  def depth_scales(self):
    """ξ_q, ξ_c (`mimictheory.depth_scales`)."""
    from mimictheory._src.maps import depth_scales
    self._limit_only("depth_scales")
    return depth_scales(**self._args())

  def phase_diagram(self, sw2=None, sb2=None, **kwargs):
    """The phase diagram over a σw² × σb² grid at this activation, norm and fan-in
    (`mimictheory.phase_diagram`)."""
    from mimictheory._src.phase import phase_diagram
    self._limit_only("phase_diagram")
    return phase_diagram(self.activation, sw2=sw2, sb2=sb2, norm=self.norm,
                         fan_in=self.fan_in, **kwargs)


def _leaves(network):
  if isinstance(network, _Serial):
    return [leaf for layer in network.layers for leaf in _leaves(layer)]
  return [network]


def _mean_field(network, batch):
  layers = _leaves(network)
  def fail(why):
    raise ValueError(f"mean_field needs a stack of identical layers (Dense, then [BatchNorm] "
                     f"activation Dense repeated): {why}")
  if not layers or not isinstance(layers[0], Dense):
    fail("the first layer is not a Dense")
  norms = [layer for layer in layers if isinstance(layer, BatchNorm)]
  period = 3 if norms else 2
  body = layers[1:]
  if not body or len(body) % period:
    fail(f"{len(layers)} layers do not split into a Dense and repeats of {period}")
  kinds = (BatchNorm, Elementwise, Dense) if norms else (Elementwise, Dense)
  for i, layer in enumerate(body):
    if not isinstance(layer, kinds[i % period]):
      fail(f"layer {i + 2} is a {type(layer).__name__}, expected a {kinds[i % period].__name__}")
  dense = [layer for layer in layers if isinstance(layer, Dense)]
  acts = {layer.activation for layer in body if isinstance(layer, Elementwise)}
  if len(acts) != 1:
    fail(f"the activations differ ({', '.join(sorted(a.name for a in acts))})")
  for field in ("W_std", "b_std", "weight_mean"):
    if len({getattr(d, field) for d in dense}) != 1:
      fail(f"the Dense layers' {field} differ")
  if len({n.full_batch_limit for n in norms}) > 1:
    fail("some BatchNorm layers are exact and some the full-batch limit")
  first = dense[0]
  widths = {d.out_dim for d in dense[:-1]}
  if first.weight_mean and len(widths) != 1:
    fail("weight mean with hidden layers of different widths (Lemma 1's factor differs)")
  norm = ("weight_mean" if first.weight_mean else "none") if not norms else (
      "batch_norm_paper" if norms[0].full_batch_limit else "batch_norm")
  if norms and first.weight_mean:
    fail("weight mean and batch norm together")
  fan_in = widths.pop() if first.weight_mean else None
  if batch is not None:
    batch = checks.check_int("batch", batch, minimum=bn.MIN_BATCH_NTK)
  return MeanField(acts.pop(), float(first.W_std) ** 2,
                   0.0 if first.b_std is None else float(first.b_std) ** 2, norm, fan_in, batch)


def _in_float64(fn, network, *args):
  """`fn(network, *args)` in float64 (`precision.float64`). A description whose parameters are
  traced (a user's jax.grad over W_std) is traced as it stands, which needs 64-bit types on
  (`mimictheory.kernels` over a traced sw2 turns them on itself)."""
  if _has_tracers(network):
    if jnp.result_type(float) != jnp.float64:
      raise TypeError("a description with traced parameters (W_std, b_std, alpha under jit, "
                      "grad or vmap) is computed in float64 only with jax_enable_x64 on: "
                      "use `with jax.enable_x64(True):` around the transformation")
    return fn(network, *args)
  return float64(fn)(network, *args)


_COLLECT: contextvars.ContextVar = contextvars.ContextVar("stax_collect", default=None)
_PROGRESS: contextvars.ContextVar = contextvars.ContextVar("stax_progress", default=False)


def _apply(block, k):
  for layer in block:
    k = _record(layer, layer.kernel(k))
  return k


def _is_number(value) -> bool:
  """A layer's numeric parameter (W_std, b_std, alpha, epsilon): a float, a 0-d array or a
  tracer; ints, booleans, activations and None are its structure."""
  if isinstance(value, float) or is_traced(value):
    return True
  return isinstance(value, (np.floating, np.ndarray, jax.Array)) and np.ndim(value) == 0


def _skeleton(layer):
  """The layer's structure without its numbers: equal skeletons differ only in W_std, b_std,
  alpha, ... (blocks that one scan runs, with the numbers as its inputs)."""
  if isinstance(layer, _Combinator):
    return type(layer), tuple(_skeleton(part) for part in layer.layers)
  return type(layer), tuple((f.name, None if _is_number(getattr(layer, f.name))
                             else getattr(layer, f.name)) for f in dataclasses.fields(layer))


def _numbers(layer) -> list:
  """The layer's numeric parameters, in the order of `_skeleton`."""
  if isinstance(layer, _Combinator):
    return [n for part in layer.layers for n in _numbers(part)]
  return [getattr(layer, f.name) for f in dataclasses.fields(layer)
          if _is_number(getattr(layer, f.name))]


def _with_numbers(layer, numbers):
  """`layer` with its numeric parameters taken in order from the iterator `numbers`."""
  if isinstance(layer, _Combinator):
    return dataclasses.replace(layer, layers=tuple(_with_numbers(p, numbers)
                                                   for p in layer.layers))
  changes = {f.name: next(numbers) for f in dataclasses.fields(layer)
             if _is_number(getattr(layer, f.name))}
  return dataclasses.replace(layer, **changes) if changes else layer


def _repeats(layers, i, longest: int = 4):
  """(period, repeats) of the longest run of blocks of at most `longest` layers starting at
  layers[i] that differ only in their numbers (`_skeleton`; repeats 1 if none repeats)."""
  skeletons = [_skeleton(layer) for layer in layers]
  best = (1, 1)
  for period in range(1, longest + 1):
    block = skeletons[i:i + period]
    if len(block) < period:
      break
    repeats = 1
    while skeletons[i + repeats * period:i + (repeats + 1) * period] == block:
      repeats += 1
    if repeats >= 2 and period * repeats > best[0] * best[1]:
      best = (period, repeats)
  return best


def _same_structure(shapes, k) -> bool:
  """The kernel `k` and a block's output (`jax.eval_shape`) have one tree, shapes and dtypes:
  the block can be a scan's body."""
  leaves = jax.tree_util.tree_leaves
  return (jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(k)
          and all(a.shape == b.shape and a.dtype == b.dtype
                  for a, b in zip(leaves(shapes), leaves(k))))


def _scanned(blocks, k):
  """`blocks` (of one skeleton) applied in turn as one `lax.scan` whose inputs are their numbers
  (None if the kernel's structure changes in a block, so that it cannot be a scan's carry).
  Kernels that `layer_kernels` collects inside the blocks come out of the scan stacked and are
  handed on one repeat at a time (`_unstacked`)."""
  first = blocks[0]
  token = _COLLECT.set(None)  # shapes only: collect nothing
  try:
    shapes = jax.eval_shape(lambda kk: _apply(first, kk), k)
  finally:
    _COLLECT.reset(token)
  if not _same_structure(shapes, k):
    return None
  collect = _COLLECT.get()
  numbers = [[n for layer in block for n in _numbers(layer)] for block in blocks]
  xs = jnp.asarray(numbers, dtype=k.nngp.dtype) if numbers[0] else None

  def body(carry, values):
    it = iter([] if values is None else list(values))
    block = [_with_numbers(layer, it) for layer in first]
    if collect is None:
      return _apply(block, carry), None
    found = []
    inner = _COLLECT.set((collect[0], found))
    try:
      carry = _apply(block, carry)
    finally:
      _COLLECT.reset(inner)
    return carry, tuple(found)

  k, stacked = jax.lax.scan(body, k, xs, length=len(blocks))
  if collect is not None:  # unstacked by `_unstacked`, outside any compiled program
    collect[1].append(_Stacked(stacked))
  return k


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Stacked:
  """The kernels a scan collected: a tuple (one per collecting layer in its block) of `Kernel`s
  stacked over the repeats."""
  kernels: tuple


def _unstacked(found) -> list:
  """`found` with every `_Stacked` entry expanded, repeat by repeat, in the order run."""
  out = []
  for item in found:
    if not isinstance(item, _Stacked):
      out.append(item)
      continue
    leaves = jax.tree_util.tree_leaves(item.kernels)
    if not is_traced(leaves):  # slice on the host: one transfer, then views
      item = jax.tree_util.tree_map(np.asarray, item)
    repeats = leaves[0].shape[0] if leaves else 0
    for r in range(repeats):
      out.extend(jax.tree_util.tree_map(lambda a: a[r], k) for k in item.kernels)
  return out


def _record(layer, k):
  """Keep `k` (resolved) if `layer_kernels` is collecting after layers of this class."""
  collect = _COLLECT.get()
  if collect is not None and isinstance(layer, collect[0]):
    collect[1].append(_resolve(k))
  return k


def _has_tracers(network) -> bool:
  """A layer's parameters (W_std, b_std, alpha, ...) are being traced by a transformation."""
  if isinstance(network, _Combinator):
    return any(_has_tracers(layer) for layer in network.layers)
  return dataclasses.is_dataclass(network) and is_traced(
      [getattr(network, f.name) for f in dataclasses.fields(network)])


def _checked(x1, x2, xp=jnp):
  """x1, x2 checked, as float64 arrays of `xp` (jnp, or np for concrete values kept on the
  host): vectors (N, d) or images (N, H, W, C)."""
  ndim = 4 if np.ndim(x1) == 4 else 2
  x1 = xp.asarray(checks.check_data("x1", x1, ndim), xp.float64)
  if x2 is not None:
    x2 = xp.asarray(checks.check_data("x2", x2, ndim), xp.float64)
    if x2.shape[1:] != x1.shape[1:]:
      raise ValueError(f"x2 must have the shape of x1 after the batch axis ({x1.shape[1:]}), "
                       f"got shape {x2.shape}")
  return x1, x2


def _inputs(x1, x2):
  """x1, x2 as float64 (`_checked`) and their pairs of identical inputs."""
  x1, x2 = _checked(x1, x2)
  return x1, x2, _identical(x1, x2)


def _collected(network, x1, x2, same, after, with_ntk):
  found = []
  token = _COLLECT.set((after, found))
  try:
    _run(network, x1, x2, same, with_ntk)
  finally:
    _COLLECT.reset(token)
  return found


_collected_compiled = jax.jit(_collected, static_argnums=(0, 4, 5))


def _layer_kernels(network, x1, x2, after, with_ntk=True):
  x1, x2, same = _inputs(x1, x2)
  traced = is_traced(x1, x2) or _has_tracers(network)
  if network.traceable() and not traced:
    found = _collected_compiled(network, x1, x2, same, after, with_ntk)  # repeats scanned
  else:
    found = _collected(network, x1, x2, same, after, with_ntk)
  found = _unstacked(found)
  if not found:
    raise ValueError(f"after={getattr(after, '__name__', after)!r}: the description has no such "
                     "layer")
  return found


@jax.jit
def _eigenvalues(ntk):
  """Ascending eigenvalues of a stack of NTK Gram matrices (NaN where they overflowed)."""
  return jax.vmap(lambda t: jnp.linalg.eigvalsh(0.5 * (t + t.T)))(ntk)


def _ntk_spectrum(network, x, after):
  kernels = _layer_kernels(network, x, None, after)
  eig = _eigenvalues(jnp.stack([k.ntk for k in kernels]))
  return NTKSpectrum(jnp.arange(len(eig)), eig, condition_numbers(eig, jnp))


def _kernel_fn(network, x1, x2, get, mesh=None, block_size=None, progress=False, out=None,
               dtype="float64"):
  fields = None if get is None else (_check_get(get),) if isinstance(get, str) else tuple(
      _check_get(g) for g in get)
  with_ntk = fields is None or "ntk" in fields
  if block_size is not None:
    block_size = checks.check_int("block_size", block_size, minimum=1)
  if out is not None:
    k = _on_disk(network, x1, x2, with_ntk, out, dtype, mesh, block_size, progress)
    return _fields(k, get, fields)
  x1, x2, same = _inputs(x1, x2)
  traced = is_traced(x1, x2) or _has_tracers(network)
  tiled = (network.traceable() and network.entrywise() and not traced
           and (x1.ndim == 2 or _ends_in_vectors(network, x1)))
  if x1.ndim > 2 and not traced:
    _check_image_memory(network, x1, x2, tiled, block_size)
  if mesh is not None and not tiled:
    why = ("a BatchNorm" if not network.entrywise() else "a numerical activation"
           if not network.traceable() else "traced inputs or parameters")
    raise ValueError("mesh: only descriptions without BatchNorm and with closed-form "
                     f"activations, on concrete values, are computed in tiles that can be "
                     f"sharded (this one has {why}); call kernel_fn without mesh")
  if tiled:
    k = _tiled(network, x1, x2, same, mesh, block_size, progress, with_ntk)
  elif traced:
    k = _run(network, x1, x2, same, with_ntk)  # into the caller's program
  elif network.traceable():
    k = _compiled(network, x1, x2, same, with_ntk)  # one XLA program for the whole description
  else:
    token = _PROGRESS.set(bool(progress))
    try:
      k = _run(network, x1, x2, same, with_ntk)  # eagerly, layer by layer
    finally:
      _PROGRESS.reset(token)
  return _fields(k, get, fields)


def _fields(k, get, fields):
  """What `get` asked for: the `Kernel`, one field, or a namedtuple of fields."""
  if fields is None:
    return k
  if isinstance(get, str):
    return getattr(k, get)
  return collections.namedtuple("Kernel", fields)(*(getattr(k, g) for g in fields))


#: out-of-core tiles of vectors: an edge of 256 (64K entries; 64 tiles, 4M entries, a batch)
DISK_TILE = 256
#: entries (times spatial entries per pair) computed and written per batch of tiles: the
#: unit of resumption and of the division among processes
DISK_BATCH_ENTRIES = ENTRIES_PER_CALL


def _on_disk(network, x1, x2, with_ntk, out, dtype, mesh, block_size, progress) -> Kernel:
  """`kernel_fn(..., out=folder)`: the Gram matrices written tile by tile into the folder."""
  dtype = checks.check_choice("dtype", dtype, out_of_core.DTYPES)
  if is_traced(x1, x2) or _has_tracers(network):
    raise TypeError("out: files are written from concrete values; call kernel_fn(..., out=) "
                    "outside jit/grad/vmap")
  x1, x2 = _checked(x1, x2, np)  # no N × N pairs of identical inputs: tiles pin their own
  if not network.entrywise():
    raise ValueError("out: a description with BatchNorm couples the batch, so its Gram matrix "
                     "is not computed tile by tile; call kernel_fn without out")
  if x1.ndim > 2 and not _ends_in_vectors(network, x1):
    raise ValueError("out: image kernels are written to disk once read out to vectors (a "
                     "Flatten or GlobalAvgPool last); this description keeps the positions")
  per = _entries_per_pair(network, x1)
  # closed forms: 256-edge tiles, 64 a batch, one compiled program; numerical activations are
  # computed eagerly (their Mehler series tabulated per call): one 2048-edge tile a batch
  tile = block_size or (DISK_TILE if per == 1 and network.traceable() else
                        math.isqrt(DISK_BATCH_ENTRIES) if per == 1 else tile_edge(per))
  tile = min(tile, max(x1.shape[0], 0 if x2 is None else x2.shape[0]))  # no more than needed
  if mesh is not None and jax.process_count() > 1:  # each process shards over its own devices
    mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    mesh = jax.sharding.Mesh(np.asarray(mine), mesh.axis_names)
  shards = 1 if mesh is None else mesh.devices.size
  blocks1, blocks2 = -(-x1.shape[0] // tile), -(-(x1 if x2 is None else x2).shape[0] // tile)
  tiles = blocks1 * (blocks1 + 1) // 2 if x2 is None else blocks1 * blocks2
  per_call = min(tiles, max(1, DISK_BATCH_ENTRIES // (tile * tile * per)))
  per_call = -(-per_call // shards) * shards
  names = ("nngp", "ntk") if with_ntk else ("nngp",)
  if network.traceable():
    def tiles_fn(x_rows, x_cols, on_diagonal):
      k = _tiles(network, sharded(x_rows, mesh), sharded(x_cols, mesh),
                 sharded(on_diagonal, mesh), with_ntk)
      return (k.nngp, k.ntk)[:len(names)]
  else:
    if mesh is not None:
      raise ValueError("mesh: a numerical activation is computed eagerly, tile by tile, "
                       "not sharded; call kernel_fn without mesh")

    def tiles_fn(x_rows, x_cols, on_diagonal):
      eye = np.eye(tile, dtype=bool)
      ks = [_run(network, jnp.asarray(a), jnp.asarray(b), jnp.asarray(d & eye), with_ntk)
            for a, b, d in zip(x_rows, x_cols, on_diagonal, strict=True)]
      return tuple(np.stack([np.asarray(getattr(k, f)) for k in ks]) for f in names)

  # the description as it prints, less the addresses of functions (which change per run)
  described = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(network))
  parameters = dict(description=described, x1=_digest(x1),
                    x2=None if x2 is None else _digest(x2))
  paths = out_of_core.write_gram(tiles_fn, x1, x2, out, fields=names, dtype=dtype, tile=tile,
                                 per_call=per_call, parameters=parameters, progress=progress,
                                 process=jax.process_index(), processes=jax.process_count())
  nngp = np.load(paths["nngp"], mmap_mode="r")
  ntk = np.load(paths["ntk"], mmap_mode="r") if with_ntk else None
  rows = _diagonal_moments(network, x1)
  cols = rows if x2 is None else _diagonal_moments(network, x2)
  if x2 is None:  # the pinned diagonal itself
    rows = cols = (out_of_core.diagonal(paths["nngp"]), rows[1], rows[2])
  return Kernel(nngp, ntk, rows[0], cols[0], rows[1], cols[1], None, rows[2], x2 is None)


def _digest(x) -> str:
  import hashlib
  x = np.ascontiguousarray(x, np.float64)
  return f"{x.shape} sha256 {hashlib.sha256(x.view(np.uint8)).hexdigest()}"


def _diagonal_moments(network, x):
  """Each row's own variance and unit mean (None where 0) and the width, by blocks of rows
  (compiled where the description is pure JAX, eagerly otherwise)."""
  if network.traceable():
    per = _entries_per_pair(network, x)
    r = _rows(network, jnp.asarray(x), max(1, min(x.shape[0], (1 << 20) // per)))
    return (np.asarray(r.cov1[:, 0]), None if r.mean1 is None else np.asarray(r.mean1[:, 0]),
            r.width)
  cov, mean, width = [], [], None
  for lo in range(0, x.shape[0], 128):
    part = jnp.asarray(x[lo:lo + 128])
    k = _run(network, part, part, jnp.eye(part.shape[0], dtype=bool), False)
    cov.append(np.asarray(k.cov1))
    mean.append(None if k.mean1 is None else np.asarray(k.mean1))
    width = k.width
  return (np.concatenate(cov), None if mean[0] is None else np.concatenate(mean), width)


def _entries_per_pair(network, x) -> int:
  """The kernel's entries per pair of inputs before the readout: 1 for vectors; for images,
  a value per position ("diagonal") or per pair of positions ("full")."""
  if x.ndim == 2:
    return 1
  positions = math.prod(x.shape[1:-1])
  return positions**2 if network.needs_full_spatial(True) else positions


def _ends_in_vectors(network, x) -> bool:
  """The description reads images out to vectors (a `Flatten` or `GlobalAvgPool`), so its
  Gram matrix has one entry per pair of inputs and can be computed in tiles (traced on one
  input, nothing computed; remembered per description and image shape)."""
  return _output_rank(network, tuple(x.shape[1:])) == 2


@functools.lru_cache(maxsize=256)
def _output_rank(network, image_shape) -> int:
  one = jax.ShapeDtypeStruct((1, *image_shape), jnp.float64)
  return jax.eval_shape(lambda a: _run(network, a, None, None, False).nngp, one).ndim


def _check_image_memory(network, x1, x2, tiled: bool, block_size):
  """Refuse, before any work, image kernels that do not fit: N1 × N2 entries per position
  ("diagonal") or per pair of positions ("full"), several float64 arrays of that size; in
  tiles, those of one tile (the smallest, one pair of inputs, for `block_size` 1)."""
  full = network.needs_full_spatial(True)
  per = _entries_per_pair(network, x1)
  n1 = x1.shape[0]
  n2 = n1 if x2 is None else x2.shape[0]
  arrays = GRAM_ARRAYS + 2
  kind = "pairs of positions" if full else "positions"
  if tiled:
    edge = tile_edge(per) if block_size is None else block_size
    n1, n2 = min(n1, edge), min(n2, edge if x2 is None or per > 1 else n2)
    what, hint = (f"a tile of {n1} x {n2} inputs x {per} {kind}",
                  "use smaller images" if edge == 1 else "use a smaller block_size")
  else:
    what = f"{n1} x {n2} inputs x {per} {kind}"
    hint = "use fewer inputs, smaller images" + (", or a Flatten readout (same-position "
                                                 "covariances only)" if full else "")
  checks.check_memory("kernel_fn", 8.0 * n1 * n2 * per * arrays,
                      f"{what}, {arrays} float64 arrays of that size", hint)


def _run(network, x1, x2, same, with_ntk=True) -> Kernel:
  spatial = None
  if x1.ndim > 2:  # images: the covariances of every pair of positions only where needed
    spatial = "full" if network.needs_full_spatial(True) else "diagonal"
  k = _input_kernel(x1, x2, same, with_ntk, spatial)
  return _resolve(_record(network, network.kernel(k)))


_compiled = jax.jit(_run, static_argnums=(0, 4))


@partial(jax.jit, static_argnums=(0, 4))
def _tiles(network, x_rows, x_cols, on_diagonal, with_ntk):
  """`gram.symmetric_gram`'s tile function: C square tiles, the diagonal ones pinned."""
  def one(xr, xc, diagonal):
    k = _run(network, xr, xc, diagonal & jnp.eye(xr.shape[0], dtype=bool), with_ntk)
    return Kernels(k.nngp, k.ntk)
  return jax.vmap(one)(x_rows, x_cols, on_diagonal)


@partial(jax.jit, static_argnums=(0, 3))
def _block(network, x1, x2, with_ntk):
  k = _run(network, x1, x2, None, with_ntk)
  return Kernels(k.nngp, k.ntk)


@partial(jax.jit, static_argnums=(0, 2))
def _rows(network, x, batch):
  """Each row's own variance and unit mean (a 1 × 1 kernel per row; no NTK), `batch` rows at
  a time (an image's own covariance has (HW)² entries)."""
  return jax.lax.map(lambda row: _run(network, row[None], row[None], jnp.ones((1, 1), bool),
                                      False), x, batch_size=batch)


def _tiled(network, x, x2, same, mesh, block_size, progress, with_ntk) -> Kernel:
  check_gram_memory("kernel_fn", x.shape[0], x.shape[0] if x2 is None else x2.shape[0])
  per = _entries_per_pair(network, x)
  if x2 is None:
    out = symmetric_gram(partial(_tiles, network, with_ntk=with_ntk), np.asarray(x), block_size,
                         mesh, progress, per)
  else:
    out = blocked_gram(partial(_block, network, with_ntk=with_ntk), np.asarray(x),
                       np.asarray(x2), block_size, mesh, progress, per)
  batch = max(1, min(x.shape[0], (1 << 20) // per))
  rows = _rows(network, x, batch)
  cols = rows if x2 is None else _rows(network, x2, max(1, min(x2.shape[0], batch)))
  mean = lambda r: None if r.mean1 is None else r.mean1[:, 0]  # noqa: E731
  nngp = jnp.asarray(out.nngp)
  cov1, cov2 = ((jnp.diagonal(nngp),) * 2 if x2 is None else  # the pinned diagonal itself
                (rows.cov1[:, 0], cols.cov1[:, 0]))
  ntk = None if out.ntk is None else jnp.asarray(out.ntk)
  return Kernel(nngp, ntk, cov1, cov2, mean(rows), mean(cols), same, rows.width, x2 is None)


def _check_get(name):
  if name not in ("nngp", "ntk", "cov1", "cov2"):
    raise ValueError(f"get must name 'nngp', 'ntk', 'cov1' or 'cov2', got {name!r}")
  return name


def _resolve(k: Kernel) -> Kernel:
  """A pending exact BN taken as it stands (no activation after it): φ = identity."""
  return _batch_norm_then(k, 1.0, 0.0) if k.pending_batch_norm else k


# ----------------------------------------------------------------------------------------------
# Dense.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Dense(Network):
  """A fully connected layer in the NTK parameterisation: y = W_std/√n · x W + b_std · b,
  W (n, out_dim) and b (1, out_dim) standard normal (no bias when `b_std` is None).
  `weight_mean=True` centres each output unit's weights over its n inputs (MimicNorm's weight
  mean); see the module docstring for its kernel. `out_dim=None` describes the infinite-width
  layer itself (the theory only: a following weight mean then has Lemma 1's factor 1, and
  `init` refuses it).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> x = np.array([[1.0, 2.0, 3.0]])                     # feature mean 2
  >>> stax.Dense(4, W_std=1.0, b_std=0.5).kernel_fn(x, get="nngp")   # |x|²/3 + 0.25
  array([[4.91666667]])
  >>> stax.Dense(4, weight_mean=True).kernel_fn(x, get="nngp")       # |x - 2|²/3
  array([[0.66666667]])
  """
  out_dim: int | None
  W_std: float = 1.0
  b_std: float | None = None
  parameterization: str = "ntk"
  weight_mean: bool = False

  def __post_init__(self):
    if self.out_dim is not None:
      checks.check_int("out_dim", self.out_dim, minimum=1)
    checks.check_nonnegative("W_std", self.W_std)
    if self.b_std is not None:
      checks.check_nonnegative("b_std", self.b_std)
    checks.check_choice("parameterization", self.parameterization, ("ntk",))
    if self.weight_mean not in (True, False):
      raise TypeError(f"weight_mean must be True or False, got {self.weight_mean!r}")

  def init(self, key, input_shape):
    if self.out_dim is None:
      raise ValueError("Dense(out_dim=None) describes an infinite-width layer (its kernel only); "
                       "give out_dim a width to build the finite network")
    n = input_shape[-1]
    k_w, k_b = jax.random.split(key)
    w = jax.random.normal(k_w, (n, self.out_dim))
    b_shape = (1,) * (len(input_shape) - 1) + (self.out_dim,)  # neural-tangents' layout
    b = jax.random.normal(k_b, b_shape) if self.b_std is not None else None
    return tuple(input_shape[:-1]) + (self.out_dim,), (w, b)

  def apply(self, params, x, rng=None):
    w, b = params
    if self.weight_mean:
      w = w - jnp.mean(w, axis=0, keepdims=True)
    y = self.W_std / math.sqrt(x.shape[-1]) * (x @ w)
    return y if b is None else y + self.b_std * b

  def kernel(self, k: Kernel) -> Kernel:
    k = _resolve(k)
    sw2 = self.W_std**2
    sb2 = 0.0 if self.b_std is None else self.b_std**2
    nngp, cov1, cov2 = k.nngp, k.cov1, k.cov2
    gain = sw2
    if self.weight_mean:
      if not k.mean_known:
        raise ValueError("Dense(weight_mean=True) after BatchNorm() and a non-linear activation: "
                         "the unit mean of φ(BN(h)) at a finite batch is not computed; use "
                         "BatchNorm(full_batch_limit=True) or put the weight mean elsewhere")
      if k.width is not None:
        gain = sw2 * (k.width - 1) / k.width  # Lemma 1's (n-1)/n
      if k.mean1 is not None:
        nngp = nngp - k.rows(k.mean1) * k.cols(k.mean2)
        cov1, cov2 = cov1 - k.own(k.mean1), cov2 - k.own(k.mean2)
    nngp = gain * nngp + sb2
    if k.x1_is_x2:
      cov1 = cov2 = k.diagonal_of(nngp)
    else:
      cov1, cov2 = gain * cov1 + sb2, gain * cov2 + sb2
    ntk = None if k.ntk is None else gain * k.ntk + nngp
    return Kernel(nngp, ntk, cov1, cov2, None, None, k.same, self.out_dim, k.x1_is_x2,
                  spatial=k.spatial)


# ----------------------------------------------------------------------------------------------
# Activations.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Elementwise(Network):
  """An activation applied to every unit: a name of `mimictheory.ACTIVATIONS`, an `Activation`,
  or an elementwise callable (integrated numerically).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> k = stax.serial(stax.Dense(8), stax.Elementwise("tanh")).kernel_fn(np.eye(2), get="nngp")
  >>> round(float(k[0, 1]), 12)   # E[tanh(u) tanh(v)] for uncorrelated u, v
  0.0
  """
  activation: object

  def __post_init__(self):
    object.__setattr__(self, "activation", get_activation(self.activation))

  def init(self, key, input_shape):
    return tuple(input_shape), ()

  def apply(self, params, x, rng=None):
    return self.activation(x)

  def traceable(self) -> bool:
    return self.activation.closed_form

  def kernel(self, k: Kernel) -> Kernel:
    act: Activation = self.activation
    if k.ntk is not None:
      act.require_derivative()  # the NTK needs E[φ'φ']
    if k.pending_batch_norm:
      coefficients = bn.homogeneous_coefficients(act)
      if coefficients is None:
        raise ValueError(
            f"BatchNorm() followed by {act.name!r}: the exact finite-batch kernel is computed "
            "for activations a·x + b·relu(x) (relu, leaky_relu, identity); use "
            "BatchNorm(full_batch_limit=True) (Theorem 2) or mimictheory.batch_norm_kernels' "
            "Monte Carlo estimate")
      return _batch_norm_then(k, *coefficients)
    nngp, deriv, mean1, mean2, cov1, cov2 = _elementwise(act, k)
    ntk = None if k.ntk is None else deriv * k.ntk
    return Kernel(nngp, ntk, cov1, cov2, mean1, mean2, k.same, k.width, k.x1_is_x2,
                  spatial=k.spatial)


def _elementwise(act: Activation, k: Kernel):
  """E[φφ], E[φ'φ'] on the Gram matrix, E[φ] and E[φ²] at the rows' and columns' variances.
  The route: closed forms entrywise; numerical activations by Mehler's series with its
  quadrature fallback (`tables.gram_series`) on concrete values, 2-D quadrature when
  traced. The diagonal of a symmetric kernel is pinned to the one-dimensional moments. Without
  the NTK, E[φ'φ'] is None."""
  q1, q2 = k.cov1, k.cov2
  with_ntk = k.ntk is not None
  if k.spatial is not None:
    return _elementwise_spatial(act, k, with_ntk)
  if not act.closed_form and not is_traced(k.nngp):
    q1n, q2n = (np.maximum(np.asarray(q, np.float64), 1e-16) for q in (q1, q2))
    rho = np.clip(np.asarray(k.nngp) / np.sqrt(np.outer(q1n, q2n)), -1.0, 1.0)
    kern, deriv, m1, m2, _ = tables.gram_series(act, tables.tabulated(act), q1n, q2n, rho,
                                                k.x1_is_x2, with_ntk)
    return (jnp.asarray(kern), jnp.asarray(deriv) if with_ntk else None,
            jnp.asarray(m1[:, 1]), jnp.asarray(m2[:, 1]),
            jnp.asarray(m1[:, 0]), jnp.asarray(m2[:, 0]))
  nngp, rows, cols = k.nngp, q1[:, None], q2[None, :]
  if k.same is not None:  # identical inputs: q12 = q1 (= q2, computed by the same operations
    nngp = jnp.where(k.same, rows, nngp)  # on the same values) to the last bit: ρ = 1 exactly
  kern, deriv = act.kernel_pair(rows, cols, nngp) if with_ntk else (
      act.kernel(rows, cols, nngp), None)
  m1, m2 = act.mean(q1), act.mean(q2)
  s1 = act.second_moment(q1)
  s2 = s1 if k.x1_is_x2 else act.second_moment(q2)
  if k.x1_is_x2:
    eye = jnp.eye(nngp.shape[0], dtype=bool)
    kern = jnp.where(eye, s1[:, None], kern)
    if with_ntk:
      deriv = jnp.where(eye, act.derivative_second_moment(q1)[:, None], deriv)
  return kern, deriv, m1, m2, s1, s2


def _elementwise_spatial(act: Activation, k: Kernel, with_ntk: bool):
  """`_elementwise` on image kernels: the dual activation at every entry (input pair, position
  or pair of positions), with the variances of the two inputs at their positions; each input's
  own covariance ("full": across every pair of its positions) goes through the same map."""
  if not act.closed_form and not is_traced(k.nngp):
    return _numerical_spatial(act, k, with_ntk)
  v1, v2 = k.variances(k.cov1), k.variances(k.cov2)
  rows, cols = k.rows(v1), k.cols(v2)
  nngp = k.nngp
  if k.same is not None:  # identical inputs at one position: ρ = 1 exactly
    nngp = jnp.where(k.batch_mask(k.same), rows, nngp)
  kern, deriv = act.kernel_pair(rows, cols, nngp) if with_ntk else (
      act.kernel(rows, cols, nngp), None)

  def own(cov, v):
    if k.spatial != "full":
      return act.second_moment(v)
    nd = v.ndim - 1
    at_p = v.reshape(v.shape + (1,) * nd)
    at_q = v.reshape(v.shape[:1] + (1,) * nd + v.shape[1:])
    same = k.spatial_eye(nd)
    cov = jnp.where(same, at_p, cov)
    return jnp.where(same, act.second_moment(at_p), act.kernel(at_p, at_q, cov))

  s1 = own(k.cov1, v1)
  s2 = s1 if k.x1_is_x2 else own(k.cov2, v2)
  if k.x1_is_x2:
    eye = k.batch_mask(jnp.eye(nngp.shape[0], dtype=bool))
    kern = jnp.where(eye, k.rows(act.second_moment(v1)), kern)
    if with_ntk:
      deriv = jnp.where(eye, k.rows(act.derivative_second_moment(v1)), deriv)
  return kern, deriv, act.mean(v1), act.mean(v2), s1, s2


def _numerical_spatial(act: Activation, k: Kernel, with_ntk: bool):
  """`_elementwise_spatial` for a numerical activation on concrete values, by Mehler's series
  with its quadrature fallback (`tables.gram_series`, as for vectors): "full", one Gram matrix
  of every (input, position) against every (input, position), (N1·HW) × (N2·HW), and each
  input's own covariance as a (HW) × (HW) matrix; "diagonal", one N1 × N2 matrix per
  position. Traced values take the 2-D quadrature of `Activation.kernel` entry by entry."""
  table = tables.tabulated(act)
  v1, v2 = (np.maximum(np.asarray(k.variances(c), np.float64), 1e-16) for c in (k.cov1, k.cov2))
  n1, n2, positions = v1.shape[0], v2.shape[0], math.prod(v1.shape[1:])
  a1, a2 = v1.reshape(n1, positions), v2.reshape(n2, positions)
  nngp = np.asarray(k.nngp, np.float64)

  def series(m, q1, q2, symmetric, ntk):
    rho = np.clip(m / np.sqrt(np.outer(q1, q2)), -1.0, 1.0)
    kern, deriv = tables.gram_series(act, table, q1, q2, rho, symmetric, ntk)[:2]
    return kern, (deriv if ntk else None)

  if k.spatial == "full":
    by_pair = nngp.reshape(n1, n2, positions, positions).transpose(0, 2, 1, 3)
    kern, deriv = series(by_pair.reshape(n1 * positions, n2 * positions), a1.reshape(-1),
                         a2.reshape(-1), k.x1_is_x2, with_ntk)
    back = lambda a: None if a is None else a.reshape(  # noqa: E731
        n1, positions, n2, positions).transpose(0, 2, 1, 3).reshape(nngp.shape)
    kern, deriv = back(kern), back(deriv)

    def own(cov, a):
      blocks = np.asarray(cov, np.float64).reshape(-1, positions, positions)
      return np.stack([series(b, q, q, True, False)[0] for b, q in zip(blocks, a)]).reshape(
          np.shape(cov))

    s1 = own(k.cov1, a1)
    s2 = s1 if k.x1_is_x2 else own(k.cov2, a2)
  else:
    by_position = nngp.reshape(n1, n2, positions)
    parts = [series(by_position[:, :, p], a1[:, p], a2[:, p], k.x1_is_x2, with_ntk)
             for p in range(positions)]
    kern = np.stack([kp for kp, _ in parts], -1).reshape(nngp.shape)
    deriv = np.stack([dp for _, dp in parts], -1).reshape(nngp.shape) if with_ntk else None
    s1 = act.second_moment(jnp.asarray(v1))
    s2 = s1 if k.x1_is_x2 else act.second_moment(jnp.asarray(v2))
  return (jnp.asarray(kern), None if deriv is None else jnp.asarray(deriv),
          act.mean(jnp.asarray(v1)), act.mean(jnp.asarray(v2)), jnp.asarray(s1),
          jnp.asarray(s2))


def Relu() -> Elementwise:  # noqa: N802 (neural-tangents' names)
  """ReLU, closed form (the arc-cosine kernel of order 1).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> float(stax.serial(stax.Dense(8), stax.Relu()).kernel_fn(np.ones((1, 1)), get="nngp")[0, 0])
  0.5
  """
  return Elementwise(ReLU())


def LeakyRelu(alpha: float = 0.01) -> Elementwise:  # noqa: N802
  """φ(x) = x for x > 0, alpha·x otherwise (neural-tangents' `LeakyRelu(alpha)`).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> k = stax.serial(stax.Dense(8), stax.LeakyRelu(0.5)).kernel_fn(np.ones((1, 1)), get="nngp")
  >>> float(k[0, 0])   # E[φ(z)²] = (1 + 0.25)/2
  0.625
  """
  return Elementwise(LeakyReLU(slope=float(alpha)))


def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Elementwise:  # noqa: N802
  """erf, closed form (Williams 1997). neural-tangents' a·erf(b·x) + c with its defaults only.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> k = stax.serial(stax.Dense(8), stax.Erf()).kernel_fn(np.ones((1, 1)), get="nngp")
  >>> bool(abs(k[0, 0] - 2 / np.pi * np.arcsin(2 / 3)) < 1e-15)   # (2/π) arcsin(2q/(1+2q))
  True
  """
  if (a, b, c) != (1.0, 1.0, 0.0):
    raise ValueError(f"Erf supports a=1, b=1, c=0 (erf(x)); got a={a}, b={b}, c={c}: write "
                     "Elementwise(lambda x: a * jax.scipy.special.erf(b * x) + c)")
  return Elementwise(_Erf())


def Gelu(approximate: bool = False) -> Elementwise:  # noqa: N802
  """GELU x Φ(x), exact (neural-tangents' `Gelu(approximate=False)`).

  >>> from mimictheory import stax
  >>> stax.Gelu().activation.name
  'gelu'
  """
  if approximate:
    raise ValueError("Gelu(approximate=True) is not supported: use approximate=False")
  return Elementwise("gelu")


def Tanh() -> Elementwise:  # noqa: N802
  """tanh, numerical (not in neural-tangents, whose users write ElementwiseNumerical).

  >>> from mimictheory import stax
  >>> stax.Tanh().activation.name
  'tanh'
  """
  return Elementwise("tanh")


def ElementwiseNumerical(fn, deg: int | None = None, df=None) -> Elementwise:  # noqa: N802
  """Any elementwise `fn`, integrated numerically. neural-tangents' signature; `deg` (its
  Gauss-Hermite degree) and `df` are accepted and ignored: mimictheory's rule is adaptive
  (Mehler's series to 1e-11 with a quadrature fallback, `mimictheory.Numerical`).

  >>> import jax, numpy as np
  >>> from mimictheory import stax
  >>> x = np.random.default_rng(0).normal(size=(3, 2))
  >>> ported = stax.serial(stax.Dense(8), stax.ElementwiseNumerical(jax.numpy.tanh, deg=25))
  >>> ours = stax.serial(stax.Dense(8), stax.Tanh())
  >>> bool(np.allclose(ported.kernel_fn(x, get="ntk"), ours.kernel_fn(x, get="ntk"), atol=1e-13))
  True
  """
  return Elementwise(fn)


@dataclasses.dataclass(frozen=True)
class _IdentityLayer(Network):
  def init(self, key, input_shape):
    return input_shape, ()

  def apply(self, params, x, rng=None):
    return x

  def kernel(self, k: Kernel) -> Kernel:
    return k


def Identity() -> Network:  # noqa: N802
  """The identity: the skip path of a residual block.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> float(stax.Identity().kernel_fn(np.full((1, 4), 2.0), get="nngp")[0, 0])   # |x|²/d
  4.0
  """
  return _IdentityLayer()


# ----------------------------------------------------------------------------------------------
# Convolutions, pooling and flattening (images N × H × W × C, channels last).
# ----------------------------------------------------------------------------------------------
PADDINGS = ("VALID", "SAME", "CIRCULAR")


def _pads(size: int, width: int, padding: str) -> tuple[int, int]:
  """Zeros (or wrapped values) before and after an axis of `size` for a filter of `width`:
  none for VALID; for SAME and CIRCULAR width − 1 in all, (width − 1) // 2 before (XLA's
  convention, so an even filter has one more after)."""
  if padding == "VALID":
    return 0, 0
  before = (width - 1) // 2
  return before, width - 1 - before


def _patch_sum(a, lead: int, full: bool, filter_shape, padding: str):
  """Σ over the filter's offsets d of a(p + d) (diagonal: the spatial axes after `lead` batch
  axes) or of a(p + d, p' + d) ("full": both groups of spatial axes shifted together): the
  patch sums that a convolution's kernel is made of, with the input's padding. Separable, one
  spatial axis at a time (k_h + k_w shifted reads instead of k_h k_w)."""
  nd = len(filter_shape)
  groups = 2 if full else 1
  for axis, f in enumerate(filter_shape):
    size = a.shape[lead + axis]
    lo, hi = _pads(size, f, padding)
    axes = [lead + axis + g * nd for g in range(groups)]  # this axis in each group
    if lo or hi:
      widths = [(0, 0)] * a.ndim
      for ax in axes:
        widths[ax] = (lo, hi)
      a = jnp.pad(a, widths, mode="wrap" if padding == "CIRCULAR" else "constant")
    out = size + lo + hi - f + 1
    total = None
    for o in range(f):
      window = [slice(None)] * a.ndim
      for ax in axes:
        window[ax] = slice(o, o + out)
      part = a[tuple(window)]
      total = part if total is None else total + part
    a = total
  return a


@dataclasses.dataclass(frozen=True)
class Conv(Network):
  """A convolution over images (N, H, W, C), channels last, in the NTK parameterisation:
  y(p) = W_std/√(k_h k_w C) Σ_{d, c} x(p + d, c) w(d, c) + b_std b, with w, b ~ N(0, 1) and the
  fan-in k_h k_w C whatever the padding (neural-tangents' `Conv`). `padding`: "VALID"
  (default, as neural-tangents), "SAME" (zeros) or "CIRCULAR" (the image wrapped); stride 1.

  Its kernel (Novak et al. 2019; Garriga-Alonso et al. 2019) sums the input's covariance over
  the filter's offsets, at both positions together:

      K'(p, p') = σw² / (k_h k_w) Σ_d K(p + d, p' + d) + σb²,   Θ' = K' + σw²/(k_h k_w) Σ_d Θ(…)

  so with a `Flatten` readout only same-position covariances are needed (O(N² HW)), with
  `GlobalAvgPool` those of every pair of positions (O(N² (HW)²)); `kernel_fn` computes only
  what the readout needs.

  `weight_mean=True` (MimicNorm on a convolution) centres each output channel's k_h k_w C
  weights: y(p) = Σ_{d,c} w(d, c) (x(p + d, c) − x̄(p)) with x̄(p) the mean of the patch, so
  (Σᵢ (aᵢ − ā)(bᵢ − b̄) = Σᵢ aᵢbᵢ − n ā b̄ over the n = k_h k_w C patch entries)

      K'(p, p') = σw² [ (1/(k_h k_w)) Σ_d K(p + d, p' + d) − m̄(p) m̄'(p') ] + σb²,

  m̄(p) = (1/(k_h k_w)) Σ_d m(p + d) the patch mean of m, the channel mean at each position
  (zero outside the image with SAME padding): exact at the input layer, where m is the data's;
  after an activation m = E[φ] per position, the infinite-width limit (the O(1/C) term
  −Σ_{d,d'} K(p + d, p' + d')/(k_h k_w)² C of a finite C is dropped; Monte Carlo in the tests).
  The NTK passes as without it, Θ' = K' + σw² Σ_d Θ(p + d, p' + d)/(k_h k_w).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> x = np.ones((2, 4, 4, 3))
  >>> net = stax.serial(stax.Conv(8, (3, 3), padding="SAME", W_std=2.0), stax.Flatten())
  >>> k = net.kernel_fn(x, get="nngp")   # 4/9 · (in-image offsets: 4 at a corner, 6, 9) / 16
  >>> round(float(k[0, 0]), 12), round(4 / 9 * (4 * 4 + 8 * 6 + 4 * 9) / 16, 12)
  (2.777777777778, 2.777777777778)
  """
  out_chan: int | None
  filter_shape: tuple
  strides: tuple | None = None
  padding: str = "VALID"
  W_std: float = 1.0
  b_std: float | None = None
  parameterization: str = "ntk"
  weight_mean: bool = False

  def __post_init__(self):
    if self.out_chan is not None:
      checks.check_int("out_chan", self.out_chan, minimum=1)
    if self.weight_mean not in (True, False):
      raise TypeError(f"weight_mean must be True or False, got {self.weight_mean!r}")
    shape = tuple(self.filter_shape) if isinstance(self.filter_shape, (tuple, list)) else None
    if shape is None or len(shape) != 2:
      raise ValueError(f"filter_shape must be a pair (k_h, k_w), got {self.filter_shape!r}")
    for k in shape:
      checks.check_int("filter_shape", k, minimum=1)
    object.__setattr__(self, "filter_shape", shape)
    if self.strides not in (None, (1, 1), [1, 1]):
      raise ValueError(f"strides must be (1, 1) (stride 1), got {self.strides!r}")
    checks.check_choice("padding", self.padding, PADDINGS)
    checks.check_nonnegative("W_std", self.W_std)
    if self.b_std is not None:
      checks.check_nonnegative("b_std", self.b_std)
    checks.check_choice("parameterization", self.parameterization, ("ntk",))

  def _out_shape(self, input_shape):
    if len(input_shape) != 4:
      raise ValueError(f"Conv needs images (N, H, W, C), got input shape {tuple(input_shape)}")
    n, h, w, _ = input_shape
    sizes = []
    for name, size, k in (("H", h, self.filter_shape[0]), ("W", w, self.filter_shape[1])):
      lo, hi = _pads(size, k, self.padding)
      if size + lo + hi < k:
        raise ValueError(f"filter_shape {self.filter_shape} is larger than the image ({name} = "
                         f"{size}) with padding {self.padding!r}")
      sizes.append(size + lo + hi - k + 1)
    return (n, *sizes, self.out_chan)

  def init(self, key, input_shape):
    if self.out_chan is None:
      raise ValueError("Conv(out_chan=None) describes an infinite-width layer (its kernel "
                       "only); give out_chan a width to build the finite network")
    shape = self._out_shape(input_shape)
    k_w, k_b = jax.random.split(key)
    w = jax.random.normal(k_w, (*self.filter_shape, input_shape[-1], self.out_chan))
    b = (jax.random.normal(k_b, (1, 1, 1, self.out_chan)) if self.b_std is not None else None)
    return shape, (w, b)

  def apply(self, params, x, rng=None):
    w, b = params
    if self.weight_mean:  # each output channel's k_h k_w C weights centred
      w = w - jnp.mean(w, axis=(0, 1, 2), keepdims=True)
    kh, kw = self.filter_shape
    pads = [_pads(x.shape[1], kh, self.padding), _pads(x.shape[2], kw, self.padding)]
    if self.padding == "CIRCULAR":
      x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode="wrap")
      pads = [(0, 0), (0, 0)]
    y = jax.lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = self.W_std / math.sqrt(kh * kw * x.shape[-1]) * y
    return y if b is None else y + self.b_std * b

  def kernel(self, k: Kernel) -> Kernel:
    k = _resolve(k)
    if k.spatial is None:
      raise ValueError("Conv needs image inputs (N, H, W, C) and no Flatten or GlobalAvgPool "
                       "before it")
    full = k.spatial == "full"
    nd = k.nngp.ndim - 2
    self._out_shape((1, *k.nngp.shape[2:2 + (nd // 2 if full else nd)], 1))  # fits the image
    area = self.filter_shape[0] * self.filter_shape[1]
    sw2 = self.W_std**2 / area
    sb2 = 0.0 if self.b_std is None else self.b_std**2
    patch = partial(_patch_sum, full=full, filter_shape=self.filter_shape,
                    padding=self.padding)
    nngp, cov1, cov2 = patch(k.nngp, 2), patch(k.cov1, 1), patch(k.cov2, 1)
    if self.weight_mean:
      if not k.mean_known:
        raise ValueError("Conv(weight_mean=True) after BatchNorm() and a non-linear activation: "
                         "the unit mean is not computed")
      if k.mean1 is not None:  # m̄, the patch means of the channel means, times the area
        m1 = _patch_sum(k.mean1, 1, False, self.filter_shape, self.padding) / area
        m2 = _patch_sum(k.mean2, 1, False, self.filter_shape, self.padding) / area
        nngp = nngp - area * k.rows(m1) * k.cols(m2)
        cov1, cov2 = cov1 - area * k.own(m1), cov2 - area * k.own(m2)
    nngp = sw2 * nngp + sb2
    ntk = None if k.ntk is None else sw2 * patch(k.ntk, 2) + nngp
    if k.x1_is_x2:
      cov1 = cov2 = k.diagonal_of(nngp)
    else:
      cov1, cov2 = sw2 * cov1 + sb2, sw2 * cov2 + sb2
    return Kernel(nngp, ntk, cov1, cov2, None, None, k.same, self.out_chan, k.x1_is_x2,
                  spatial=k.spatial)


def _spatial_mean(a, lead: int, full: bool):
  """The mean over positions of the same-position entries (`full`: the diagonal first)."""
  if full:
    nd = (a.ndim - lead) // 2
    shape = a.shape[lead:lead + nd]
    size = math.prod(shape)
    a = jnp.diagonal(a.reshape(a.shape[:lead] + (size, size)), axis1=-2, axis2=-1)
  return a.reshape(a.shape[:lead] + (-1,)).mean(-1)


@dataclasses.dataclass(frozen=True)
class _Flatten(Network):
  def init(self, key, input_shape):
    return (input_shape[0], math.prod(input_shape[1:])), ()

  def apply(self, params, x, rng=None):
    return x.reshape(x.shape[0], -1)

  def needs_full_spatial(self, full_after: bool) -> bool:
    return False

  def kernel(self, k: Kernel) -> Kernel:
    k = _resolve(k)
    if k.spatial is None:
      return k
    full = k.spatial == "full"
    nd = (k.nngp.ndim - 2) // (2 if full else 1)
    positions = math.prod(k.nngp.shape[2:2 + nd])
    mean = lambda m: None if m is None else _spatial_mean(m, 1, False)  # noqa: E731
    width = None if k.width is None else k.width * positions  # units: positions × channels
    return Kernel(_spatial_mean(k.nngp, 2, full),
                  None if k.ntk is None else _spatial_mean(k.ntk, 2, full),
                  _spatial_mean(k.cov1, 1, full), _spatial_mean(k.cov2, 1, full),
                  mean(k.mean1), mean(k.mean2), k.same, width, k.x1_is_x2,
                  mean_known=k.mean_known)


def Flatten() -> Network:  # noqa: N802
  """Every position and channel of an image as one vector (neural-tangents' `Flatten`); its
  kernel is the mean over positions of the same-position covariances, so the layers before it
  need no covariances between positions.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> x = np.random.default_rng(0).normal(size=(3, 4, 4, 2))
  >>> k = stax.Flatten().kernel_fn(x, get="nngp")
  >>> bool(np.allclose(k, x.reshape(3, -1) @ x.reshape(3, -1).T / 32))
  True
  """
  return _Flatten()


@dataclasses.dataclass(frozen=True)
class _GlobalAvgPool(Network):
  def init(self, key, input_shape):
    return (input_shape[0], input_shape[-1]), ()

  def apply(self, params, x, rng=None):
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))

  def needs_full_spatial(self, full_after: bool) -> bool:
    return True

  def kernel(self, k: Kernel) -> Kernel:
    k = _resolve(k)
    if k.spatial is None:
      raise ValueError("GlobalAvgPool needs image inputs (N, H, W, C)")
    mean_all = lambda a, lead: a.reshape(a.shape[:lead] + (-1,)).mean(-1)  # noqa: E731
    mean = lambda m: None if m is None else mean_all(m, 1)  # noqa: E731
    return Kernel(mean_all(k.nngp, 2), None if k.ntk is None else mean_all(k.ntk, 2),
                  mean_all(k.cov1, 1), mean_all(k.cov2, 1), mean(k.mean1), mean(k.mean2),
                  k.same, k.width, k.x1_is_x2, mean_known=k.mean_known)


def GlobalAvgPool() -> Network:  # noqa: N802
  """The mean over positions of every channel (neural-tangents' `GlobalAvgPool`); its kernel is
  the mean of the covariances of every pair of positions, so the layers before it need them.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> x = np.random.default_rng(0).normal(size=(3, 4, 4, 2))
  >>> k = stax.GlobalAvgPool().kernel_fn(x, get="nngp")
  >>> m = x.mean(axis=(1, 2))
  >>> bool(np.allclose(k, m @ m.T / 2))
  True
  """
  return _GlobalAvgPool()


def _window_pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
  """Padding before and after an axis for a window with a stride (XLA's SAME: the output has
  ⌈size / stride⌉ positions; CIRCULAR pads as SAME, with the image wrapped)."""
  if padding == "VALID":
    return 0, 0
  out = -(-size // stride)
  total = max((out - 1) * stride + window - size, 0)
  return total // 2, total - total // 2


def _window_sum(a, lead: int, groups: int, window, strides, padding: str):
  """Σ over each window of `a`'s spatial axes (`groups` groups of them after `lead` batch
  axes, each group pooled the same way): a pooling's sum, with its padding."""
  nd = len(window)
  sizes = a.shape[lead:lead + nd]
  pads = [_window_pads(n, w, s, padding) for n, w, s in zip(sizes, window, strides)]
  if padding == "CIRCULAR":
    a = jnp.pad(a, [(0, 0)] * lead + pads * groups, mode="wrap")
    pads = [(0, 0)] * nd
  return jax.lax.reduce_window(a, 0.0, jax.lax.add, (1,) * lead + tuple(window) * groups,
                               (1,) * lead + tuple(strides) * groups,
                               [(0, 0)] * lead + pads * groups)


@dataclasses.dataclass(frozen=True)
class AvgPool(Network):
  """The mean of each channel over windows of positions (neural-tangents' `AvgPool`):
  `window_shape` (k_h, k_w), `strides` (default (1, 1), as neural-tangents), `padding` "VALID",
  "SAME" (zeros) or "CIRCULAR"; `normalize_edges` divides by the window's positions inside
  the image instead of the window's size (only differs at SAME edges). With VALID, windows
  that do not tile the image leave its last rows or columns out, (H − k_h) // s_h + 1 windows
  down, as XLA and neural-tangents do; with SAME there are ⌈H / s_h⌉, padded evenly (one more
  after). A window larger than the (padded) image is refused.

  Pooling is linear, so its kernel averages the covariance over both windows,
  K'(P, P') = Σ_{d, d'} K(sP + d, sP' + d') / (c(P) c(P')) with c the divisor; the positions
  inside a window are different positions, so the layers before it need the covariances of
  every pair of positions (as for `GlobalAvgPool`). The NTK passes the same way (no
  parameters).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> x = np.random.default_rng(0).normal(size=(3, 4, 4, 2))
  >>> k = stax.serial(stax.AvgPool((2, 2), strides=(2, 2)), stax.Flatten()).kernel_fn(x)
  >>> p = x.reshape(3, 2, 2, 2, 2, 2).mean(axis=(2, 4)).reshape(3, -1)   # the pooled images
  >>> bool(np.allclose(k.nngp, p @ p.T / p.shape[1]))
  True
  """
  window_shape: tuple
  strides: tuple | None = None
  padding: str = "VALID"
  normalize_edges: bool = False

  def __post_init__(self):
    for name in ("window_shape", "strides"):
      value = getattr(self, name)
      if value is None and name == "strides":
        value = (1, 1)
      shape = tuple(value) if isinstance(value, (tuple, list)) else None
      if shape is None or len(shape) != 2:
        raise ValueError(f"{name} must be a pair of positive integers, got {value!r}")
      for v in shape:
        checks.check_int(name, v, minimum=1)
      object.__setattr__(self, name, shape)
    checks.check_choice("padding", self.padding, PADDINGS)
    if self.normalize_edges not in (True, False):
      raise TypeError(f"normalize_edges must be True or False, got {self.normalize_edges!r}")

  def _out_shape(self, input_shape):
    if len(input_shape) != 4:
      raise ValueError(f"AvgPool needs images (N, H, W, C), got input shape "
                       f"{tuple(input_shape)}")
    sizes = []
    for name, size, w, s in zip("HW", input_shape[1:3], self.window_shape, self.strides):
      lo, hi = _window_pads(size, w, s, self.padding)
      if size + lo + hi < w:
        raise ValueError(f"window_shape {self.window_shape} is larger than the image "
                         f"({name} = {size}) with padding {self.padding!r}")
      sizes.append((size + lo + hi - w) // s + 1)
    return (input_shape[0], *sizes, input_shape[-1])

  def _divisor(self, sizes):
    """c(P): the window's size, or (normalize_edges, SAME) its positions inside the image."""
    if not (self.normalize_edges and self.padding == "SAME"):
      return float(math.prod(self.window_shape))
    return _window_sum(jnp.ones(sizes), 0, 1, self.window_shape, self.strides, "SAME")

  def init(self, key, input_shape):
    return self._out_shape(input_shape), ()

  def apply(self, params, x, rng=None):
    self._out_shape(x.shape)
    total = _window_sum(x, 1, 1, self.window_shape + (1,), self.strides + (1,), self.padding)
    c = self._divisor(x.shape[1:3])
    return total / (c if isinstance(c, float) else c[None, :, :, None])

  def needs_full_spatial(self, full_after: bool) -> bool:
    return True

  def kernel(self, k: Kernel) -> Kernel:
    k = _resolve(k)
    if k.spatial != "full":
      raise ValueError("AvgPool needs image inputs (N, H, W, C) and no Flatten or "
                       "GlobalAvgPool before it")
    sizes = k.nngp.shape[2:4]
    self._out_shape((1, *sizes, 1))  # fits the image
    c = self._divisor(sizes)
    pair = c * c if isinstance(c, float) else c[:, :, None, None] * c[None, None]
    pool = lambda a, lead: _window_sum(a, lead, 2, self.window_shape, self.strides,  # noqa: E731
                                       self.padding) / pair
    mean = lambda m: None if m is None else _window_sum(  # noqa: E731
        m, 1, 1, self.window_shape, self.strides, self.padding) / c
    return Kernel(pool(k.nngp, 2), None if k.ntk is None else pool(k.ntk, 2), pool(k.cov1, 1),
                  pool(k.cov2, 1), mean(k.mean1), mean(k.mean2), k.same, k.width, k.x1_is_x2,
                  mean_known=k.mean_known, spatial="full")


# ----------------------------------------------------------------------------------------------
# Batch norm and scalars.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BatchNorm(Network):
  """Each unit normalised over the batch (axis 0): mean 0, variance 1, no affine parameters
  (as at initialisation). Its kernel couples the batch, so `kernel_fn` needs x2=None.

  `full_batch_limit=False` (default): exact at the batch's size, taken together with the
  activation that follows (Yang et al. 2019; `mimictheory.batch_norm`), for a·x + b·relu(x).
  `full_batch_limit=True`: the paper's Theorem 2, K -> H K H / ν with ν the mean centred
  variance (any activation). `epsilon` is added to the batch variance in the finite network.
  On images (N, H, W, C) each channel is normalised over the batch and the positions
  together: BN on a batch of N·HW (input, position) vectors, so both kernels apply to the
  (N·HW)² covariance of every pair of inputs and positions (which BN therefore needs).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> x = np.random.default_rng(0).normal(size=(6, 3))
  >>> k = stax.serial(stax.Dense(8), stax.BatchNorm(), stax.Relu()).kernel_fn(x, get="nngp")
  >>> round(float(np.trace(k)) / 6, 6)   # E[relu(ĥ)²] averaged over the batch: 1/2
  0.5
  """
  full_batch_limit: bool = False
  epsilon: float = 0.0

  def init(self, key, input_shape):
    return input_shape, ()

  def traceable(self) -> bool:
    return self.full_batch_limit

  def entrywise(self) -> bool:
    return False

  def apply(self, params, x, rng=None):
    axes = tuple(range(x.ndim - 1))  # per unit (channel) over the batch (and the positions)
    centred = x - jnp.mean(x, axis=axes, keepdims=True)
    return centred / jnp.sqrt(jnp.mean(centred * centred, axis=axes, keepdims=True)
                              + self.epsilon)

  def needs_full_spatial(self, full_after: bool) -> bool:
    """On images BN centres each channel over the batch and the positions together: it needs
    the covariance of every pair of positions."""
    return True

  def kernel(self, k: Kernel) -> Kernel:
    k = _resolve(k)
    if not k.x1_is_x2:
      raise ValueError("BatchNorm couples the inputs of a batch: call kernel_fn(x, None) with the "
                       "whole batch as x and take the block you need")
    if self.full_batch_limit:
      view = _PositionsAsBatch(k)
      nngp, ntk = bn.normalise_full_batch(view.matrix(k.nngp),
                                          None if k.ntk is None else view.matrix(k.ntk))
      nngp, ntk = view.kernel(nngp), None if ntk is None else view.kernel(ntk)
      q = k.diagonal_of(nngp)
      return Kernel(nngp, ntk, q, q, None, None, k.same, k.width, True, spatial=k.spatial)
    if is_traced(k.nngp):
      raise ValueError("BatchNorm() (exact) needs concrete inputs (its quadrature is chosen from "
                       "the data); under jit use BatchNorm(full_batch_limit=True)")
    return k.replace(pending_batch_norm=True)


@dataclasses.dataclass(frozen=True)
class LayerNorm(Network):
  """Each input normalised over its units (the last axis): mean 0 and variance 1 across units,
  no affine parameters (Ba et al. 2016; neural-tangents' `LayerNorm(axis=-1, eps)`).

  In the infinite-width limit the statistics over units are expectations: with m the unit
  mean and v = q − m² the unit variance of each input, K' = (K − m₁ m₂ᵀ)/√((v₁+ε)(v₂+ε)) and
  Θ' = Θ/√((v₁+ε)(v₂+ε)) (the gradients through m and v are O(1/width)). After a `Dense` m = 0
  and this is neural-tangents' kernel; after an activation the centring matters (tested by
  Monte Carlo); it acts on each input alone, so unlike `BatchNorm` it has cross-kernels.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> round(float(stax.serial(stax.Dense(8, W_std=3.0), stax.LayerNorm()).kernel_fn(
  ...     np.ones((1, 2)), get="nngp")[0, 0]), 9)   # unit variance whatever W_std (ε = 1e-12)
  1.0
  """
  axis: int = -1
  eps: float = 1e-12

  def __post_init__(self):
    if self.axis != -1:
      raise ValueError(f"axis must be -1 (the units), got {self.axis}")
    checks.check_nonnegative("eps", self.eps)

  def init(self, key, input_shape):
    return input_shape, ()

  def apply(self, params, x, rng=None):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    return centred / jnp.sqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)

  def kernel(self, k: Kernel) -> Kernel:
    k = _resolve(k)
    if k.spatial is not None:
      raise ValueError("LayerNorm on images has no kernel here yet; put it after Flatten or "
                       "GlobalAvgPool")
    if not k.mean_known:
      raise ValueError("LayerNorm after BatchNorm() and a non-linear activation: the unit mean "
                       "of φ(BN(h)) at a finite batch is not computed; use "
                       "BatchNorm(full_batch_limit=True)")
    m1 = jnp.zeros_like(k.cov1) if k.mean1 is None else k.mean1
    m2 = jnp.zeros_like(k.cov2) if k.mean2 is None else k.mean2
    s1, s2 = jnp.sqrt(k.cov1 - m1**2 + self.eps), jnp.sqrt(k.cov2 - m2**2 + self.eps)
    scale = 1.0 / (s1[:, None] * s2[None, :])
    nngp = (k.nngp - m1[:, None] * m2[None, :]) * scale
    cov1, cov2 = (k.cov1 - m1**2) / s1**2, (k.cov2 - m2**2) / s2**2
    if k.x1_is_x2:
      nngp = jnp.where(jnp.eye(nngp.shape[0], dtype=bool), cov1[:, None], nngp)
    ntk = None if k.ntk is None else k.ntk * scale
    return Kernel(nngp, ntk, cov1, cov2, None, None, k.same, k.width, k.x1_is_x2)


class _PositionsAsBatch:
  """An image kernel ("full") seen as the kernel of a batch of N·P vectors, one per input and
  position: BN on images normalises each channel over the batch and the positions together,
  which is BN on that batch (so the exact finite-batch theory applies unchanged, at batch
  N·P). Vectors: the kernel itself."""

  def __init__(self, k: Kernel):
    self.n = k.nngp.shape[0]
    self.spatial_shape = k.nngp.shape[2:2 + (k.nngp.ndim - 2) // 2] if k.spatial else ()
    self.positions = math.prod(self.spatial_shape)
    if k.spatial == "diagonal":
      raise ValueError("BatchNorm on images needs the covariances of every pair of positions")
    same = jnp.eye(self.n, dtype=bool) if k.same is None else k.same
    self.same = same if not k.spatial else self.matrix(
        k.batch_mask(same).astype(jnp.float64)).astype(bool)

  def matrix(self, m):
    if not self.spatial_shape:
      return m
    n, p = self.n, self.positions
    return m.reshape(n, n, p, p).transpose(0, 2, 1, 3).reshape(n * p, n * p)

  def kernel(self, m):
    if not self.spatial_shape:
      return m
    n, p = self.n, self.positions
    return m.reshape(n, p, n, p).transpose(0, 2, 1, 3).reshape(
        (n, n) + self.spatial_shape * 2)


def _batch_norm_then(k: Kernel, a, b) -> Kernel:
  """BN (exact, finite batch) then φ = a x + b relu(x): E[φ(ĥ)φ(ĥ)ᵀ] and the NTK term
  E[D J Θ Jᵀ D] by `batch_norm.adaptive_step` (σw² = 1, σb² = 0; error estimate below
  1e-11). On images, at the batch of N·P (input, position) pairs (`_PositionsAsBatch`)."""
  view = _PositionsAsBatch(k)
  size = view.n * view.positions if view.spatial_shape else view.n
  if size < bn.MIN_BATCH_NTK and k.ntk is not None:
    raise ValueError(f"x1 must have at least {bn.MIN_BATCH_NTK} rows (the batch) for the NTK of a "
                     f"network with BatchNorm, got {size} (get='nngp' needs 2)")
  post, theta, _ = bn.adaptive_step(a, b, view.matrix(k.nngp),
                                    None if k.ntk is None else view.matrix(k.ntk), 1.0, 0.0,
                                    view.same)
  post = view.kernel(post)
  theta = None if theta is None else view.kernel(theta)
  q = k.diagonal_of(post)
  # the unit mean of ĥ is 0 (g -> -g); that of φ(ĥ) for a non-linear φ is not computed
  return Kernel(post, None if theta is None else theta - post, q, q, None, None, k.same,
                k.width, True, mean_known=(a, b) == (1.0, 0.0), spatial=k.spatial)


@dataclasses.dataclass(frozen=True)
class Scale(Network):
  """Multiply by a constant `alpha` (a residual branch's scalar at initialisation).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> float(stax.Scale(0.5).kernel_fn(np.ones((1, 1)), get="nngp")[0, 0])
  0.25
  """
  alpha: float

  def init(self, key, input_shape):
    return input_shape, ()

  def apply(self, params, x, rng=None):
    return self.alpha * x

  def kernel(self, k: Kernel) -> Kernel:
    k = _resolve(k)
    a2 = self.alpha**2
    mean = lambda m: None if m is None else self.alpha * m  # noqa: E731
    return k.replace(nngp=a2 * k.nngp, ntk=None if k.ntk is None else a2 * k.ntk,
                     cov1=a2 * k.cov1, cov2=a2 * k.cov2,
                     mean1=mean(k.mean1), mean2=mean(k.mean2))


def norm_layers(norm) -> tuple[bool, list]:
  """A theory norm's place in a description (`norms.rule`): (weight_mean of every `Dense`, the
  layers before each activation: `[BatchNorm()]` exact, `[BatchNorm(full_batch_limit=True)]`
  Theorem 2's, or none).

  >>> from mimictheory import stax
  >>> stax.norm_layers("weight_mean"), stax.norm_layers("bn")
  ((True, []), (False, [BatchNorm(full_batch_limit=False, epsilon=0.0)]))
  """
  r = rule(norm)
  if not r.normalised:
    return r.centred, []
  return False, [BatchNorm(full_batch_limit=not r.exact_batch)]


def mlp(depth: int, activation="relu", sw2=2.0, sb2=0.0, norm: str = "none",
        width: int | None = 512, out_dim: int = 1, input_gain: float = 1.0) -> Network:
  """The library's MLP as a description: `Dense`, then `depth` times [BN] activation `Dense`,
  every `Dense` with W_std = √σw², b_std = √σb², the last with `out_dim` units, the first's
  W_std also times √`input_gain` (K¹ = σw² · input_gain · x·x'/d + σb²; the paper's eq 1 has
  1/2). `norm`: "none", "weight_mean" (every `Dense` centred; `width` is then Lemma 1's
  fan-in), "batch_norm" (exact `BatchNorm()`) or "batch_norm_paper" (`BatchNorm(
  full_batch_limit=True)`). `width=None`: the hidden layers at infinite width (the kernels
  only; no Lemma 1 factor). This is the network of `mimictheory.kernels(x, depth, activation,
  sw2, sb2, norm, fan_in=width, input_gain)`, which calls it. sw2 and sb2 may be traced.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> x = np.random.default_rng(0).normal(size=(5, 3))
  >>> k = stax.mlp(4, "relu", sw2=2.0, sb2=0.0).kernel_fn(x)   # He's init: q stays 2|x|²/d
  >>> bool(np.allclose(np.diag(k.nngp), 2 * (x**2).mean(1), rtol=1e-13))
  True
  >>> k = stax.mlp(4, "relu", sw2=2.0, input_gain=0.5).kernel_fn(x)    # the paper's eq 1
  >>> bool(np.allclose(np.diag(k.nngp), (x**2).mean(1), rtol=1e-13))
  True
  """
  depth = checks.check_int("depth", depth, minimum=1)
  if width is not None:
    width = checks.check_int("width", width, minimum=2)
  sw2 = checks.check_positive("sw2", sw2)
  sb2 = checks.check_nonnegative("sb2", sb2)
  gain = checks.check_positive("input_gain", input_gain)
  root = jnp.sqrt if is_traced(sw2, sb2, gain) else lambda v: math.sqrt(float(v))
  w_std, b_std, w_first = root(sw2), root(sb2), root(sw2 * gain)  # one object each: equal layers
  wm, bn = norm_layers(norm)
  dense = lambda n, w=w_std: Dense(n, W_std=w, b_std=b_std, weight_mean=wm)  # noqa: E731
  act = Elementwise(activation)
  return serial(dense(width, w_first), *[layer for i in range(depth)
                                         for layer in (*bn, act, dense(out_dim if i == depth - 1
                                                                       else width))])


# ----------------------------------------------------------------------------------------------
# Combinators.
# ----------------------------------------------------------------------------------------------
def _as_network(layer) -> Network:
  if not isinstance(layer, Network):
    raise TypeError(f"layers must be mimictheory.stax networks (e.g. stax.Dense(...)), got "
                    f"{type(layer).__name__}; a neural-tangents triple cannot be mixed in")
  return layer


@dataclasses.dataclass(frozen=True)
class _Combinator(Network):
  """What `serial` and `parallel` share: their layers, what those declare, a key each."""
  layers: tuple

  def traceable(self) -> bool:
    return all(layer.traceable() for layer in self.layers)

  def entrywise(self) -> bool:
    return all(layer.entrywise() for layer in self.layers)

  def needs_full_spatial(self, full_after: bool) -> bool:
    """Side by side (`parallel`): full if any branch needs it."""
    return any(layer.needs_full_spatial(full_after) for layer in self.layers)

  def _rngs(self, rng):
    if rng is None:
      return [None] * len(self.layers)
    return jax.random.split(rng, len(self.layers))


@dataclasses.dataclass(frozen=True)
class _Serial(_Combinator):

  def needs_full_spatial(self, full_after: bool) -> bool:
    """One after the other: the need travels from the last layer to the first."""
    for layer in reversed(self.layers):
      full_after = layer.needs_full_spatial(full_after)
    return full_after

  def init(self, key, input_shape):
    params = []
    for layer, k in zip(self.layers, jax.random.split(key, max(len(self.layers), 1))):
      input_shape, p = layer.init(k, input_shape)
      params.append(p)
    return input_shape, params

  def apply(self, params, x, rng=None):
    rngs = self._rngs(rng)
    for layer, p, r in zip(self.layers, params, rngs):
      x = layer.apply(p, x, r)
    return x

  def kernel(self, k: Kernel) -> Kernel:
    """The layers in order. Under a trace, a run of repeats of the same few layers (`[act,
    Dense] * depth`, or residual blocks that differ only in their α) is one `lax.scan` over
    its period, the blocks' numbers its inputs: unrolled, XLA fuses the NNGP and NTK
    chains of every layer into each other's fusions and recomputes them (measured 12x slower
    at depth 10, and 20 s to compile). Eagerly, with a progress bar if `kernel_fn` asked for
    one (the outermost `serial` counts its layers)."""
    layers, i = self.layers, 0
    if not is_traced(k.nngp):
      show = _PROGRESS.get()
      token = _PROGRESS.set(False)  # nested serials: no bar of their own
      try:
        for layer in progress_bar(layers, show, "kernel layers"):
          k = _record(layer, layer.kernel(k))
      finally:
        _PROGRESS.reset(token)
      return k
    while i < len(layers):
      period, repeats = _repeats(layers, i)
      if repeats >= 2:
        blocks = [layers[i + r * period:i + (r + 1) * period] for r in range(repeats)]
        scanned = _scanned(blocks, k)
        if scanned is not None:
          k, i = scanned, i + period * repeats
          continue
        k = _apply(blocks[0], k)  # once unrolled: the kernel takes its steady structure
        i += period
        continue
      k = _record(layers[i], layers[i].kernel(k))
      i += 1
    return k


def serial(*layers) -> Network:
  """The layers one after the other.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
  >>> kernel_fn(np.eye(2), np.eye(2), get="ntk").shape
  (2, 2)
  """
  return _Serial(tuple(_as_network(layer) for layer in layers))


@dataclasses.dataclass(frozen=True)
class _Parallel(_Combinator):

  def init(self, key, input_shape):
    out = [layer.init(k, s) for layer, k, s in
           zip(self.layers, jax.random.split(key, len(self.layers)), input_shape)]
    return [o[0] for o in out], [o[1] for o in out]

  def apply(self, params, x, rng=None):
    rngs = self._rngs(rng)
    return [layer.apply(p, xi, r) for layer, p, xi, r in zip(self.layers, params, x, rngs)]

  def kernel(self, k):
    return [_record(layer, layer.kernel(ki)) for layer, ki in zip(self.layers, k)]


def parallel(*layers) -> Network:
  """Each layer on its own input of a list (after `FanOut`), giving a list.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> net = stax.serial(stax.FanOut(2), stax.parallel(stax.Scale(2.0), stax.Identity()),
  ...                   stax.FanInSum())
  >>> float(net.kernel_fn(np.ones((1, 1)), get="nngp")[0, 0])   # 4 + 1: independent branches
  5.0
  """
  return _Parallel(tuple(_as_network(layer) for layer in layers))


@dataclasses.dataclass(frozen=True)
class _FanOut(Network):
  num: int

  def init(self, key, input_shape):
    return [input_shape] * self.num, ()

  def apply(self, params, x, rng=None):
    return [x] * self.num

  def kernel(self, k):
    return [_resolve(k)] * self.num


def FanOut(num: int) -> Network:  # noqa: N802
  """`num` copies of the input, for `parallel`.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> len(stax.FanOut(3).apply_fn((), np.ones(2)))
  3
  """
  from mimictheory._src import checks
  return _FanOut(checks.check_int("num", num, minimum=1))


@dataclasses.dataclass(frozen=True)
class _FanInSum(Network):
  def init(self, key, input_shape):
    if len({tuple(s) for s in input_shape}) != 1:
      raise ValueError(f"FanInSum needs branches of one shape, got {input_shape}")
    return input_shape[0], ()

  def apply(self, params, x, rng=None):
    return sum(x[1:], x[0])

  def kernel(self, ks):
    ks = [_resolve(k) for k in ks]
    first = ks[0]
    def add(name):
      if getattr(first, name) is None:  # the NTK when it is not computed
        return None
      return sum((getattr(k, name) for k in ks[1:]), getattr(first, name))

    def mean(name):  # None is a mean of 0
      terms = [getattr(k, name) for k in ks if getattr(k, name) is not None]
      return sum(terms[1:], terms[0]) if terms else None

    widths = {k.width for k in ks}
    return Kernel(add("nngp"), add("ntk"), add("cov1"), add("cov2"), mean("mean1"),
                  mean("mean2"), first.same, widths.pop() if len(widths) == 1 else None,
                  first.x1_is_x2, mean_known=all(k.mean_known for k in ks),
                  spatial=first.spatial)


def FanInSum() -> Network:  # noqa: N802
  """The sum of a list of branches (the branches are independent at initialisation, so their
  kernels add, as in neural-tangents).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> stax.FanInSum().apply_fn((), [np.ones(2), np.ones(2)]).tolist()
  [2.0, 2.0]
  """
  return _FanInSum()
