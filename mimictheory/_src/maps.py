"""Mean-field maps of one layer: variance map, correlation map T, weight-mean map T̄, BN map.

One layer takes the pre-activation covariances (q1, q2, q12) of two inputs to those of the next
layer. With K = E[φ(u)φ(v)], m = E[φ], f = (n-1)/n for a finite fan-in n (1 otherwise):

    norm="none"         q12' = σw² K + σb²                           (paper eq 3)
    norm="weight_mean"  q12' = σw² f (K - m1 m2) + σb²               (eq 10 with Lemma 1)
    norm="batch_norm"   q12' = (K - m1 m2) / √(Var1 Var2)            (Theorem 2, full batch)

Weight mean centres the dual activation: W̄ φ = W (φ - mean φ), so only the covariance of φ
passes (Lemma 1). Batch norm centres over the data set and divides by the per-unit variance,
which in the paper's full-batch, infinite-width approximation is Var φ; σw², σb² drop out.
The correlation map is T(c) = q12'(q*, q*, c q*) / q*, at the variance fixed point q*.

A real BN layer normalises each unit by its own batch statistics and couples the inputs of a
batch, so at a finite batch it has no pairwise map: its exact kernels are `kernels(x,
norm="batch_norm")` (module `batch_norm`). The pairwise maps here are its limit B -> ∞, which is
Theorem 2; `norm="batch_norm_paper"` names the same maps explicitly. `chi1(norm="batch_norm",
batch=B)` is the exact finite-batch χ1.
"""
from __future__ import annotations

import dataclasses
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src import checks
from mimictheory._src.activations import Activation, get_activation
from mimictheory._src.norms import THEORY_NORMS, Norm, rule
from mimictheory._src.precision import concrete_only, f64, float64

__all__ = [
    "NORMS", "Layer", "make_layer", "stable_sw2", "variance_map", "covariance_map", "qstar",
    "correlation_map", "correlation_slope", "chi1", "fixed_points", "FixedPoints", "depth_scales",
    "DepthScales", "depth_scale", "stable_correlation", "BATCH_NORMS", "QSTAR_STATUS",
]

NORMS = THEORY_NORMS  # module `norms`
#: batch norm: exact at a finite batch ("batch_norm") and Theorem 2's full-batch approximation
BATCH_NORMS = ("batch_norm", "batch_norm_paper")
Q_MAX = 1e12  # a variance above this counts as diverged (q* = ∞)
Q_CAP = 1e16  # where q* = ∞, non-homogeneous activations are evaluated at this variance
Q_MIN = 1e-14  # where V(0) = 0, a fixed point below this counts as q* = 0 (see _fixed_point)
Q_FLOOR = 1e-16  # where q* = 0, non-homogeneous activations are evaluated at this variance
_TOL = 1e-14


@partial(jax.tree_util.register_dataclass, data_fields=["sw2", "sb2", "factor"],
         meta_fields=["activation", "norm"])
@dataclasses.dataclass(frozen=True)
class Layer:
  """One mean-field layer: activation, then a dense layer with `norm`.

  `sw2`, `sb2`, `factor` are arrays (broadcastable), so a Layer can describe a whole grid of
  initialisations at once; `factor` is the finite fan-in factor (n-1)/n of Lemma 1.

  >>> import mimictheory as mt
  >>> layer = mt.make_layer("relu", sw2=2.0, sb2=0.0)
  >>> layer.norm, float(layer.sw2)
  ('none', 2.0)
  """

  activation: Activation
  norm: str
  sw2: jax.Array
  sb2: jax.Array
  factor: jax.Array

  @property
  def rule(self) -> Norm:
    """What `norm` does to the maps (`norms.Norm`)."""
    return rule(self.norm)

  def variance_map(self, q):
    """Variance map q' = V(q) (one-dimensional integrals only; `Activation.variance` is Var φ)."""
    return self.rule.variance_map(self.activation, self.sw2, self.sb2, self.factor, q)

  def variance_slope(self, q):
    """dV/dq, by forward-mode autodiff through the dual activation."""
    q = jnp.broadcast_to(q, jnp.broadcast_shapes(jnp.shape(q), jnp.shape(self.sw2)))
    return jax.jvp(self.variance_map, (q,), (jnp.ones_like(q),))[1]

  def covariance_map(self, q1, q2, q12):
    """Covariance map q12' of the next layer's pre-activations (eq 3, eq 10, Theorem 2)."""
    return self.covariance_and_slope(q1, q2, q12)[0]

  def covariance_and_slope(self, q1, q2, q12):
    """(q12', ∂q12'/∂q12) in one pass (`Activation.kernel_pair`): the NTK recursion's step."""
    return self.rule.covariance_and_slope(self.activation, self.sw2, self.sb2, self.factor, q1,
                                          q2, q12)

  def diagonal_slope(self, q):
    """∂q12'/∂q12 at q1 = q2 = q12 = q (ρ = 1): one-dimensional E[φ'(√q z)²] (χ1 at q*)."""
    return self.rule.diagonal_slope(self.activation, self.sw2, self.factor, q)

  def slope(self, q1, q2, q12):
    """∂q12'/∂q12 = σw² f E[φ'(u)φ'(v)] (for BN divided by the unit variances)."""
    return self.covariance_and_slope(q1, q2, q12)[1]


def resolve_arguments(activation, sw2, sb2, norm, fan_in):
  """Validate the public arguments and return (activation, sw2 or None, sb2, factor)."""
  act = get_activation(activation)
  # Lemma 1's finite fan-in factor belongs to weight mean's centring only (a numerically
  # integrated activation with norm "none" was multiplied by it until 2026-12-02)
  factor = rule(norm).fan_in_factor(checks.check_fan_in(fan_in))
  sb2 = checks.check_nonnegative("sb2", sb2)
  if sw2 is not None:
    sw2 = checks.check_positive("sw2", sw2)
  return act, sw2, sb2, factor


def build_layer(activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None) -> Layer:
  """`make_layer` for the library's own use, in the caller's (float64) context."""
  act, sw2, sb2, factor = resolve_arguments(activation, sw2, sb2, norm, fan_in)
  if sw2 is None:
    sw2 = _stable_sw2(act, norm, sb2, factor)
  return Layer(act, rule(norm).name, f64(sw2), f64(sb2), f64(factor))  # "bn": "batch_norm"


@float64
def make_layer(activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None) -> Layer:
  """A validated `Layer` (float64 fields); `sw2=None` means the stable initialisation (see
  `stable_sw2`).

  >>> import mimictheory as mt
  >>> layer = mt.make_layer("relu", sw2=None, norm="weight_mean")
  >>> round(float(layer.sw2), 6), layer.sw2.dtype
  (2.933884, dtype('float64'))
  """
  return build_layer(activation, sw2, sb2, norm, fan_in)


def _stable_sw2(act: Activation, norm: str, sb2, factor):
  """σw² that makes q = 1 a fixed point of the variance map: V(1) = 1."""
  if rule(norm).normalised:
    return jnp.ones_like(f64(sb2))
  if not checks.is_traced(sb2) and np.any(np.asarray(sb2) >= 1.0):
    raise ValueError(f"sb2 must be < 1 for the stable initialisation sw2=None, got {sb2!r}")
  return (1.0 - f64(sb2)) / (factor * rule(norm).moment(act, f64(1.0)))


@float64
def stable_sw2(activation="relu", sb2=0.0, norm="weight_mean", fan_in=None):
  """The stable σw², V(1) = 1, for inputs normalised to unit variance.

  For ReLU with weight mean and σb = 0 this is Theorem 3: σw² = 2n / ((n-1)(1 - 1/π)), about
  2.94 for n = 300 (2 / (1 - 1/π) ≈ 2.934 as n → ∞); without weight mean it is He's σw² = 2.

  >>> import mimictheory as mt
  >>> round(float(mt.stable_sw2("relu", norm="weight_mean", fan_in=300)), 4)
  2.9437
  """
  act, _, sb2, factor = resolve_arguments(activation, 1.0, sb2, norm, fan_in)
  return _stable_sw2(act, norm, sb2, factor)


# ----------------------------------------------------------------------------------------------
# The variance fixed point q*.
# ----------------------------------------------------------------------------------------------
#: How the search for q* ended (`qstar_status`).
CONVERGED, COLLAPSED, DIVERGED, NOT_CONVERGED = 0, 1, 2, 3
QSTAR_STATUS = ("converged", "q* = 0", "q* = ∞", "not converged")


def _fixed_point(variance, zero_is_fixed, shape, q0, max_iter: int, cap=Q_MAX):
  """q* reached from q0 by q -> V(q): safeguarded Newton on g(q) = V(q) - q, and its status.

  The iteration q -> V(q) moves monotonically towards q* (V is increasing); Newton's step is
  taken when it goes the same way and at least as far, otherwise the plain step; a bracket
  [lo, hi] of sign changes of g is kept and bisected when a step would leave it. Converged: the
  relative step is below 4e-15. Where V(0) = 0 (`zero_is_fixed`) and the iterates fall below
  Q_MIN, q* = 0: in float64, V(q)/q is 1 to rounding there at a critical point (V(q) = q - 2q²
  for tanh at σw² = 1), so a smaller fixed point could not be told from 0. Diverged: no fixed
  point below `cap` (Q_MAX; for a bounded φ above its bound on q*, so never).
  """
  q = jnp.broadcast_to(f64(q0), shape)
  cap = jnp.broadcast_to(f64(cap), shape)
  lo, hi = jnp.zeros(shape), cap

  def body(state):
    q, lo, hi, done, it, last = state
    v, dv = jax.jvp(variance, (q,), (jnp.ones_like(q),))
    g = v - q
    lo = jnp.where(g > 0, jnp.maximum(lo, q), lo)
    hi = jnp.where(g < 0, jnp.minimum(hi, q), hi)
    denom = 1.0 - dv
    # V' >= 1 while V > q: growing at least linearly; expand the bracket geometrically.
    newton = jnp.where(denom > 0, g / jnp.where(denom > 0, denom, 1.0),
                       jnp.where(g > 0, 9.0 * jnp.maximum(q, 1.0), g))
    step = jnp.where(jnp.abs(newton) >= jnp.abs(g), newton, g)
    q_new = q + step
    # Expand geometrically towards the open ends (∞ above, 0 below: a collapse to q* = 0
    # would otherwise take ~50 halvings), bisect inside a bracket.
    bisect = jnp.where(hi >= cap, jnp.minimum(2.0 * hi, 10.0 * jnp.maximum(q, 1.0)),
                       jnp.where(lo <= 0.0, 0.01 * jnp.minimum(q, hi), 0.5 * (lo + hi)))
    q_new = jnp.where((q_new < lo) | (q_new > hi), jnp.minimum(bisect, cap), q_new)
    q_new = jnp.where(g == 0, q, q_new)  # V(q) = q exactly (e.g. the identity at σw² = 1)
    q_new = jnp.where(done, q, q_new)
    move = jnp.abs(q_new - q)
    # Converged: a step at rounding level, or Newton stalling at the noise floor of V (a step
    # below 1e-9 q that is not smaller than half the one before; quadratic convergence would be).
    finished = ((move <= 4e-15 * q) | ((move <= 1e-9 * q) & (move >= 0.5 * last))
                | (lo >= cap) | (q_new >= cap) | (zero_is_fixed & (q_new <= Q_MIN)))
    return q_new, lo, hi, done | finished, it + 1, move

  def cond(state):
    return (~jnp.all(state[3])) & (state[4] < max_iter)

  state = (q, lo, hi, jnp.zeros(shape, bool), 0, jnp.full(shape, jnp.inf))
  q, _, _, done, _, _ = jax.lax.while_loop(cond, body, state)
  collapsed = zero_is_fixed & (q <= Q_MIN)
  diverged = q >= cap * 0.999
  status = jnp.where(collapsed, COLLAPSED, jnp.where(diverged, DIVERGED,
                                                     jnp.where(done, CONVERGED, NOT_CONVERGED)))
  q = jnp.where(collapsed, 0.0, jnp.where(diverged, jnp.inf, q))
  return q, status


def zero_is_fixed(layer: Layer):
  """V(0) = 0: σb² = 0 and φ(0) = 0 (or weight mean, which centres φ(0) away); never for BN."""
  if layer.rule.normalised:
    return jnp.zeros(jnp.shape(layer.sb2), bool)
  return (layer.sb2 == 0) & (layer.rule.centred | (layer.activation(f64(0.0)) == 0))


@partial(jax.jit, static_argnames=("max_iter",))
def solve_qstar_status(layer: Layer, q0=1.0, max_iter: int = 400):
  shape = jnp.broadcast_shapes(jnp.shape(layer.sw2), jnp.shape(layer.sb2), jnp.shape(q0))
  variance = lambda q: layer.variance_map(jnp.maximum(q, 1e-300))  # noqa: E731 (never at q = 0)
  return _fixed_point(variance, zero_is_fixed(layer), shape, q0, max_iter, search_cap(layer))


def search_cap(layer: Layer):
  """Where the search for q* gives up (q* = ∞): Q_MAX, or for a bounded φ (`sup_square`) four
  times its bound σw² sup φ² + σb² on q*, which a bounded φ never exceeds (so never ∞)."""
  sup = layer.activation.sup_square
  if sup is None or layer.rule.normalised:
    return Q_MAX
  return jnp.maximum(Q_MAX, 4.0 * (layer.sw2 * sup + layer.sb2) + 1.0)


def _fixed_point_tangent(root, d_map, slope):
  """The implicit function theorem at a fixed point x* = F(x*; θ): dx* = ∂θF dθ / (1 - ∂xF),
  `d_map` = ∂θF dθ and `slope` = ∂xF at x*; 0 where `root` is False (x* a limit or pinned)."""
  return jnp.where(root, d_map / jnp.where(root, 1.0 - slope, 1.0), 0.0)


@jax.custom_jvp
def _qstar_and_status(layer: Layer, q0=1.0):
  """(q*, status) reached from q0 (`_fixed_point`), q* differentiable in the layer's σw², σb²
  and fan-in factor by the implicit function theorem (the search's `while_loop` is not):
  V(q*; θ) = q* gives dq* = ∂θV dθ / (1 - V'(q*)); dq* = 0 where q* is 0 or ∞ (a limit, not
  a root)."""
  return solve_qstar_status(layer, q0)


@_qstar_and_status.defjvp
def _qstar_and_status_jvp(primals, tangents):
  layer, q0 = primals
  q, status = _qstar_and_status(layer, q0)
  root = jnp.isfinite(q) & (q > 0)
  q_safe = jnp.where(root, q, 1.0)
  dv_dtheta = jax.jvp(lambda lay: lay.variance_map(q_safe), (layer,), (tangents[0],))[1]
  dq = _fixed_point_tangent(root, dv_dtheta, layer.variance_slope(q_safe))
  no_tangent = np.zeros(jnp.shape(status), jax.dtypes.float0)
  return (q, status), (jnp.broadcast_to(dq, jnp.shape(q)), no_tangent)


def solve_qstar(layer: Layer, q0=1.0):
  """q* reached from q0 (0 or ∞ at the ends; see `_fixed_point`), differentiable."""
  return _qstar_and_status(layer, q0)[0]


def limit_point(layer: Layer, q):
  """Where q* is 0 or ∞, the limit of the maps as q -> q* (σb² is negligible there).

  Exact for positively homogeneous φ (ReLU: evaluated at q = 1); otherwise evaluated at
  q = Q_CAP (q* = ∞) or q = Q_FLOOR (q* = 0).
  """
  diverged, collapsed = jnp.isinf(q), q == 0
  homogeneous = layer.activation.homogeneity == 1
  q_eval = jnp.where(diverged, 1.0 if homogeneous else Q_CAP, q)
  q_eval = jnp.where(collapsed, 1.0 if homogeneous else Q_FLOOR, q_eval)
  sb2 = jnp.where(diverged | collapsed, 0.0, layer.sb2)
  return q_eval, dataclasses.replace(layer, sb2=sb2)


def _chi1(layer: Layer, q):
  """χ1 = σw² f E[φ'(√q* z)²] (Schoenholz et al. 2017), the growth of a small perturbation."""
  q_eval, layer = limit_point(layer, q)
  return layer.diagonal_slope(q_eval)


def _correlation_map(layer: Layer, q, c):
  q, layer = limit_point(layer, q)
  return layer.covariance_map(q, q, c * q) / layer.variance_map(q)


def _correlation_slope(layer: Layer, q, c):
  q, layer = limit_point(layer, q)
  return layer.slope(q, q, c * q) * q / layer.variance_map(q)


def slope_at_one(layer: Layer, q):
  """T'(1) = ∂q12'/∂q12 at ρ = 1 times q/V(q), from one-dimensional integrals only.

  At a finite q* > 0 this is χ1 (V(q*) = q*); where q* is 0 or ∞ it is the limit map's slope
  (1 for ReLU at q* = ∞: the correlation map is marginal there although χ1 = σw²/2 > 1)."""
  q, layer = limit_point(layer, q)
  return layer.diagonal_slope(q) * q / layer.variance_map(q)


def newton_cstar(tmap, tslope, shape, slope_at_one, max_iter: int = 100, start=None):
  """The stable correlation fixed point c*: 1 if T'(1) <= 1, else the root of T(c) = c in [0, 1).

  T has non-negative Hermite coefficients, so g(c) = T(c) - c is convex on [0, 1] with
  g(0) = T(0) >= 0 and g(1) = 0; for T'(1) > 1 it has exactly one root c* in [0, 1). Newton
  runs on the deflated h(c) = g(c) / (1 - c), whose root c* stays simple as it merges with
  c = 1 near the critical line (plain Newton on g slows to halving the error per step there).
  `tmap`, `tslope`: T and T' on arrays of `shape`; `slope_at_one`: T'(1), from one-dimensional
  integrals (`slope_at_one`); `start`: an estimate of c* to start from (default 0).
  """
  ordered = slope_at_one <= 1.0 + 1e-12

  def body(state):
    c, done, it, last = state
    g, dg = tmap(c) - c, tslope(c) - 1.0
    gap = 1.0 - c
    h, dh = g / gap, (dg * gap + g) / (gap * gap)  # h = g / (1 - c) and h'
    deflated = c - h / jnp.where(dh < 0, dh, -1.0)
    plain = c - g / jnp.where(dg < 0, dg, -1.0)
    c_new = jnp.where((dh < 0) & (deflated < 1.0), deflated, plain)
    c_new = jnp.clip(c_new, 0.0, 1.0 - 1e-16)
    c_new = jnp.where(ordered, 1.0, jnp.where(done, c, c_new))
    move = jnp.abs(c_new - c)
    # converged at rounding level, or stalled at the noise floor of T (see _fixed_point; past
    # 20 steps Newton is only circling in the noise, as c* is ill-conditioned near T'(c*) = 1)
    finished = ((move <= 1e-15) | ((move <= 1e-11) & (move >= 0.5 * last))
                | ((it >= 20) & (move <= 1e-10)))
    return c_new, done | finished, it + 1, move

  def cond(state):
    return (~jnp.all(state[1])) & (state[2] < max_iter)

  c0 = jnp.where(ordered, 1.0, 0.0 if start is None else jnp.clip(start, 0.0, 1.0 - 1e-16))
  state = (c0, ordered, 0, jnp.full(shape, jnp.inf))
  return jax.lax.while_loop(cond, body, state)[0]


@partial(jax.jit, static_argnames=("max_iter",))
def _newton_cstar_at(layer: Layer, q, start=None, max_iter: int = 100):
  return newton_cstar(partial(_correlation_map, layer, q), partial(_correlation_slope, layer, q),
                       jnp.shape(q), slope_at_one(layer, q), max_iter, start)


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def solve_cstar(layer: Layer, q, start=None, max_iter: int = 100):
  """c* of the correlation map at the variance q (`newton_cstar`), differentiable in the
  layer's parameters and q by the implicit function theorem: T(c*; θ) = c* gives
  dc* = ∂θT dθ / (1 - T'(c*)); dc* = 0 where c* = 1 (a fixed point for every θ)."""
  return _newton_cstar_at(layer, q, start, max_iter)


@solve_cstar.defjvp
def _solve_cstar_jvp(max_iter, primals, tangents):
  layer, q, start = primals
  tangent_layer, tangent_q, _ = tangents
  c = solve_cstar(layer, q, start, max_iter)
  root = c < 1.0
  dt = jax.jvp(lambda lay, q: _correlation_map(lay, q, c), (layer, q),
               (tangent_layer, tangent_q))[1]
  dc = _fixed_point_tangent(root, dt, _correlation_slope(layer, q, c))
  return c, jnp.broadcast_to(dc, jnp.shape(c))


def slope_at_cstar(layer: Layer, q, c):
  """χ_c = T'(c*), by the one-dimensional formula where c* = 1."""
  return jnp.where(c == 1.0, slope_at_one(layer, q), _correlation_slope(layer, q, c))


# ----------------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------------
@float64
def variance_map(q, activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None):
  """The variance map V(q) = σw² E[φ(√q z)²] + σb² (centred with weight mean; 1 with BN).

  >>> import mimictheory as mt
  >>> float(mt.variance_map(3.0, "relu", sw2=2.0, sb2=0.5))  # 2 · 3/2 + 0.5
  3.5
  """
  q = checks.check_nonnegative("q", q)
  return build_layer(activation, sw2, sb2, norm, fan_in).variance_map(f64(q))


@float64
def covariance_map(q12, *, q1=1.0, q2=1.0, activation="relu", sw2=2.0, sb2=0.0, norm="none",
                   fan_in=None):
  """One layer's covariance map (q1, q2, q12) -> q12' (paper eq 2-3; eq 10 with Lemma 1).

  q1 and q2 are keyword-only: `Activation.kernel(q1, q2, q12)` takes the variances first, so
  a positional call could not be read both ways.

  With q1 = q2 = 1 and ReLU this is the paper's T(ρ) = σw² φ̂(ρ) + σb² (eq 3), and with weight
  mean and a fan-in n it is E_W of eq 10: σw² (n-1)/n (φ̂(ρ) - φ̂(0)) + σb² (Lemma 1).

  >>> import mimictheory as mt, math
  >>> abs(float(mt.covariance_map(0.0, activation="relu", sw2=2.0)) - 1 / math.pi) < 1e-15
  True
  """
  q1 = checks.check_nonnegative("q1", q1)
  q2 = checks.check_nonnegative("q2", q2)
  q12 = checks.check_interval("q12", q12, -np.inf, np.inf)
  if (not checks.is_traced(q1, q2, q12)
      and np.any(np.abs(q12) > np.sqrt(q1 * q2) * (1 + 1e-12) + 1e-300)):
    raise ValueError("q12 must satisfy |q12| <= sqrt(q1 q2) (a valid covariance)")
  layer = build_layer(activation, sw2, sb2, norm, fan_in)
  return layer.covariance_map(f64(q1), f64(q2), f64(q12))


@float64
def qstar(activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None, q0=1.0):
  """The fixed point q* of the variance map reached from q0 (∞ if the variance diverges).

  >>> import mimictheory as mt
  >>> round(float(mt.qstar("relu", sw2=1.0, sb2=0.5)), 12)  # σb² / (1 - σw²/2)
  1.0
  """
  q0 = checks.check_positive("q0", q0)
  layer = build_layer(activation, sw2, sb2, norm, fan_in)
  return explain_nan(layer, solve_qstar(layer, f64(q0)))


@float64
def correlation_map(rho, activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None):
  """The correlation map T(ρ) at the variance fixed point q* (paper eq 2-3, eq 10, Theorem 2).

  `norm="none"` is the plain network's T; `"weight_mean"` is T̄; `"batch_norm"` is the BN map.
  With `sw2=None` the stable initialisation is used (Theorem 3 for weight mean). At
  (σw², σb²) = (2, 0), ReLU gives T(ρ) = 2φ̂(ρ) (Proposition 1); with weight mean at the stable
  initialisation T̄(ρ) = (φ̂(ρ) - φ̂(0)) / (φ̂(1) - φ̂(0)) (Theorem 3).

  >>> import mimictheory as mt
  >>> float(mt.correlation_map(0.0, "relu", sw2=None, norm="weight_mean"))  # T̄(0) = 0
  0.0
  """
  rho = checks.check_interval("rho", rho, -1.0, 1.0)
  layer = build_layer(activation, sw2, sb2, norm, fan_in)
  return _correlation_map(layer, solve_qstar(layer), f64(rho))


@float64
def correlation_slope(rho, activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None):
  """T'(ρ) = σw² E[φ'(u)φ'(v)] at q* (the factor of each layer in the NTK sum, eq 7).

  >>> import mimictheory as mt
  >>> float(mt.correlation_slope(1.0, "relu"))   # T'(1) = χ1 = 1 at (2, 0)
  1.0
  """
  rho = checks.check_interval("rho", rho, -1.0, 1.0)
  layer = build_layer(activation, sw2, sb2, norm, fan_in)
  return _correlation_slope(layer, solve_qstar(layer), f64(rho))


@float64
def chi1(activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None, batch=None):
  """χ1 = T'(1) = σw² E[φ'(√q* z)²]: ordered (< 1), critical (= 1) or chaotic (> 1), Theorem 1.

  With `norm="batch_norm"` and an integer `batch` = B >= 4 (or an array of them), the exact χ1
  of a BN network at batch B: the growth per layer of the NTK and of the squared gradient,
  through the batch mean and variance (Yang et al. 2019), at the symmetric fixed point of the
  BN map; σw² and σb² drop out. For ReLU it is 3.08 at B = 4 and tends to Theorem 2's
  π/(π-1) like 1/B; for the identity it is (B-2)/(B-3). Positively homogeneous activations
  only (relu, leaky_relu, identity). `batch=None` is the limit B -> ∞ (Theorem 2).

  >>> import mimictheory as mt, math
  >>> float(mt.chi1("relu", sw2=2.0))  # Proposition 1
  1.0
  >>> abs(float(mt.chi1("relu", norm="batch_norm")) - math.pi / (math.pi - 1)) < 1e-14  # Thm 2
  True
  >>> round(float(mt.chi1("identity", norm="batch_norm", batch=8)), 12)   # (B-2)/(B-3)
  1.2
  """
  layer = build_layer(activation, sw2, sb2, norm, fan_in)
  if batch is not None:
    return _finite_batch_chi1(layer, batch)
  return explain_nan(layer, _chi1(layer, solve_qstar(layer)))


def explain_nan(layer: Layer, out):
  """`out`, unless it holds a NaN that a user's activation caused: then a ValueError saying
  that φ (or φ') returned NaN, and where (`Activation.check_finite` on a ladder of variances).
  Traced values pass unchecked."""
  if not checks.is_traced(out) and np.isnan(np.asarray(out)).any():
    layer.activation.check_finite(np.geomspace(1e-8, 1e17, 26), limit=26)
  return out


def _finite_batch_chi1(layer: Layer, batch):
  from mimictheory._src import batch_norm as bn
  if not layer.rule.exact_batch:
    raise ValueError(f"batch applies to norm='batch_norm' only (the exact finite-batch BN), "
                     f"got norm={layer.norm!r}")
  arr = np.asarray(batch)
  if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
    raise TypeError(f"batch must be an integer >= {bn.MIN_BATCH_NTK} or an array of them, "
                    f"got {batch!r}")
  if np.any(arr < bn.MIN_BATCH_NTK):
    raise ValueError(f"batch must be >= {bn.MIN_BATCH_NTK}: at batch 2 or 3 the gradient through "
                     f"BN has infinite variance (E[1/|Gh|²] diverges), got {batch!r}")
  coeffs = bn.homogeneous_coefficients(layer.activation)
  if coeffs is None:  # two-dimensional quadrature on the sphere, one rule per batch size
    values = [bn.sphere_chi1(layer.activation, int(b)) for b in arr.reshape(-1)]
    worst = max(float(e) for _, e in values)
    if worst > 1e-6:
      warnings.warn(f"chi1(batch=...) for {layer.activation.name!r}: quadrature error estimate "
                    f"{worst:.1e} (kinked activations converge slowly; relu, leaky_relu and "
                    "identity are exact)", stacklevel=3)
    return jnp.stack([v for v, _ in values]).reshape(arr.shape)
  sizes = f64(arr.astype(float)).reshape(-1)
  out = jax.vmap(lambda b: bn.symmetric_chi1(*coeffs, b))(sizes)
  return out.reshape(arr.shape)


@float64
def stable_correlation(activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None):
  """c*, the stable fixed point of T that correlations flow to: 1 if χ1 <= 1, else in [0, 1).

  >>> import mimictheory as mt
  >>> float(mt.stable_correlation("relu")), float(mt.stable_correlation("relu", sw2=None,
  ...                                                                  norm="weight_mean"))
  (1.0, 0.0)
  """
  layer = build_layer(activation, sw2, sb2, norm, fan_in)
  return solve_cstar(layer, solve_qstar(layer))


@partial(jax.tree_util.register_dataclass,
         data_fields=["qstar", "cstar", "chi_q", "chi_c", "xi_q", "xi_c", "status"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class DepthScales:
  """Depth scales of Schoenholz et al. 2017: ξ = -1/ln χ (∞ where χ >= 1).

  >>> import mimictheory as mt
  >>> ds = mt.depth_scales("erf", sw2=1.5, sb2=0.05)
  >>> round(float(ds.xi_c), 2), int(ds.status)
  (32.34, 0)
  """

  qstar: np.ndarray
  cstar: np.ndarray
  chi_q: np.ndarray  # V'(q*)
  chi_c: np.ndarray  # T'(c*)
  xi_q: np.ndarray
  xi_c: np.ndarray
  #: how the search for q* ended: index into QSTAR_STATUS (converged, q* = 0, q* = ∞,
  #: not converged)
  status: np.ndarray | None = None


@float64
def depth_scale(chi):
  """ξ = -1 / ln χ for χ in [0, 1); ∞ for χ >= 1 - 1e-12 (no exponential decay).

  The depth over which a perturbation of the fixed point decays by a factor e (Schoenholz et
  al. 2017, eq. 9); NumPy float64 out.

  >>> import mimictheory as mt
  >>> float(mt.depth_scale(0.5)), float(mt.depth_scale(1.0)), mt.depth_scale(0.5).dtype
  (1.4426950408889634, inf, dtype('float64'))
  """
  chi = jnp.asarray(chi)
  critical = chi >= 1.0 - 1e-12
  safe = jnp.where((chi > 0) & ~critical, chi, 0.5)
  return jnp.where(critical, jnp.inf, jnp.where(chi <= 0, 0.0, -1.0 / jnp.log(safe)))


@jax.jit
def _depth_scales_status(layer: Layer):
  q, status = _qstar_and_status(layer, 1.0)
  c = solve_cstar(layer, q)
  q_eval, layer_eval = limit_point(layer, q)
  chi_q = jnp.where(jnp.isinf(q), jnp.inf, layer_eval.variance_slope(q_eval))
  return q, c, chi_q, slope_at_cstar(layer, q, c), status


@float64
def depth_scales(activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None) -> DepthScales:
  """q*, c*, χ_q = V'(q*), χ_c = T'(c*) and the depth scales ξ_q, ξ_c (Schoenholz et al. 2017).

  >>> import mimictheory as mt
  >>> s = mt.depth_scales("tanh", sw2=1.5, sb2=0.05)
  >>> bool(s.xi_c > 0)
  True
  """
  layer = build_layer(activation, sw2, sb2, norm, fan_in)
  q, c, chi_q, chi_c, status = _depth_scales_status(layer)
  values = (q, c, chi_q, chi_c, depth_scale(chi_q), depth_scale(chi_c), status)
  return DepthScales(*(a if checks.is_traced(a) else np.asarray(a) for a in values))


# ----------------------------------------------------------------------------------------------
# All fixed points of T in [-1, 1] with their stability.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FixedPoints:
  """q*, χ1, and every fixed point ρ* of T in [-1, 1] with T'(ρ*) and whether it attracts.

  >>> import mimictheory as mt
  >>> fp = mt.fixed_points("relu", sw2=None, norm="weight_mean")
  >>> [round(float(p), 6) for p in fp.points], [bool(s) for s in fp.stable]
  ([0.0, 1.0], [True, False])
  """

  qstar: float
  chi1: float
  points: np.ndarray
  slopes: np.ndarray
  stable: np.ndarray

  def __repr__(self):
    pts = ", ".join(f"{p:.6g} ({'stable' if s else 'unstable'}, T'={d:.4g})"
                    for p, d, s in zip(self.points, self.slopes, self.stable))
    return f"FixedPoints(qstar={self.qstar:.6g}, chi1={self.chi1:.6g}, points=[{pts}])"


SERIES_TOL = 1e-12  # truncation bound of Mehler's series accepted for T(ρ) and T'(ρ)


def series_layer(layer: Layer, q) -> Layer:
  """`layer` with a numerically integrated φ replaced by Mehler's series on its coefficient
  table around q (`tables.tabulated`: a table once, then a polynomial in ρ per evaluation, as
  the phase grid does), at the first order in `tables.ORDERS` whose truncation bounds for
  E[φφ] and E[φ'φ'] are below SERIES_TOL at ρ = ±1, where they are largest (|ρ|^(K+1)). Else,
  and for closed forms, `layer` itself (the 2-D quadrature)."""
  from mimictheory._src import tables
  if layer.activation.closed_form or layer.rule.normalised:
    return layer
  q_eval, limit = limit_point(layer, q)
  edges = f64(np.array([-1.0, 1.0])) * q_eval
  scale = float(np.asarray(limit.sw2 * limit.factor / limit.variance_map(q_eval)))
  accepted = []

  def by_series(order, todo):
    series = tables.tabulated(layer.activation, *tables.coefficient_range(np.asarray(q_eval)),
                              order)
    # T = σw² f E[φφ] / V(q) and T' = σw² f q E[φ'φ'] / V(q): their truncation errors
    bound = scale * max(float(np.max(np.asarray(series.kernel_bound(q_eval, q_eval, edges)))),
                        float(np.max(np.asarray(series.derivative_bound(q_eval, q_eval, edges))))
                        * float(np.asarray(q_eval)))
    if bound <= SERIES_TOL:
      accepted.append(series)
    return todo & (bound > SERIES_TOL)

  tables.cascade(np.ones(1, bool), by_series, lambda todo: None)  # quadrature: `layer` itself
  return dataclasses.replace(layer, activation=accepted[0]) if accepted else layer


@partial(jax.jit, static_argnames=("steps",))
def _bisect(layer, q, lo, hi, steps: int = 60):
  g_lo = _correlation_map(layer, q, lo) - lo

  def body(_, state):
    lo, hi, g_lo = state
    mid = 0.5 * (lo + hi)
    g_mid = _correlation_map(layer, q, mid) - mid
    same = jnp.sign(g_mid) == jnp.sign(g_lo)
    return jnp.where(same, mid, lo), jnp.where(same, hi, mid), jnp.where(same, g_mid, g_lo)

  lo, hi, _ = jax.lax.fori_loop(0, steps, body, (lo, hi, g_lo))
  return 0.5 * (lo + hi)


@concrete_only
@float64
def fixed_points(activation="relu", sw2=2.0, sb2=0.0, norm="none", fan_in=None,
                 grid: int = 2001) -> FixedPoints:
  """Every fixed point of the correlation map in [-1, 1], its slope and its stability.

  Sign changes of T(ρ) - ρ on a grid are refined by bisection; ρ = 1 is always a fixed point
  (T(1) = 1 at q*). A fixed point is stable when nearby correlations in [-1, 1] flow to it
  (abs(T') < 1, or abs(T') = 1 with the flow pointing inwards, as at ρ* = 1 for ReLU at (2, 0)).

  >>> import mimictheory as mt
  >>> fp = mt.fixed_points("relu", sw2=None, norm="weight_mean")  # Figure 4, orange
  >>> [round(float(p), 12) for p in fp.points], fp.stable.tolist()
  ([0.0, 1.0], [True, False])
  """
  checks.check_int("grid", grid, minimum=11)
  exact = build_layer(activation, sw2, sb2, norm, fan_in)
  q = solve_qstar(exact)
  layer = series_layer(exact, q)  # T and T' at many ρ: Mehler's series where it has converged
  rho = jnp.linspace(-1.0, 1.0, grid)
  g = np.asarray(_correlation_map(layer, q, rho) - rho)
  rho = np.asarray(rho)
  scale = 1e-12
  zero = np.abs(g) <= scale
  crossing = (np.sign(g[:-1]) * np.sign(g[1:]) < 0) & ~zero[:-1] & ~zero[1:]
  roots = list(rho[zero])
  if crossing.any():
    roots += list(np.asarray(_bisect(layer, q, f64(rho[:-1][crossing]), f64(rho[1:][crossing]))))
  roots.append(1.0)
  points = np.unique(np.round(np.asarray(roots, dtype=float), 12))
  points = np.clip(points, -1.0, 1.0)
  slopes = np.asarray(_correlation_slope(layer, q, f64(points)))
  # Flow direction just inside [-1, 1] on each side decides the marginal cases.
  h = 1e-6
  left = np.asarray(_correlation_map(layer, q, f64(np.maximum(points - h, -1.0)))) - np.maximum(
    points - h, -1.0
  )
  right = np.asarray(_correlation_map(layer, q, f64(np.minimum(points + h, 1.0)))) - np.minimum(
    points + h, 1.0
  )
  attract_left = (points <= -1.0) | (left > 0)
  attract_right = (points >= 1.0) | (right < 0)
  stable = np.where(np.abs(slopes) < 1 - 1e-9, True,
                    np.where(np.abs(slopes) > 1 + 1e-9, False, attract_left & attract_right))
  chi = float(_chi1(exact, q))
  return FixedPoints(float(q), chi, points, slopes, stable)
