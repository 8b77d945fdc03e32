"""Dual activations: Gaussian expectations of an activation φ and of its derivative φ'.

For (u, v) jointly normal with variances q1, q2 and covariance q12, every activation provides

    mean(q)                        E[φ(√q z)]                 z ~ N(0, 1)
    kernel(q1, q2, q12)            E[φ(u) φ(v)]               (the dual activation, paper eq 4)
    derivative_kernel(q1, q2, q12) E[φ'(u) φ'(v)]             (= ∂ kernel / ∂ q12, Price's theorem)

ReLU (Cho & Saul 2009, the arc-cosine kernel), erf (Williams 1997, the arcsin kernel) and the
identity are closed forms. Any other elementwise function is integrated numerically by
`Numerical`: composite Gauss–Legendre on [-cutoff, cutoff] with panel breakpoints at the
function's kinks, so that piecewise-smooth functions such as ReLU converge exponentially too.
All functions broadcast over their arguments and are meant to run in float64.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from functools import partial
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src.precision import float64

__all__ = [
    "Activation", "ReLU", "LeakyReLU", "Erf", "Identity", "Numerical", "GaussLegendre",
    "get_activation",
    "find_kinks", "from_callable",
    "relu_dual",
    "relu_dual_derivative", "ACTIVATIONS",
]

_TWO_PI = 2.0 * math.pi


# ----------------------------------------------------------------------------------------------
# arcsin and arccos in a few nanoseconds: one polynomial, where XLA:CPU's float64 acos/asin
# (an atan2) costs about 19 ms per million entries, 80% of a ReLU or erf Gram-matrix layer.
# ----------------------------------------------------------------------------------------------
# arcsin w = w + Σ_{k≥1} C(2k, k) / (4^k (2k + 1)) w^(2k+1). For |w| ≤ 1/2 the terms after
# k = 24 sum to less than 2e-3 · 4^-25 < 3e-18, far below the rounding of the result (≥ 2.8e-17
# relative), so the cut series is exact to rounding; every term is positive (no cancellation).
_ASIN_SERIES = tuple(math.comb(2 * k, k) / (4.0**k * (2 * k + 1)) for k in range(1, 25))
_HALF_PI = 0.5 * math.pi


def _asin_series(w):
  """arcsin w for |w| ≤ 1/2 (Horner in w²)."""
  z = w * w
  p = _ASIN_SERIES[-1]
  for c in reversed(_ASIN_SERIES[:-1]):
    p = p * z + c
  return w + w * (z * p)


def _asin_acos(x):
  """(arcsin x, arccos x) for x in [-1, 1], to a few ulp, sharing one series evaluation.

  |x| ≤ 1/2: the series at x. |x| > 1/2: the half angle, arccos|x| = 2 arcsin √((1 - |x|)/2),
  whose argument is ≤ 1/2 again; 1 - |x| is exact there (Sterbenz), so arccos x keeps its
  full relative accuracy as x → 1.
  """
  a = jnp.minimum(jnp.abs(x), 1.0)
  small = a <= 0.5
  y = _asin_series(jnp.where(small, x, jnp.sqrt(0.5 * (1.0 - a))))
  asin = jnp.where(small, y, jnp.sign(x) * (_HALF_PI - 2.0 * y))
  acos = jnp.where(small, _HALF_PI - y, jnp.where(x > 0, 2.0 * y, math.pi - 2.0 * y))
  return asin, acos


@jax.custom_jvp
def _root_flat_at_zero(x):
  """√max(x, 0) with derivative 0 at x <= 0 instead of ∞: √(1 - ρ²) at ρ = ±1, where ρ is at
  its maximum and dρ = 0 to first order (see `kernel_duals`)."""
  return jnp.sqrt(jnp.maximum(x, 0.0))


@_root_flat_at_zero.defjvp
def _root_flat_at_zero_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  root = _root_flat_at_zero(x)
  return root, jnp.where(root > 0, 0.5 / jnp.where(root > 0, root, 1.0), 0.0) * t


def root_one_minus_square(x):
  """√(1 - x²) as √((1 - x)(1 + x)), accurate near |x| = 1; 0 outside [-1, 1]."""
  return jnp.sqrt(jnp.maximum((1.0 - x) * (1.0 + x), 0.0))


@jax.custom_jvp
def _arcsin(x):
  """arcsin on [-1, 1] (`_asin_acos`); derivative 1/√(1 - x²)."""
  return _asin_acos(x)[0]


@_arcsin.defjvp
def _arcsin_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return _arcsin(x), t / root_one_minus_square(x)


@jax.custom_jvp
def _arccos(x):
  """arccos on [-1, 1] (`_asin_acos`); derivative -1/√(1 - x²)."""
  return _asin_acos(x)[1]


@_arccos.defjvp
def _arccos_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return _arccos(x), -t / root_one_minus_square(x)


# ----------------------------------------------------------------------------------------------
# ReLU's normalised dual (paper eq 4) with exact derivatives at ρ = ±1.
# ----------------------------------------------------------------------------------------------
@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _duals(rho, flat_at_edges: bool):
  rho = jnp.clip(rho, -1.0, 1.0)
  slope = (math.pi - _asin_acos(rho)[1]) / _TWO_PI
  return root_one_minus_square(rho) / _TWO_PI + slope * rho, slope


@_duals.defjvp
def _duals_jvp(flat_at_edges, primals, tangents):
  (rho,), (t,) = primals, tangents
  value, slope = _duals(rho, flat_at_edges)
  rho = jnp.clip(rho, -1.0, 1.0)
  curvature = 1.0 / (_TWO_PI * root_one_minus_square(rho))
  if flat_at_edges:
    curvature = jnp.where(jnp.abs(rho) < 1.0, curvature, 0.0)
  return (value, slope), (slope * t, curvature * t)


def relu_duals(rho):
  """(φ̂(ρ), φ̂'(ρ)) of ReLU from one arccos: φ̂ = (√(1-ρ²) + (π - arccos ρ) ρ) / (2π) (paper
  eq 4) and φ̂' = (π - arccos ρ) / (2π) = E[1(u>0) 1(v>0)] for unit variances, correlation ρ.

  A custom JVP supplies dφ̂/dρ = φ̂' (finite on all of [-1, 1], where plain autodiff would give
  ∞ - ∞ = NaN at ρ = ±1) and dφ̂'/dρ = 1 / (2π √(1-ρ²)), +∞ at ρ = ±1 (the true one-sided value).
  """
  return _duals(rho, False)


def kernel_duals(rho):
  """`relu_duals` for kernel recursions: dφ̂'/dρ is taken as 0 at ρ = ±1.

  There ρ is at its maximum (identical or opposite inputs, a Gram matrix's diagonal): along any
  path of σw², σb² or inputs dρ = 0 to first order, so the term is ∞ · 0; 0 is its value for
  σw², σb² (ρ stays ±1), and the mean of the two one-sided derivatives for inputs that move
  apart (φ̂' has a kink |ε| there). With ∞ the gradient of an NTK would be NaN.
  """
  return _duals(rho, True)


def _relu_dual(rho):
  """φ̂(ρ), the ReLU dual activation (paper eq 4).

  >>> float(_relu_dual(1.0)), round(float(_relu_dual(0.0)), 6)  # 1/2 and 1/(2π)
  (0.5, 0.159155)
  """
  return relu_duals(rho)[0]


def _relu_dual_derivative(rho):
  """φ̂'(ρ) = (π - arccos ρ) / (2π).

  >>> import mimictheory as mt
  >>> float(mt.relu_dual_derivative(0.0)), float(mt.relu_dual_derivative(1.0))   # (π - arccos ρ)/2π
  (0.25, 0.5)
  """
  return relu_duals(rho)[1]


# Public: float64 NumPy results when called eagerly, traceable (and differentiable) inside jit.
relu_dual = float64(_relu_dual)
relu_dual_derivative = float64(_relu_dual_derivative)


def _inverse_root(q):
  """1/√q, 0 where q = 0."""
  root = jnp.sqrt(q)
  return jnp.where(root > 0, 1.0 / jnp.where(root > 0, root, 1.0), 0.0)


def _correlation(q1, q2, q12):
  """ρ = q12/√(q1 q2) clipped to [-1, 1], and √(q1 q2); ρ = 0 where a variance is 0.

  The square roots are taken of q1 and q2 separately, so that for a Gram matrix (q1 a column,
  q2 a row) they cost O(N) and ρ costs two products per entry. Where q12² = q1 q2 (as for
  q12 = ±q1 = ±q2), ρ = ±1 exactly, with the gradient of the formula: a rounding excursion
  ρ = 1 - 1e-16 would cost √(1 - ρ²) ~ 1e-8 in the arc-cosine kernel.
  """
  rho = q12 * _inverse_root(q1) * _inverse_root(q2)
  norm = jnp.sqrt(q1) * jnp.sqrt(q2)
  edge = (q12 * q12 == q1 * q2) & (q12 != 0)
  sg = jax.lax.stop_gradient
  exact = lambda value, x: sg(value) + (x - sg(x))  # noqa: E731  the value, x's gradient
  rho = jnp.where(edge, exact(jnp.sign(q12), rho), rho)
  norm = jnp.where(edge, exact(jnp.abs(q12), norm), norm)  # √(q q) = q to the last bit
  # Clamp rounding excursions past ±1. Not jnp.clip: its gradient is 1/2 at the boundary, which
  # would halve ∂K/∂q12 at ρ = ±1; `where` passes the full gradient through at ρ = ±1.
  return jnp.where(rho > 1.0, 1.0, jnp.where(rho < -1.0, -1.0, rho)), norm


# ----------------------------------------------------------------------------------------------
# Activations.
# ----------------------------------------------------------------------------------------------
class Activation:
  """Base class. Subclasses are frozen dataclasses (hashable, usable as static jit arguments).

  >>> import mimictheory as mt
  >>> relu = mt.get_activation("relu")
  >>> isinstance(relu, mt.Activation), float(relu.second_moment(1.0))   # E[relu(z)²] = 1/2
  (True, 0.5)
  """

  name: str = "activation"
  #: Degree of positive homogeneity φ(a x) = a^k φ(x), a > 0, or None. With k = 1 the
  #: correlation map does not depend on the variance scale (used when q* is infinite).
  homogeneity: int | None = None
  #: sup φ² for a bounded φ (then q* <= σw² sup φ² + σb² for every σw²: never infinite), or None
  sup_square: float | None = None
  #: What the activation supports, from which the kernels choose their route (in one place:
  #: `stax.Elementwise`, `maps.series_layer`, `phase`): True, its dual is a closed form, exact
  #: entrywise and traceable; False (`Numerical`), integrated numerically: tabulated Mehler
  #: series with a 2-D quadrature fallback on concrete values (`tables.gram_series`), the 2-D
  #: quadrature itself (or the smoothed 1-D rule) under a trace.
  closed_form: ClassVar[bool] = True

  def __call__(self, x):
    raise NotImplementedError

  def derivative(self, x):
    return jnp.vectorize(jax.grad(self.__call__))(x)

  def mean(self, q):
    raise NotImplementedError

  def kernel(self, q1, q2, q12):
    raise NotImplementedError

  def derivative_kernel(self, q1, q2, q12):
    raise NotImplementedError

  def require_derivative(self):
    """Raise ValueError where E[φ'(u)φ'(v)] is not a finite integral (φ jumps): everything
    built on φ' (χ1, the NTK) calls it first. A no-op for activations continuous in x."""

  def check_finite(self, qs, limit: int = 8):
    """Raise ValueError where φ or φ' returns NaN or ∞ at the points the Gaussian integrals at
    the variances `qs` evaluate it (called where a moment came out non-finite). A no-op for
    the closed forms; a user's `Numerical` callable may return NaN."""

  def kernel_pair(self, q1, q2, q12):
    """(kernel, derivative_kernel) in one pass, sharing the work where a closed form allows
    (ReLU: one arccos for both). The NTK recursion needs both at every entry and layer."""
    return self.kernel(q1, q2, q12), self.derivative_kernel(q1, q2, q12)

  def second_moment(self, q):
    """E[φ(√q z)²]."""
    return self.kernel(q, q, q)

  def derivative_second_moment(self, q):
    """E[φ'(√q z)²]."""
    return self.derivative_kernel(q, q, q)

  def variance(self, q):
    """Var[φ(√q z)] = E[φ²] - E[φ]²: the centred second moment used by weight mean and BN."""
    return self.second_moment(q) - self.mean(q) ** 2


@dataclasses.dataclass(frozen=True)
class ReLU(Activation):
  """φ(x) = max(x, 0), closed form (Cho & Saul 2009; paper eq 4).

  >>> import mimictheory as mt
  >>> round(float(mt.get_activation("relu").kernel(1.0, 1.0, 0.0)), 6)  # φ̂(0) = 1/(2π)
  0.159155
  """

  name: str = "relu"
  homogeneity: int | None = 1

  def __call__(self, x):
    return jnp.maximum(x, 0.0)

  def derivative(self, x):
    return (x > 0).astype(jnp.result_type(x, 1.0))

  def mean(self, q):
    return jnp.sqrt(jnp.asarray(q) / _TWO_PI)

  def kernel(self, q1, q2, q12):
    return self.kernel_pair(q1, q2, q12)[0]

  def derivative_kernel(self, q1, q2, q12):
    return self.kernel_pair(q1, q2, q12)[1]

  def kernel_pair(self, q1, q2, q12):
    rho, norm = _correlation(q1, q2, q12)
    value, slope = kernel_duals(rho)
    return norm * value, slope


@dataclasses.dataclass(frozen=True)
class LeakyReLU(Activation):
  """φ(x) = x for x > 0, `slope`·x otherwise; closed form as a x + b relu(x), a = slope, b = 1 - a.

  E[φ(u)φ(v)] = (a² + ab) q12 + b² E[relu(u) relu(v)] (E[u relu(v)] = q12/2), and
  E[φ'(u)φ'(v)] = a² + ab + b² (π - arccos ρ)/(2π). The default slope is `jax.nn.leaky_relu`'s.

  >>> import mimictheory as mt
  >>> act = mt.get_activation("leaky_relu")
  >>> round(float(act.kernel(1.0, 1.0, 1.0)), 12) == round((1 + 0.01**2) / 2, 12)   # E[φ²]
  True
  """

  slope: float = 0.01
  name: str = "leaky_relu"
  homogeneity: int | None = 1

  def __call__(self, x):
    return jnp.where(x > 0, x, self.slope * x)

  def derivative(self, x):
    return jnp.where(x > 0, 1.0, self.slope).astype(jnp.result_type(x, 1.0))

  def mean(self, q):
    return (1.0 - self.slope) * jnp.sqrt(jnp.asarray(q) / _TWO_PI)

  def kernel(self, q1, q2, q12):
    return self.kernel_pair(q1, q2, q12)[0]

  def derivative_kernel(self, q1, q2, q12):
    return self.kernel_pair(q1, q2, q12)[1]

  def kernel_pair(self, q1, q2, q12):
    a, b = self.slope, 1.0 - self.slope
    rho, norm = _correlation(q1, q2, q12)
    value, slope = kernel_duals(rho)
    return (a * a + a * b) * rho * norm + b * b * norm * value, a * a + a * b + b * b * slope


@dataclasses.dataclass(frozen=True)
class Erf(Activation):
  """φ(x) = erf(x), closed form (Williams 1997):
  E[φ(u)φ(v)] = (2/π) arcsin(2 q12 / √((1+2q1)(1+2q2))).

  >>> import mimictheory as mt
  >>> import math
  >>> round(float(mt.chi1(mt.Erf(), sw2=math.pi / 4, sb2=0.0)), 12)   # critical at (π/4, 0)
  1.0
  """

  name: str = "erf"
  sup_square = 1.0

  def __call__(self, x):
    return jax.scipy.special.erf(x)

  def derivative(self, x):
    return 2.0 / math.sqrt(math.pi) * jnp.exp(-jnp.square(x))

  def mean(self, q):
    return jnp.zeros_like(jnp.asarray(q, dtype=float))

  def second_moment(self, q):
    # (2/π) arcsin(2q/(1+2q)) = (2/π) arctan(2q/√(1+4q)): no cancellation in the value or in
    # its derivative at any q (the variance map's Newton step needs V' at q* ~ σw² = 1e300;
    # the Gram form's 1 - x lost 4 digits of χ1 at q = 1e12).
    q = jnp.asarray(q, dtype=float)
    return 2.0 / jnp.pi * jnp.arctan(2.0 * q / jnp.sqrt(1.0 + 4.0 * q))

  def derivative_second_moment(self, q):
    return 4.0 / jnp.pi / jnp.sqrt(1.0 + 4.0 * jnp.asarray(q, dtype=float))

  def kernel(self, q1, q2, q12):
    return self.kernel_pair(q1, q2, q12)[0]

  def derivative_kernel(self, q1, q2, q12):
    return self.kernel_pair(q1, q2, q12)[1]

  def kernel_pair(self, q1, q2, q12):
    # x = 2 q12 / √((1+2q1)(1+2q2)), with the square roots taken per variance (O(N) for a Gram
    # matrix). E[exp(-u²-v²)] = det(I + 2Σ)^(-1/2) = g1 g2 / √(1 - x²), times (2/√π)². (The
    # one-dimensional moments, which q* and χ1 use, have their own forms below, exact at any
    # q; here 1 - x loses digits only where q > ~1e6 and ρ ~ 1, the price of the fast path.)
    g1, g2 = 1.0 / jnp.sqrt(1.0 + 2.0 * q1), 1.0 / jnp.sqrt(1.0 + 2.0 * q2)
    x = 2.0 * q12 * g1 * g2
    # √(1/w), not 1/√w: XLA rewrites the latter as rsqrt, 3x slower in float64 on CPU.
    inverse = jnp.sqrt(1.0 / jnp.maximum((1.0 - x) * (1.0 + x), 0.0))
    return 2.0 / jnp.pi * _arcsin(x), 4.0 / jnp.pi * g1 * g2 * inverse


@dataclasses.dataclass(frozen=True)
class Identity(Activation):
  """φ(x) = x: a linear network (kernel = q12).

  >>> import mimictheory as mt
  >>> float(mt.correlation_map(0.3, mt.Identity(), sw2=1.0))   # a linear layer keeps ρ
  0.3
  """

  name: str = "identity"
  homogeneity: int | None = 1

  def __call__(self, x):
    return x

  def derivative(self, x):
    return jnp.ones_like(x)

  def mean(self, q):
    return jnp.zeros_like(jnp.asarray(q, dtype=float))

  def kernel(self, q1, q2, q12):
    return (
      jnp.broadcast_to(q12, jnp.broadcast_shapes(jnp.shape(q1), jnp.shape(q2), jnp.shape(q12)))
      * 1.0
    )

  def derivative_kernel(self, q1, q2, q12):
    return jnp.ones(jnp.broadcast_shapes(jnp.shape(q1), jnp.shape(q2), jnp.shape(q12)))


#: above this variance a saturating `Numerical` φ uses its large-q expansion (`saturation`)
Q_ASYMPTOTIC = 1e12

# Breakpoints around a feature of φ (its transition region or a kink), in units of `scale`:
# geometric, so that panels follow the integrand at every variance q (in z the feature has
# width scale/√q, from far wider than the cutoff at q = 1e-8 to 1e-4 at q = 1e8).
_GEOMETRIC = 2.0 ** np.arange(-4, 7)
_REFINE = 2.0 ** np.arange(-2, 7)  # around a feature smoothed by the inner integral


@dataclasses.dataclass(frozen=True)
class GaussLegendre:
  """The quadrature rule of a `Numerical` activation's Gaussian integrals: abs(z) <= `cutoff` (the
  neglected mass is below e^(-cutoff²/2), 2e-22 by default) in `panels` equal panels plus the
  activation's own breakpoints, `order` Gauss–Legendre nodes each; `chunk` evaluations of a
  2-D integral per vectorised call (memory: chunk × nodes² doubles).

  >>> import numpy as np
  >>> from mimictheory import GaussLegendre
  >>> z, w = GaussLegendre(panels=8, order=6).panel_nodes(np.linspace(-10.0, 10.0, 9))
  >>> round(float(w.sum()), 12)      # the N(0, 1) mass of [-10, 10]
  1.0
  """
  panels: int = 32
  order: int = 10
  cutoff: float = 10.0
  chunk: int = 64

  def panel_nodes(self, breaks, order=None):
    """Nodes and weights (including the N(0,1) density) of composite GL on sorted `breaks`."""
    x, w = np.polynomial.legendre.leggauss(order or self.order)
    # Fixed nodes under differentiation: the Gaussian measure in z does not depend on q, so the
    # derivative is the rule applied to the integrand's derivative (breakpoints only steer
    # accuracy; their derivative would be 1/√(1-ρ²)-singular at ρ = ±1).
    breaks = jax.lax.stop_gradient(breaks)
    lo, hi = breaks[:-1, None], breaks[1:, None]
    half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
    z = (mid + half * x).reshape(-1)
    weights = (half * w).reshape(-1) * jnp.exp(-0.5 * z**2) / math.sqrt(_TWO_PI)
    return z, weights

  def breaks(self, extra, cutoff=None, panels=None):
    """Sorted panel edges: the uniform ones and `extra` (clipped to the cutoff)."""
    cutoff = cutoff or self.cutoff
    uniform = jnp.linspace(-cutoff, cutoff, (panels or self.panels) + 1)
    extra = jnp.clip(jnp.asarray(extra).reshape(-1), -cutoff, cutoff)
    return jnp.sort(jnp.concatenate([uniform, extra]))


@dataclasses.dataclass(frozen=True)
class Numerical(Activation):
  """Any elementwise φ, integrated by composite Gauss–Legendre quadrature.

  What φ must satisfy: piecewise smooth (analytic between finitely many `kinks`, where φ or φ'
  may jump), growing at most polynomially, with its smooth transition region within a few
  `scale` of 0 or of a kink. Then every expectation is accurate to about 1e-12 relative for
  any variance q in [1e-8, 1e8] (tested against scipy).

  The activation holds what φ is (its function, kinks, jumps, scale, derivative, smoothing);
  `rule`, a `GaussLegendre`, holds how its Gaussian integrals are computed: truncated to
  abs(z) <= cutoff and split into equal panels of Gauss–Legendre nodes, plus breakpoints that
  scale with √q: at every kink, and geometrically spaced (`scale`·2^j, j = -4
  .. 6) around 0 and around every kink, where φ(√q z) changes over a width scale/√q in z. For
  E[φ(u)φ(v)] the inner integral's breakpoints move with the outer node, and the outer rule is
  refined where the inner integral turns steep, so a kink costs no accuracy.

  `smoothed(x, v)`, optional: φ smoothed by Gaussian noise in closed form, the pair
  (E[φ(x + √v z)], E[φ'(x + √v z)]). With it E[φ(u)φ(v)] and E[φ'(u)φ'(v)] are exact
  one-dimensional integrals (`_expect_smoothed`), about 100x cheaper than the 2-D rule (GELU).

  `derivative` defaults to `jax.grad(fn)`. `jumps` lists discontinuities of φ itself: the
  kernel is then still exact (they are breakpoints), but φ' has a Dirac delta there, so
  `derivative_kernel` (and the NTK) is refused. A callable passed to `get_activation` is
  scanned for kinks and jumps (`find_kinks`), which are added with a warning.

  >>> import jax, mimictheory as mt
  >>> relu = mt.Numerical(jax.nn.relu, name="relu_q", kinks=(0.0,))
  >>> abs(float(relu.kernel(1.0, 1.0, 0.3) - mt.ReLU().kernel(1.0, 1.0, 0.3))) < 1e-12
  True
  """

  fn: Callable = jnp.tanh
  name: str = "numerical"
  kinks: tuple = ()
  derivative_fn: Callable | None = None
  scale: float = 1.0
  jumps: tuple = ()
  smoothed: Callable | None = None
  rule: GaussLegendre = GaussLegendre()
  closed_form: ClassVar[bool] = False

  def __post_init__(self):
    kinks = tuple(sorted(set(float(k) for k in tuple(self.kinks) + tuple(self.jumps))))
    object.__setattr__(self, "kinks", kinks)
    object.__setattr__(self, "jumps", tuple(float(k) for k in self.jumps))
    if not self.scale > 0:
      raise ValueError(
        f"scale must be > 0 (the width of φ's transition region), got {self.scale!r}"
      )
    check_elementwise(self.fn, self.name)

  def __call__(self, x):
    return self.fn(x)

  def derivative(self, x):
    if self.derivative_fn is not None:
      return self.derivative_fn(x)
    # The barrier makes x one value: XLA may otherwise recompute x = √q z in two fusions with
    # different FMA contraction, and JAX's derivative of jnp.maximum / jnp.minimum compares its
    # input with its output for equality, so φ = max(u, 0.3u) got φ' = 0 at some nodes.
    return jnp.vectorize(jax.grad(self.fn))(jax.lax.optimization_barrier(x))

  # -- quadrature rules ------------------------------------------------------------------------
  def breakpoints(self) -> np.ndarray:
    """Breakpoints in pre-activation units: the kinks, and geometric points around the features."""
    features = np.array((0.0,) + self.kinks)
    offsets = self.scale * np.concatenate([-_GEOMETRIC[::-1], _GEOMETRIC])
    return np.unique(np.concatenate([features, (features[:, None] + offsets).reshape(-1)]))

  def _at(self, points, scale):
    """Positions in z where φ(scale·z) has the pre-activation `points` (clipped later).

    `scale` may be negative (scale = √q2 ρ for the inner integral's features when ρ < 0)."""
    safe = jnp.where(jnp.abs(scale) > 1e-300, scale, 1e-300)
    return jnp.asarray(points) / safe

  def nodes_1d(self, q, cutoff=None, panels=None, order=None):
    """Nodes z and weights (with the density) for E[f(√q z)], scalar q."""
    breaks = self.rule.breaks(self._at(self.breakpoints(), jnp.sqrt(q)), cutoff, panels)
    return self.rule.panel_nodes(breaks, order)

  def _expect_1d(self, f, q):
    """E[f(√q z)] for scalar q."""
    z, w = self.nodes_1d(q)
    return jnp.sum(w * f(jnp.sqrt(q) * z))

  def _expect_2d(self, f, g, q1, q2, q12):
    """E[f(u) g(v)] for scalar (q1, q2, q12): u = √q1 z1, v = √q2 (ρ z1 + √(1-ρ²) z2)."""
    rho, _ = _correlation(q1, q2, q12)
    s1, s2 = jnp.sqrt(q1), jnp.sqrt(q2)
    c = _root_flat_at_zero(1.0 - rho**2)
    points = self.breakpoints()
    # Outer breakpoints: φ's own in z1, and where the inner integral, a function of s2 ρ z1,
    # has φ's features smoothed over a width s2 c, so refine there too.
    features = jnp.asarray((0.0,) + self.kinks)[:, None]
    smoothed = features + jnp.concatenate([-_REFINE, _REFINE]) * s2 * c
    outer_extra = jnp.concatenate([self._at(points, s1), self._at(points, s2 * rho),
                                   self._at(smoothed.reshape(-1), s2 * rho)])
    z1, w1 = self.rule.panel_nodes(self.rule.breaks(outer_extra))

    def inner(z1_k):
      # φ's breakpoints in z2 sit where ρ z1 + c z2 = x / √q2.
      extra = (self._at(points, s2) - rho * z1_k) / jnp.maximum(c, 1e-300)
      z2, w2 = self.rule.panel_nodes(self.rule.breaks(extra))
      return jnp.sum(w2 * g(s2 * (rho * z1_k + c * z2)))

    return jnp.sum(w1 * f(s1 * z1) * jax.vmap(inner)(z1))

  def _expect_smoothed(self, which: int, q1, q2, q12):
    """E[f(u) f(v)] for scalar (q1, q2, q12), f = φ (which = 0) or φ' (1), as a 1-D integral.

    Write u = α z + β z1, v = γ z + δ z2 with z, z1, z2 independent N(0, 1): αγ = q12,
    α² = √(q1/q2) |q12|, β² = q1 - α², δ² = q2 - γ² (both ≥ 0 since q12² ≤ q1 q2). Then
    E[f(u) f(v)] = E_z[F(α z; β²) F(γ z; δ²)], F(x; s) = E[f(x + √s z1)] = `smoothed(x, s)`.
    F(·; β²) changes over a width √(scale² + β²) around φ's features, so the breakpoints in z
    sit at those widths divided by α (and γ).
    """
    root = jnp.sqrt(q1) * jnp.sqrt(q2)
    a2 = jnp.where(root > 0, q1 * jnp.abs(q12) / jnp.where(root > 0, root, 1.0), 0.0)
    alpha = jnp.sqrt(a2)
    gamma = jnp.where(alpha > 0, q12 / jnp.where(alpha > 0, alpha, 1.0), 0.0)
    b2, d2 = jnp.maximum(q1 - a2, 0.0), jnp.maximum(q2 - gamma**2, 0.0)
    features = jnp.asarray((0.0,) + self.kinks)[:, None]
    steps = np.concatenate([-_GEOMETRIC[::-1], [0.0], _GEOMETRIC])
    width = lambda var: jnp.sqrt(self.scale**2 + var)  # noqa: E731
    extra = jnp.concatenate([self._at(features + steps * width(b2), alpha).reshape(-1),
                             self._at(features + steps * width(d2), gamma).reshape(-1)])
    z, w = self.rule.panel_nodes(self.rule.breaks(extra))
    return jnp.sum(w * self.smoothed(alpha * z, b2)[which] * self.smoothed(gamma * z, d2)[which])

  def _map_2d(self, f, g, q1, q2, q12, which=None):
    q1, q2, q12 = jnp.broadcast_arrays(*(jnp.asarray(a, dtype=float) for a in (q1, q2, q12)))
    shape = q1.shape
    flat = [a.reshape(-1) for a in (q1, q2, q12)]
    if self.smoothed is not None and which is not None:
      out = jax.lax.map(lambda a: self._expect_smoothed(which, *a), flat,
                        batch_size=16 * self.rule.chunk)
    else:
      out = jax.lax.map(lambda a: self._expect_2d(f, g, *a), flat, batch_size=self.rule.chunk)
    return out.reshape(shape)

  def _map_1d(self, f, q):
    q = jnp.asarray(q, dtype=float)
    out = jax.lax.map(lambda a: self._expect_1d(f, a), q.reshape(-1),
                      batch_size=4 * self.rule.chunk)
    return out.reshape(q.shape)

  def check_finite(self, qs, limit: int = 8):
    """Raise ValueError naming the activation, the value and x if φ or φ' is NaN or infinite
    at a quadrature node of E[f(√q z)] for the first `limit` variances in `qs`. A moment that
    merely overflows float64 (φ growing like e^x) passes."""
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
      for q in np.asarray(qs, dtype=float).reshape(-1)[:limit]:
        x = np.asarray(jnp.sqrt(q) * self.nodes_1d(q)[0])
        for what, values in (("φ", self.fn(jnp.asarray(x))),
                             ("φ'", self.derivative(jnp.asarray(x)))):
          values = np.asarray(values)
          bad = ~np.isfinite(values)
          if bad.any():
            where = x[bad][np.argmin(np.abs(x[bad]))]
            raise ValueError(
                f"activation {self.name!r}: {what} returned {values[bad][0]} at x = "
                f"{where:.6g} (a quadrature node of the Gaussian integrals at variance "
                f"q = {q:.3g}); an activation must be finite, with a finite derivative, on "
                "the whole real line")

  def require_derivative(self):
    if self.jumps:
      raise ValueError(
          f"activation {self.name!r} jumps at x = {', '.join(f'{j:g}' for j in self.jumps)}: its "
          "derivative has a Dirac delta there, so E[φ'(u)φ'(v)] and the NTK are not finite "
          "integrals (infinite at ρ = 1); only the NNGP kernel is defined")

  # -- large variances: the asymptotic expansion for saturating φ ------------------------------
  @functools.cached_property
  def saturation(self):
    """For φ that tends to limits L± at ±∞ faster than any power (tanh, erf, sigmoid), the
    coefficients of the large-q expansion of the one-dimensional moments, else None.

    For g integrable, E[g(√q z)] = (1/√(2πq)) Σ_k (-1/(2q))^k / k! ∫ u^(2k) g(u) du. With
    g = φ - L_sign(u) for E[φ] (and φ² - L² for E[φ²], φ'² for E[φ'²]):

        E[φ]   = (L+ + L-)/2   + (A0 - A2/(2q)) / √(2πq) + O(q^(-5/2)),
        E[φ²]  = (L+² + L-²)/2 + (B0 - B2/(2q)) / √(2πq) + O(q^(-5/2)),
        E[φ'²] =                 (C0 - C2/(2q)) / √(2πq) + O(q^(-5/2)),

    A_j = ∫ u^j (φ(u) - L_sign(u)) du and likewise B_j, C_j (tanh: B0 = -2, C0 = 4/3). Used
    above Q_ASYMPTOTIC, where the neglected term is below 1e-24 relative; returns (L+, L-,
    A0, A2, B0, B2, C0, C2) and sup φ². Computed once, eagerly even when first asked for
    inside a jit trace.
    """
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
      far = 40.0 * self.scale + max((abs(k) for k in self.kinks), default=0.0)
      ends = np.asarray(self.fn(jnp.array([-4 * far, -2 * far, 2 * far, 4 * far])), float)
      if not np.all(np.isfinite(ends)) or abs(ends[0] - ends[1]) > 1e-15 * (1 + abs(ends[0])) \
         or abs(ends[2] - ends[3]) > 1e-15 * (1 + abs(ends[3])):
        return None  # unbounded, oscillating, or saturating too slowly for the expansion
      lo, hi = float(ends[1]), float(ends[2])
      x, w = np.polynomial.legendre.leggauss(20)
      edges = np.unique(np.concatenate([np.linspace(-2 * far, 2 * far, 801),
                                        np.asarray(self.kinks, float)]))
      a, b = edges[:-1, None], edges[1:, None]
      u = (0.5 * (a + b) + 0.5 * (b - a) * x).reshape(-1)
      wu = (0.5 * (b - a) * w).reshape(-1)
      phi = np.asarray(self.fn(jnp.asarray(u)), float)
      limit = np.where(u > 0, hi, lo)
      g = (phi - limit, phi**2 - limit**2)
      if self.jumps:
        deriv = np.zeros_like(u)
      else:
        deriv = np.asarray(self.derivative(jnp.asarray(u)), float) ** 2
      coeffs = [float(np.sum(wu * f * u**j)) for f in g + (deriv,) for j in (0, 2)]
      sup = float(max(np.max(phi**2), lo**2, hi**2))
    return (hi, lo, *coeffs), sup

  @property
  def sup_square(self):
    s = self.saturation
    return None if s is None else s[1]

  def asymptotic_moments(self, q):
    """(E[φ²], E[φ], E[φ'²]) at large q from `saturation` (stacked on the last axis)."""
    (hi, lo, a0, a2, b0, b2, c0, c2), _ = self.saturation
    q = jnp.asarray(q, dtype=float)
    root = jnp.sqrt(2.0 * math.pi * q)
    return jnp.stack([0.5 * (hi**2 + lo**2) + (b0 - b2 / (2 * q)) / root,
                      0.5 * (hi + lo) + (a0 - a2 / (2 * q)) / root,
                      (c0 - c2 / (2 * q)) / root], -1)

  def _large_q(self, which: int, q, direct):
    """`direct(q)` (the quadrature), or above Q_ASYMPTOTIC the expansion for a saturating φ."""
    q = jnp.asarray(q, dtype=float)
    if self.saturation is None:
      return direct(q)
    far = self.asymptotic_moments(jnp.maximum(q, Q_ASYMPTOTIC))[..., which]
    return jnp.where(q > Q_ASYMPTOTIC, far, direct(jnp.minimum(q, Q_ASYMPTOTIC)))

  # -- the dual activation -----------------------------------------------------------------------
  def mean(self, q):
    return self._large_q(1, q, lambda q: self._map_1d(self.fn, q))

  def kernel(self, q1, q2, q12):
    return self._map_2d(self.fn, self.fn, q1, q2, q12, which=0)

  def derivative_kernel(self, q1, q2, q12):
    self.require_derivative()
    return self._map_2d(self.derivative, self.derivative, q1, q2, q12, which=1)

  def second_moment(self, q):
    return self._large_q(0, q, lambda q: self._map_1d(lambda x: jnp.square(self.fn(x)), q))

  def derivative_second_moment(self, q):
    self.require_derivative()
    return self._large_q(2, q, lambda q: self._map_1d(lambda x: jnp.square(self.derivative(x)),
                                                      q))


def check_elementwise(fn, name: str) -> None:
  """Refuse, naming `activation`, a callable that JAX cannot apply to an array elementwise: one
  built on NumPy (np.tanh), on Python control flow (`if u > 0`), or not shape-preserving."""
  probe = jax.ShapeDtypeStruct((5,), jnp.float32)
  try:
    out = jax.eval_shape(lambda u: fn(u), probe)
  except Exception as err:  # TracerArrayConversionError, ConcretizationTypeError, ...
    first = (str(err).strip().splitlines() or [""])[0][:160]
    raise TypeError(
        f"activation {name!r} must be an elementwise function of a JAX array, written with "
        "jax.numpy (it is traced, vectorised and differentiated by JAX: no NumPy functions, "
        f"no Python `if` on its argument); applied to an array of shape (5,) it raised "
        f"{type(err).__name__}: {first}") from None
  if getattr(out, "shape", None) != (5,):
    raise ValueError(f"activation {name!r} must be elementwise (same shape out as in); on an "
                     f"array of shape (5,) it returned {getattr(out, 'shape', type(out))}")


def find_kinks(fn, derivative_fn=None, limit: float = 50.0, points: int = 20001):
  """Kinks (jumps of φ') and jumps of φ of an elementwise callable, located to ~1e-13.

  A derivative check on a grid over [-limit, limit]: a step of φ' (or of φ) between two grid
  points that stands out from the local variation by a factor of 50 is a candidate, refined
  by bisection. Features closer together than the grid spacing, or outside the range, are not
  found. Returns (kinks, jumps), tuples of floats.

  >>> import jax.numpy as jnp
  >>> find_kinks(lambda x: jnp.maximum(x - 0.3, 0.0))
  ((0.3,), ())
  """
  with jax.enable_x64(True):
    d = derivative_fn or jnp.vectorize(jax.grad(fn))
    h = 2.0 * limit / (points - 1)
    # Offset by an irrational fraction of the spacing: a feature at a round number (0, 1.5) then
    # lies strictly inside one interval instead of on a node, where grad takes a middle value.
    x = np.linspace(-limit, limit, points) + 0.3819660112501051 * h
    f = np.asarray(fn(jnp.asarray(x)), dtype=float)
    fp = np.asarray(d(jnp.asarray(x)), dtype=float)
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(fp))):
      raise ValueError("activation must be finite, with a finite derivative, on "
                       f"[-{limit:g}, {limit:g}]")
    # φ jumps where its increment is not the trapezoid of φ' (error h³|φ'''|/12 if smooth); φ'
    # jumps where its increment stands out against its neighbours' (~h|φ''| if smooth).
    excess = np.abs(np.diff(f) - 0.5 * h * (fp[1:] + fp[:-1]))
    step = np.abs(np.diff(fp))
    local = np.maximum(np.concatenate([[0.0], step[:-1]]), np.concatenate([step[1:], [0.0]]))
    jump_at = np.nonzero(excess > 1e-6 * (1.0 + np.abs(f[1:])))[0]
    kink_at = np.nonzero((step > 50 * local + 1e-9) & (step > 1e-6))[0]

    def refine(values, lo, hi):
      """Bisect to the discontinuity; None if the step vanishes (a steep but smooth φ)."""
      v_lo, v_hi = values(lo), values(hi)
      size = abs(v_hi - v_lo)
      for _ in range(80):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
          break
        v_mid = values(mid)
        if abs(v_mid - v_lo) < abs(v_hi - v_mid):
          lo, v_lo = mid, v_mid
        else:
          hi, v_hi = mid, v_mid
      return float(np.round(0.5 * (lo + hi), 12)) + 0.0 if abs(v_hi - v_lo) > 0.25 * size else None

    value = lambda t: float(fn(jnp.asarray(t)))  # noqa: E731
    slope = lambda t: float(d(jnp.asarray(t)))  # noqa: E731
    # A feature right at a grid point shows in the two intervals beside it: search both.
    jumps = {refine(value, x[max(i - 1, 0)], x[min(i + 2, points - 1)]) for i in jump_at} - {None}
    kinks = {refine(slope, x[max(i - 1, 0)], x[min(i + 2, points - 1)]) for i in kink_at} - {None}
    # A jump of φ also makes φ' look discontinuous next to it.
    kinks = {k for k in kinks if all(abs(k - j) > 2 * h for j in jumps)}
    return tuple(sorted(kinks)), tuple(sorted(jumps))


def _public_methods(cls):
  """Give the expectation methods the library's float64 contract when called eagerly."""
  for name in ("mean", "kernel", "derivative_kernel", "second_moment",
               "derivative_second_moment", "variance"):
    if name in cls.__dict__:
      setattr(cls, name, float64(cls.__dict__[name]))
  return cls


for _cls in (Activation, ReLU, LeakyReLU, Erf, Identity, Numerical):
  _public_methods(_cls)


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)


def _gelu_smoothed(x, v):
  """E[g(x + √v z)] and E[g'(x + √v z)] for g(x) = x Φ(x), with S = √(1 + v):
  x Φ(x/S) + v ϕ(x/S)/S (Stein's lemma on the noise) and its x-derivative Φ(x/S) + x ϕ(x/S)/S³."""
  s = jnp.sqrt(1.0 + v)
  density = jnp.exp(-0.5 * jnp.square(x / s)) / math.sqrt(_TWO_PI)
  return (x * jax.scipy.special.ndtr(x / s) + v * density / s,
          jax.scipy.special.ndtr(x / s) + x * density / s**3)


ACTIVATIONS: dict[str, Activation] = {
    "relu": ReLU(),
    "erf": Erf(),
    "identity": Identity(),
    "tanh": Numerical(jnp.tanh, name="tanh"),
    "gelu": Numerical(_gelu, name="gelu", smoothed=_gelu_smoothed),
    "swish": Numerical(jax.nn.silu, name="swish"),
    "softplus": Numerical(jax.nn.softplus, name="softplus"),
    "leaky_relu": LeakyReLU(),
    "leaky_relu_numerical": Numerical(jax.nn.leaky_relu, name="leaky_relu_numerical",
                                      kinks=(0.0,)),
    "relu_numerical": Numerical(jax.nn.relu, name="relu_numerical", kinks=(0.0,)),
    "erf_numerical": Numerical(jax.scipy.special.erf, name="erf_numerical"),
}


def get_activation(activation) -> Activation:
  """An `Activation` from a name in `ACTIVATIONS`, an `Activation`, or any elementwise callable.

  >>> import mimictheory as mt
  >>> mt.get_activation("erf").name, mt.get_activation(mt.ReLU()).name
  ('erf', 'relu')
  """
  if isinstance(activation, Activation):
    return activation
  if isinstance(activation, str):
    if activation not in ACTIVATIONS:
      raise ValueError(
          f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, an Activation or a "
          f"callable, got {activation!r}")
    return ACTIVATIONS[activation]
  if callable(activation):
    return from_callable(activation)
  raise TypeError(f"activation must be a name, an Activation or a callable, got {activation!r}")


def from_callable(fn, name: str | None = None) -> Numerical:
  """A `Numerical` activation for a user's callable, with its kinks and jumps found and declared.

  A callable with kinks or jumps that are not declared would be integrated with a smooth rule
  and be silently inaccurate (a ReLU lambda: the derivative kernel ~1e-3 off); `find_kinks`
  locates them and a warning says what was added. Pass `Numerical(fn, kinks=...)` directly to
  skip the scan.
  """
  import warnings
  name = name or getattr(fn, "__name__", "callable")
  check_elementwise(fn, name)
  kinks, jumps = find_kinks(fn)
  if kinks or jumps:
    found = ", ".join([f"kink at x = {k:g}" for k in kinks] + [f"jump at x = {j:g}" for j in jumps])
    warnings.warn(f"activation {name!r}: {found}; added as quadrature breakpoints (declare them "
                  "with mimictheory.Numerical(fn, kinks=..., jumps=...) to silence this)"
                  + ("; the derivative kernel and the NTK are refused across a jump" if jumps
                     else ""), stacklevel=3)
  return Numerical(fn, name=name, kinks=kinks, jumps=jumps)
