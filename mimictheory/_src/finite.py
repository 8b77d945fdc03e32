"""Finite-width random networks in JAX, and Monte Carlo estimates of the theory's quantities.

`FiniteNetwork` is the architecture that `kernels` describes in the infinite-width limit, in
neural-tangents' NTK parameterisation (parameters ~ N(0, 1), scales in the forward pass):

    h¹ = √(σw² g / d) x W₀ + σb b₀,    hˡ⁺¹ = √(σw² / n) φ(hˡ) Wₗ + σb bₗ,    f = (layer L + 1)

with `norm="weight_mean"` every W replaced by its mean-free version W̄ = W - mean over fan-in
(Lemma 1) and `norm="batch_norm"` a BN over the batch (no affine, no ε) after every hidden dense
layer. Its analytic counterpart is `network.theory_kernels(x)` (`kernels` with fan_in = n):
the exact finite-batch BN theory for "batch_norm", Theorem 2's approximation for
"batch_norm_paper" (the same network). With branch scalars (`finite_network(alpha=...)`) the
network is residual, z ← z + α_l Dense(φ(N(z))), with a linear readout (`residual_kernels`).

Monte Carlo estimates draw many independent networks at once (`jax.lax.map` over keys, vmapped
in batches, no Python loop) and return an `Estimate` (mean, standard error, number of draws).
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src import checks
from mimictheory._src.activations import Activation, get_activation
from mimictheory._src.io import progress_bar
from mimictheory._src.kernels import Kernels, kernels, layer_kernels
from mimictheory._src.maps import (
    BATCH_NORMS, NORMS, Layer, limit_point, solve_qstar, build_layer, stable_sw2)
from mimictheory._src.norms import centre_kernel
from mimictheory._src.precision import f64, float64
from mimictheory._src.signals import Signal, correlation_from_gram, signal_metrics

__all__ = [
    "Params", "FiniteNetwork", "finite_network", "Estimate", "MonteCarloKernels",
    "sample_kernels", "monte_carlo_kernels", "monte_carlo_correlations", "monte_carlo_chi1",
]


# ----------------------------------------------------------------------------------------------
# Results.
# ----------------------------------------------------------------------------------------------
@partial(jax.tree_util.register_dataclass, data_fields=["mean", "se"], meta_fields=["draws"])
@dataclasses.dataclass(frozen=True)
class Estimate:
  """A Monte Carlo mean over `draws` independent networks and its standard error.

  >>> import numpy as np, mimictheory as mt
  >>> net = mt.finite_network("relu", depth=1, width=64)
  >>> est = mt.monte_carlo_kernels(net, np.eye(2), draws=4).nngp
  >>> est.draws, est.mean.shape == est.se.shape
  (4, True)
  """

  mean: np.ndarray
  se: np.ndarray
  draws: int

  @classmethod
  def from_samples(cls, samples) -> "Estimate":
    samples = np.asarray(samples)
    draws = samples.shape[0]
    se = samples.std(axis=0, ddof=1) / math.sqrt(draws) if draws > 1 else np.full(
        samples.shape[1:], np.inf)
    return cls(samples.mean(axis=0), se, draws)

  def z_scores(self, reference) -> np.ndarray:
    """(mean - reference) / se: within a few units where the reference is the true mean.

    Where a quantity does not fluctuate (se at rounding level, e.g. a correlation of an input
    with itself) the score is 0 if the mean equals the reference to rounding, else ∞.
    """
    reference = np.asarray(reference, dtype=float)
    diff = self.mean - reference
    tiny = 1e-12 * np.maximum(1.0, np.abs(reference))
    exact = np.where(np.abs(diff) <= tiny, 0.0, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(self.se > tiny, diff / self.se, exact)


@partial(jax.tree_util.register_dataclass, data_fields=["nngp", "ntk"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class MonteCarloKernels:
  """Monte Carlo NNGP kernel and empirical NTK, each an `Estimate` of shape (N1, N2).

  >>> import numpy as np, mimictheory as mt
  >>> net = mt.finite_network("relu", depth=1, width=64)
  >>> mc = mt.monte_carlo_kernels(net, np.eye(2), draws=4)
  >>> mc.nngp.mean.shape, mc.ntk.mean.shape
  ((2, 2), (2, 2))
  """

  nngp: Estimate
  ntk: Estimate


@partial(jax.tree_util.register_dataclass,
         data_fields=["w_in", "b_in", "w_hidden", "b_hidden", "w_out", "b_out"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Params:
  """Standard-normal parameters: input (d, n), hidden (L-1, n, n) stacked, output (n, k).

  >>> import jax, mimictheory as mt
  >>> params = mt.finite_network("relu", depth=3, width=32).init(jax.random.key(0), 5)
  >>> params.w_in.shape, params.w_hidden.shape
  ((5, 32), (2, 32, 32))
  """

  w_in: jax.Array
  b_in: jax.Array
  w_hidden: jax.Array
  b_hidden: jax.Array
  w_out: jax.Array
  b_out: jax.Array


# ----------------------------------------------------------------------------------------------
# The network.
# ----------------------------------------------------------------------------------------------
def normalise_batch(h):
  """BN over the batch (axis 0), no affine parameters, no ε."""
  centred = h - jnp.mean(h, axis=0, keepdims=True)
  variance = jnp.mean(centred * centred, axis=0, keepdims=True)
  return centred * jax.lax.rsqrt(jnp.maximum(variance, jnp.finfo(h.dtype).tiny))


@dataclasses.dataclass(frozen=True)
class FiniteNetwork:
  """A random fully connected network of width n; build one with `finite_network`.

  Hashable (a static `jit` argument). `depth` hidden layers, `depth + 1` dense layers. The
  methods are plain traceable JAX in the caller's precision (float32 by default, float64 inside
  `jax.enable_x64(True)`); the Monte Carlo functions below always run in float64.

  >>> import mimictheory as mt
  >>> net = mt.finite_network("relu", depth=4, width=128, sw2=None, norm="weight_mean")
  >>> net.depth, net.width, round(net.sw2, 4)   # Theorem 3's σw² at fan-in 128
  (4, 128, 2.957)
  """

  activation: Activation
  norm: str
  depth: int
  width: int
  sw2: float
  sb2: float
  outputs: int = 1
  input_gain: float = 1.0
  alpha: tuple | None = None  # residual branch scalars α_1..α_depth (None: a plain MLP)

  @property
  def residual(self) -> bool:
    return self.alpha is not None

  # -- parameters and forward pass --------------------------------------------------------
  def init(self, key, d: int) -> Params:
    """Standard-normal parameters for inputs of dimension `d`."""
    n, k = self.width, self.outputs
    hidden = self.depth if self.residual else self.depth - 1
    keys = jax.random.split(key, 6)
    normal = jax.random.normal  # the default float type: float64 inside the theory's context
    return Params(normal(keys[0], (d, n)), normal(keys[1], (n,)),
                  normal(keys[2], (hidden, n, n)), normal(keys[3], (hidden, n)),
                  normal(keys[4], (n, k)), normal(keys[5], (k,)))

  def _weight(self, w):
    return centre_kernel(w) if self.norm == "weight_mean" else w

  def _dense(self, w, b, a, gain=1.0):
    scale = jnp.sqrt(self.sw2 * gain / a.shape[-1])
    return scale * (a @ self._weight(w)) + math.sqrt(self.sb2) * b

  def _normalise(self, h):
    return normalise_batch(h) if self.norm in BATCH_NORMS else h

  def _streams(self, params: Params, x):
    """Residual network: the stream entering every block (L, N, n) and the final stream."""
    z = self._dense(params.w_in, params.b_in, x, self.input_gain)

    def block(z, inputs):
      w, b, alpha = inputs
      z_next = z + alpha * self._dense(w, b, self.activation(self._normalise(z)))
      return z_next, z

    alpha = jnp.asarray(self.alpha, dtype=z.dtype)
    last, pre = jax.lax.scan(block, z, (params.w_hidden, params.b_hidden, alpha))
    return pre, last

  def _propagate_residual(self, params: Params, x):
    pre, last = self._streams(params, x)
    scale = jnp.sqrt(self.sw2 / self.width)  # linear readout, not mean-free
    return pre, scale * (last @ params.w_out) + math.sqrt(self.sb2) * params.b_out

  def propagate(self, params: Params, x):
    """(pre-activations of every hidden layer, (L, N, n); outputs, (N, k)) for inputs x.

    For a residual network: the stream entering every block, and the readout."""
    if self.residual:
      return self._propagate_residual(params, x)
    h = self._normalise(self._dense(params.w_in, params.b_in, x, self.input_gain))

    def layer(h, wb):
      h = self._normalise(self._dense(*wb, self.activation(h)))
      return h, h

    last, hidden = jax.lax.scan(layer, h, (params.w_hidden, params.b_hidden))
    pre = jnp.concatenate([h[None], hidden])
    return pre, self._dense(params.w_out, params.b_out, self.activation(last))

  def apply(self, params: Params, x):
    """The network's outputs, (N, k)."""
    return self.propagate(params, x)[1]

  def signal(self, params: Params, x) -> Signal:
    """Signal-propagation metrics of every hidden layer's pre-activations on the batch x."""
    return signal_metrics(self.propagate(params, x)[0])

  # -- kernels of one network -------------------------------------------------------------
  def _readout_inputs(self, a):
    """The output layer's effective input: φ(h^L), centred over units with weight mean."""
    return a - jnp.mean(a, axis=-1, keepdims=True) if self.norm == "weight_mean" else a

  def _joint(self, x1, x2):
    if x2 is None:
      return x1, x1.shape[0]
    if self.norm in BATCH_NORMS:
      raise ValueError(f"x2 must be None with norm={self.norm!r}: BN couples the batch, so "
                       "pass all inputs as x1")
    return jnp.concatenate([x1, x2]), x1.shape[0]

  @staticmethod
  def _split(m, n1, symmetric):
    return m if symmetric else m[:n1, n1:]

  def nngp(self, params: Params, x1, x2=None):
    """The NNGP kernel given the hidden layers: E over the readout of f(x)f(x'), (N1, N2)."""
    x, n1 = self._joint(x1, x2)
    if self.residual:  # linear readout of the final stream
      last = self._streams(params, x)[1]
      return self._split(self.sw2 * (last @ last.T) / self.width + self.sb2, n1, x2 is None)
    pre, _ = self.propagate(params, x)
    a = self._readout_inputs(self.activation(pre[-1]))
    return self._split(self.sw2 * (a @ a.T) / self.width + self.sb2, n1, x2 is None)

  def ntk(self, params: Params, x1, x2=None):
    """The empirical NTK, (N1, N2), traced over the outputs (mean over the k outputs).

    Without BN it is computed layer by layer from forward activations aˡ⁻¹ and backward
    signals δˡ = ∂f/∂hˡ: Θ = Σₗ ⟨δˡ(x), δˡ(x')⟩ ((σw²/fan-in) āˡ⁻¹(x)·āˡ⁻¹(x') + σb²), exact and
    O(L N² n). With BN the batch couples the inputs and the plain Jacobian contraction is used.
    """
    if self.norm in BATCH_NORMS or self.residual:
      return self.ntk_jacobian(params, x1, x2)
    x, n1 = self._joint(x1, x2)
    return self._split(self._ntk_layerwise(params, x), n1, x2 is None)

  def _ntk_layerwise(self, params: Params, x):
    pre, _ = self.propagate(params, x)
    n, scale = self.width, math.sqrt(self.sw2 / self.width)
    x_in = x - jnp.mean(x, axis=-1, keepdims=True) if self.norm == "weight_mean" else x
    acts = self._readout_inputs(self.activation(pre))  # (L, N, n): inputs of dense layers 2..L+1
    grams = jnp.concatenate([
        (self.sw2 * self.input_gain / x.shape[-1] * (x_in @ x_in.T) + self.sb2)[None],
        self.sw2 / n * jnp.einsum("lxi,lyi->lxy", acts, acts) + self.sb2])  # (L+1, N, N)
    slope = self.activation.derivative(pre)  # φ'(hˡ), (L, N, n)
    delta = scale * self._weight(params.w_out).T[None] * slope[-1][:, None, :]  # δᴸ (N, k, n)
    theta = grams[-1] * self.outputs + grams[-2] * jnp.einsum("xoi,yoi->xy", delta, delta)

    def back(carry, inputs):
      delta, theta = carry
      w, phi_prime, gram = inputs
      delta = scale * (delta @ self._weight(w).T) * phi_prime[:, None, :]
      return (delta, theta + gram * jnp.einsum("xoi,yoi->xy", delta, delta)), None

    xs = (params.w_hidden, slope[:-1], grams[:-2])
    (_, theta), _ = jax.lax.scan(back, (delta, theta), xs, reverse=True)
    return theta / self.outputs

  def ntk_jacobian(self, params: Params, x1, x2=None):
    """The empirical NTK as a plain Jacobian contraction J(x) J(x')ᵀ / k (the reference)."""
    x, n1 = self._joint(x1, x2)
    jac = jax.jacrev(lambda p: self.apply(p, x))(params)
    flat = jnp.concatenate([j.reshape(x.shape[0], self.outputs, -1)
                            for j in jax.tree_util.tree_leaves(jac)], axis=-1)
    theta = jnp.einsum("xop,yop->xy", flat, flat) / self.outputs
    return self._split(theta, n1, x2 is None)

  # -- the same architecture as a description ---------------------------------------------
  def description(self):
    """This network as a `stax` description (`stax.mlp`, or the residual network of
    `residual_kernels`): the one its theory is computed from (`theory_kernels`). Its
    `apply_fn` on `description_params(params)` is this network's `apply` (tested).

    >>> import mimictheory as mt
    >>> net = mt.finite_network("relu", depth=2, width=16)
    >>> len(net.description().layers)        # Dense, then [Relu, Dense] twice
    5
    """
    from mimictheory._src import stax
    layer = build_layer(self.activation, self.sw2, self.sb2, self.norm, self.width)
    if self.residual:
      from mimictheory._src.residual import residual_description
      net = residual_description(layer, self.alpha, self.input_gain, self.width)
      head = net.layers[-1]
      return stax.serial(*net.layers[:-1], dataclasses.replace(head, out_dim=self.outputs))
    return stax.mlp(self.depth, self.activation, self.sw2, self.sb2, self.norm,
                    width=self.width, out_dim=self.outputs, input_gain=self.input_gain)

  def description_params(self, params: Params) -> list:
    """`params` laid out as the description's (`description`): one entry per layer."""
    dense = lambda w, b: (w, b[None])  # noqa: E731 (a bias of shape (1, n), as neural-tangents)
    first, last = dense(params.w_in, params.b_in), dense(params.w_out, params.b_out)
    hidden = [dense(w, b) for w, b in zip(params.w_hidden, params.b_hidden)]
    norm = [()] if self.norm in BATCH_NORMS else []
    if self.residual:  # FanOut, parallel(Identity, serial([BN], φ, Dense, Scale)), FanInSum
      return [first, *[[(), [(), [*norm, (), p, ()]], ()] for p in hidden], last]
    return [first, *[q for p in hidden + [last] for q in (*norm, (), p)]]

  # -- theory ---------------------------------------------------------------------------
  @property
  def layer(self) -> Layer:
    """The mean-field layer of this network (fan-in n for the finite-width factor of Lemma 1)."""
    return build_layer(self.activation, self.sw2, self.sb2, self.norm, self.width)

  def theory_kernels(self, x) -> Kernels:
    """The infinite-width NNGP kernel and NTK of this architecture on x (`kernels`)."""
    if self.residual:
      from mimictheory._src.residual import residual_kernels
      out = residual_kernels(x, depth=self.depth, activation=self.activation, sw2=self.sw2,
                             sb2=self.sb2, norm=self.norm, alpha=np.asarray(self.alpha),
                             fan_in=self.width, input_gain=self.input_gain)
      return Kernels(out.nngp, out.ntk)
    return kernels(x, depth=self.depth, activation=self.activation, sw2=self.sw2, sb2=self.sb2,
                   norm=self.norm, fan_in=self.width, input_gain=self.input_gain)

  def theory_correlations(self, x) -> np.ndarray:
    """The infinite-width correlation of every input pair at every hidden layer, (L, N, N); 0
    where an input's variance is 0 (as in `pair_statistics`)."""
    k = layer_kernels(x, depth=self.depth, activation=self.activation, sw2=self.sw2,
                      sb2=self.sb2, norm=self.norm, fan_in=self.width, input_gain=self.input_gain)
    with jax.enable_x64(True):
      return np.asarray(correlation_from_gram(k, np.diagonal(k, axis1=1, axis2=2)))


def finite_network(activation="relu", depth: int = 3, width: int = 512, sw2=2.0, sb2=0.0,
                   norm: str = "none", outputs: int = 1, input_gain: float = 1.0,
                   alpha=None) -> FiniteNetwork:
  """A validated `FiniteNetwork`; `sw2=None` is the stable initialisation for fan-in `width`.

  `alpha` (as in `residual_kernels`: "official", "sqrt", "one", a constant, a sequence or a
  callable) makes it a residual network of `depth` blocks; None is a plain MLP.

  >>> import jax, numpy as np, mimictheory as mt
  >>> net = mt.finite_network("relu", depth=2, width=64, norm="weight_mean", sw2=None)
  >>> round(net.sw2, 4)                                   # Theorem 3 at n = 64
  2.9805
  >>> x = np.random.default_rng(0).normal(size=(4, 8))
  >>> with jax.enable_x64(True):                          # the methods use the caller's precision
  ...     params = net.init(jax.random.key(0), d=8)
  ...     same = np.allclose(net.ntk(params, x), net.ntk_jacobian(params, x), rtol=1e-10)
  >>> same
  True
  """
  act = get_activation(activation)
  checks.check_choice("norm", norm, NORMS)
  depth = checks.check_int("depth", depth, minimum=1)
  width = checks.check_int("width", width, minimum=2)
  outputs = checks.check_int("outputs", outputs, minimum=1)
  sb2 = float(checks.check_nonnegative("sb2", sb2))
  if sw2 is None:
    sw2 = float(stable_sw2(act, sb2=sb2, norm=norm, fan_in=width))
  sw2 = float(checks.check_positive("sw2", sw2))
  gain = float(checks.check_positive("input_gain", input_gain))
  if alpha is not None:
    from mimictheory._src.residual import residual_scalars
    alpha = tuple(float(a) for a in residual_scalars(alpha, depth))
  return FiniteNetwork(act, norm, depth, width, sw2, sb2, outputs, gain, alpha)


# ----------------------------------------------------------------------------------------------
# Monte Carlo over independent draws.
# ----------------------------------------------------------------------------------------------
def _check_net(net):
  if not isinstance(net, FiniteNetwork):
    raise TypeError(f"net must be a FiniteNetwork (see finite_network), got {type(net).__name__}")
  return net


def draw_keys(seed, draws):
  seed = checks.check_int("seed", seed, minimum=0)
  draws = checks.check_int("draws", draws, minimum=2)
  return jax.random.split(jax.random.key(seed), draws)


def draws_per_call(networks_per_call, draws):
  """Networks drawn per compiled call (`networks_per_call`, memory against speed), at most
  `draws`; None: all at once."""
  if networks_per_call is None:
    return draws
  return min(checks.check_int("networks_per_call", networks_per_call), draws)


@partial(jax.jit, static_argnames=("net", "networks_per_call"))
def _kernel_draws(net, x1, x2, keys, networks_per_call):
  def draw(key):
    params = net.init(key, x1.shape[1])
    return net.nngp(params, x1, x2), net.ntk(params, x1, x2)

  return jax.lax.map(draw, keys, batch_size=networks_per_call)


def _run_chunks(fn, keys, batch, progress, desc):
  """`fn(keys)` over chunks of `batch` keys when showing progress, else at once; stacked."""
  if not progress:
    return fn(keys)
  chunks = [keys[i:i + batch] for i in range(0, len(keys), batch)]
  parts = [fn(chunk) for chunk in progress_bar(chunks, True, desc)]
  return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)


@float64
def sample_kernels(net: FiniteNetwork, x1, x2=None, draws: int = 32, seed: int = 0,
                   networks_per_call: int | None = 8, progress: bool = False) -> Kernels:
  """The NNGP kernel and empirical NTK of `draws` independent networks, (draws, N1, N2) each.

  >>> import numpy as np, mimictheory as mt
  >>> net = mt.finite_network("relu", depth=2, width=64)
  >>> k = mt.sample_kernels(net, np.eye(3), draws=2)
  >>> k.nngp.shape   # (draws, N, N)
  (2, 3, 3)
  """
  net = _check_net(net)
  x1 = checks.check_data("x1", x1)
  x2 = None if x2 is None else checks.check_data("x2", x2)
  keys = draw_keys(seed, draws)
  batch = draws_per_call(networks_per_call, draws)
  fn = lambda k: _kernel_draws(net, f64(x1), None if x2 is None else f64(x2), k,  # noqa: E731
                               min(batch, len(k)))
  nngp, ntk = _run_chunks(fn, keys, batch, progress, "networks")
  return Kernels(nngp, ntk)


def monte_carlo_kernels(net: FiniteNetwork, x1, x2=None, draws: int = 32, seed: int = 0,
                        networks_per_call: int | None = 8,
                        progress: bool = False) -> MonteCarloKernels:
  """Monte Carlo NNGP kernel and NTK over `draws` networks, against `net.theory_kernels(x)`.

  >>> import numpy as np, mimictheory as mt
  >>> net = mt.finite_network("relu", depth=1, width=256)
  >>> x = np.random.default_rng(0).normal(size=(3, 5))
  >>> mc = mt.monte_carlo_kernels(net, x, draws=64)
  >>> bool(np.all(np.abs(mc.nngp.z_scores(net.theory_kernels(x).nngp)) < 5))
  True
  """
  samples = sample_kernels(net, x1, x2, draws, seed, networks_per_call, progress)
  return MonteCarloKernels(Estimate.from_samples(samples.nngp), Estimate.from_samples(samples.ntk))


@partial(jax.jit, static_argnames=("net", "networks_per_call"))
def _correlation_draws(net, x, keys, networks_per_call):
  return jax.lax.map(lambda key: net.signal(net.init(key, x.shape[1]), x).correlation, keys,
                     batch_size=networks_per_call)


@float64
def monte_carlo_correlations(net: FiniteNetwork, x, draws: int = 32, seed: int = 0,
                             networks_per_call: int | None = 8) -> Estimate:
  """Correlation of every input pair at every hidden layer, (L, N, N): the empirical T, T̄ maps.

  Compare with `net.theory_correlations(x)`, the correlation map iterated from the inputs.

  >>> import numpy as np, mimictheory as mt
  >>> net = mt.finite_network("relu", depth=3, width=64)
  >>> est = mt.monte_carlo_correlations(net, np.eye(2), draws=4)
  >>> est.mean.shape   # (layers, inputs, inputs)
  (3, 2, 2)
  """
  net = _check_net(net)
  x = checks.check_data("x", x)
  keys = draw_keys(seed, draws)
  per_call = draws_per_call(networks_per_call, draws)
  return Estimate.from_samples(_correlation_draws(net, f64(x), keys, per_call))


@partial(jax.jit, static_argnames=("net", "rows", "networks_per_call"))
def _chi1_draws(net, q, keys, rows, networks_per_call):
  """One layer φ -> dense (-> BN) at the fixed point: (1/n)‖J v‖² per draw, row-averaged.

  J = ∂hˡ⁺¹/∂hˡ of one input; v ~ N(0, I) is a random probe, so E‖J v‖² = ‖J‖²_F (Hutchinson)
  at the cost of one forward-mode product, O(n²) per input rather than O(n³) for J itself.
  With exact BN the map acts on the whole batch (BN -> φ -> dense, gradient through the batch
  statistics) and the estimate is ‖G J v‖² / ‖G hˡ⁺¹‖² for h with batch covariance ∝ G.
  """
  n = net.width

  def draw(key):
    k_h, k_w, k_b, k_v = jax.random.split(key, 4)
    h = jnp.sqrt(q) * jax.random.normal(k_h, (rows, n))
    w, b = jax.random.normal(k_w, (n, n)), jax.random.normal(k_b, (n,))
    dense = lambda a: net._dense(w, b, a)  # noqa: E731
    if net.norm == "batch_norm":  # exact: BN -> φ -> dense, the gradient through the batch
      layer_map = lambda h: dense(net.activation(normalise_batch(h)))  # noqa: E731
      probe = jax.random.normal(k_v, (rows, n))
      out, jv = jax.jvp(layer_map, (h,), (probe,))
      centred = lambda a: a - jnp.mean(a, axis=0, keepdims=True)  # noqa: E731
      # ‖G J v‖² / ‖G y‖²: BN is scale-free, so χ1 is the growth of the centred perturbation
      # relative to the centred signal (h has batch covariance ∝ G, the fixed point).
      return jnp.sum(centred(jv) ** 2) / jnp.sum(centred(out) ** 2)
    # Theorem 2: the batch of `rows` inputs sets the statistics, held fixed.
    scale = (jax.lax.rsqrt(jnp.var(dense(net.activation(h)), axis=0))
             if net.norm == "batch_norm_paper" else jnp.ones(n))
    layer_map = lambda h: scale * dense(net.activation(h))  # noqa: E731
    probe = jax.random.normal(k_v, (rows, n))
    jv = jax.jvp(layer_map, (h,), (probe,))[1]  # row by row: the map acts on rows separately
    return jnp.mean(jnp.sum(jv * jv, axis=1)) / n

  return jax.lax.map(draw, keys, batch_size=networks_per_call)


@float64
def monte_carlo_chi1(net: FiniteNetwork, draws: int = 32, seed: int = 0, rows: int = 16,
                     networks_per_call: int | None = 8) -> Estimate:
  """χ1 from the Jacobian of one layer map hˡ -> hˡ⁺¹ of width n at the variance fixed point.

  χ1 = (1/n) E‖J‖²_F with hˡ ~ N(0, q*) (`rows` inputs per draw, ‖J‖²_F by a random probe;
  at the q -> q* limit where q* is 0 or ∞, as `chi1` does). With `norm="batch_norm"` the
  `rows` inputs are the batch and the Jacobian runs through its mean and variance: compare
  with `chi1(..., norm="batch_norm", batch=rows)`. With `"batch_norm_paper"` the statistics
  are held fixed (Theorem 2's derivative). Compare with `mimictheory.chi1(..., fan_in=n)`.

  >>> import mimictheory as mt
  >>> est = mt.monte_carlo_chi1(mt.finite_network("relu", width=256, sw2=2.0), draws=16)
  >>> abs(float(est.mean) - 1.0) < 4 * float(est.se)                  # Proposition 1: χ1 = 1
  True
  """
  net = _check_net(net)
  rows = checks.check_int("rows", rows, minimum=2)
  keys = draw_keys(seed, draws)
  q = limit_point(net.layer, solve_qstar(net.layer))[0]  # where q* is 0 or ∞: as `chi1` does
  return Estimate.from_samples(_chi1_draws(net, q, keys, rows,
                                           draws_per_call(networks_per_call, draws)))
