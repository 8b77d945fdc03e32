"""One-dimensional tables of a numerical activation's Gaussian moments, over t = ln q.

Everything a phase diagram needs depends on the variance q only: the moments

    M(q) = E[φ(√q z)²],   m(q) = E[φ(√q z)],   D(q) = E[φ'(√q z)²],

and the normalised Hermite coefficients a_k(q) = E[φ(√q z) He_k(z)] / √k!, which give the
dual activation by Mehler's formula (O'Donnell 2014, ch. 11; Daniely et al. 2016):

    E[φ(u)φ(v)]   = Σ_k a_k(q1) a_k(q2) ρ^k,
    E[φ'(u)φ'(v)] = Σ_k (k+1) a_{k+1}(q1) a_{k+1}(q2) ρ^k / √(q1 q2)     (Stein's lemma).

A `Table` is piecewise Chebyshev in t: uniform segments of width `width`, each holding a
Chebyshev series of `_P` terms fitted at its Chebyshev points by a direct quadrature;
`moment_table` and `coefficient_table` halve the width until the last two coefficients of
every segment (a bound on the error for functions analytic there) are below `tol` (relative
to √M for the coefficients), and answer the segments that never get there by direct
quadrature. Truncating Mehler's series after order K costs at most
|ρ|^(K+1) √(T(q1) T(q2)) with the tail T = M - Σ_{k<=K} a_k² (Parseval): an a-posteriori bound
that `mehler` returns with every value, so that callers fall back to 2-D quadrature where the
series has not converged (kinked φ near ρ = 1, smooth φ at large q).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src.activations import Activation, Numerical
from mimictheory._src.precision import f64

__all__ = ["Table", "moment_table", "coefficient_table",
           "hermite_coefficients", "mehler", "Tabulated", "tabulated", "MOMENT_RANGE", "ORDER",
           "ORDERS", "horner", "polynomial", "coefficient_range", "gram_series", "SERIES_TOL",
           "cascade"]

#: q range of the moment table; below it the moments are linear in q (analytic at 0) to 1e-16.
MOMENT_RANGE = (1e-18, 1e17)
#: Mehler orders tried in turn: a_0 .. a_K (and a_K+1 for the derivative series). tanh needs
#: K ~ 400 at q = 3 for 1e-13 (its coefficients decay like exp(-π √(2k) / (2√q))), kinked φ
#: never converge at ρ = 1 (a_k² ~ k^(-5/2) for ReLU).
ORDERS = (95, 799)  # (K + 1 a multiple of 8: the Gram matrices' Horner runs 8 terms a pass)
ORDER = ORDERS[0]
# |f(√q z) h_k(z) pdf(z)| <= |f| e^(-z²/4) for every k, so the cutoff need not grow with k.
_CUTOFF, _PANELS, _NODES = 16.0, 64, 12


@functools.partial(jax.tree_util.register_dataclass, data_fields=["coeffs"],
                   meta_fields=["t0", "width", "bad", "direct"])
@dataclasses.dataclass(frozen=True)
class Table:
  """f(q), q = e^t, piecewise Chebyshev in t: segment j covers [t0 + j·width, t0 + (j+1)·width]
  and holds the coefficients coeffs[j] of shape (P, F) (P Chebyshev terms, F functions).

  `bad`: the segments whose interpolation did not reach the tolerance (a sorted tuple, usually
  empty); at a q in one of them the table calls `direct(q)`, the direct quadrature, instead."""

  t0: float
  width: float
  coeffs: jax.Array
  bad: tuple = ()
  direct: object = None

  @property
  def q_range(self):
    return math.exp(self.t0), math.exp(self.t0 + self.width * self.coeffs.shape[0])

  def _segment(self, q):
    n = self.coeffs.shape[0]
    u = jnp.clip((jnp.log(jnp.maximum(q, 1e-300)) - self.t0) / self.width, 0.0, float(n))
    return u, jnp.clip(jnp.floor(u).astype(jnp.int32), 0, n - 1)

  def __call__(self, q):
    """f at q by Clenshaw's recurrence; shape q.shape + (F,). q outside is clamped to the ends
    (callers check `q_range`). In a `bad` segment, the direct quadrature."""
    values = self._interpolate(q)
    if not self.bad:
      return values
    _, j = self._segment(q)
    in_bad = jnp.isin(j, jnp.asarray(self.bad))
    # Direct quadrature only where needed when q is concrete; under a trace, at every q.
    if not isinstance(q, jax.core.Tracer) and not np.any(np.asarray(in_bad)):
      return values
    return jnp.where(in_bad[..., None], self.direct(q), values)

  def _interpolate(self, q):
    n, p = self.coeffs.shape[:2]
    u, j = self._segment(q)
    x = (2.0 * (u - j) - 1.0)[..., None]

    if self.coeffs.shape[2] >= 16 and n <= 64:
      # Many functions (Hermite coefficients): one matrix product of the one-hot segment
      # times T_k(x) against all coefficients, instead of P gathers of (…, F) rows.
      basis = [jnp.ones_like(x[..., 0]), x[..., 0]]
      for _ in range(p - 2):
        basis.append(2.0 * x[..., 0] * basis[-1] - basis[-2])
      cheb = jnp.stack(basis[:p], -1)
      left = (jax.nn.one_hot(j, n, dtype=cheb.dtype)[..., :, None] * cheb[..., None, :])
      return left.reshape(jnp.shape(q) + (n * p,)) @ self.coeffs.reshape(n * p, -1)

    def step(carry, k):
      b1, b2 = carry
      return (2.0 * x * b1 - b2 + self.coeffs[j, k], b1), None

    zero = jnp.zeros(jnp.shape(q) + self.coeffs.shape[2:])
    (b1, b2), _ = jax.lax.scan(step, (zero, zero), jnp.arange(p - 1, 0, -1))
    return x * b1 - b2 + self.coeffs[j, 0]


# ----------------------------------------------------------------------------------------------
# Direct one-dimensional quadrature, vectorised over q.
# ----------------------------------------------------------------------------------------------
def _moments(act: Numerical, q):
  """(M, m, D) at scalar q."""
  z, w = act.nodes_1d(q)
  x = jnp.sqrt(q) * z
  phi, dphi = act.fn(x), act.derivative(x)
  return jnp.stack([jnp.sum(w * phi * phi), jnp.sum(w * phi), jnp.sum(w * dphi * dphi)])


def hermite_coefficients(act: Numerical, q, order: int):
  """a_0 .. a_order at every q (any shape) by direct quadrature; shape q.shape + (order + 1,)."""
  flat = jnp.reshape(q, (-1,))
  out = jax.lax.map(lambda qi: _coefficients(act, qi, order), flat)
  return out.reshape(jnp.shape(q) + (order + 1,))


def _coefficients(act: Numerical, q, order: int):
  """a_0 .. a_order at scalar q, by the orthonormal recurrence
  h_{k+1} = (z h_k - √k h_{k-1})/√(k+1)."""
  panels, nodes = (_PANELS, _NODES) if order <= 128 else (2 * _PANELS, 16)  # resolve h_k's zeros
  z, w = act.nodes_1d(q, cutoff=_CUTOFF, panels=panels, order=nodes)
  fw = w * act.fn(jnp.sqrt(q) * z)

  def step(carry, k):
    h_prev, h = carry
    return (h, (z * h - jnp.sqrt(k) * h_prev) / jnp.sqrt(k + 1.0)), jnp.sum(fw * h)

  return jax.lax.scan(step, (jnp.zeros_like(z), jnp.ones_like(z)), jnp.arange(order + 1.0))[1]


@functools.partial(jax.jit, static_argnames=("act", "order"))
def _samples(act, q, order):
  """(M, m, D) (order None) or a_0 .. a_order at every q of a 1-D array."""
  # A sequential map: XLA:CPU's batched code for some φ (softplus' derivative at q ~ 1e15)
  # differed from the scalar rule by 1e-10, which the table's error control then refused.
  if order is None:
    return jax.lax.map(lambda qi: _moments(act, qi), q)
  return jax.lax.map(lambda qi: _coefficients(act, qi, order), q)


def _evaluate(act, q, order, batch: int = 256):
  """`_samples` over any number of q, in fixed-size batches (one compilation)."""
  n = q.size
  padded = np.concatenate([q, np.full(-n % batch, q[-1])])
  out = [np.asarray(_samples(act, f64(padded[i:i + batch]), order))
         for i in range(0, padded.size, batch)]
  return np.concatenate(out)[:n]


_P = 16  # Chebyshev terms per segment


def _direct(act, order, q):
  """The tabulated functions at q (any shape) by direct quadrature: a bad segment's values."""
  q = jnp.asarray(q, dtype=float)
  flat = q.reshape(-1)
  if order is None:
    out = jax.lax.map(lambda qi: _moments(act, qi), flat)
  else:
    out = jax.lax.map(lambda qi: _coefficients(act, qi, order), flat)
  return out.reshape(q.shape + out.shape[-1:])


#: (activation, what) of the tables already reported as partly direct (warned once)
_WARNED: set = set()


def _build(act, order, lo: float, hi: float, width: float, scale, tol: float,
           max_halvings: int = 5):
  """A Table on [ln lo, ln hi] whose per-segment error estimate is below tol·scale.

  The estimate is the size of the last two Chebyshev coefficients of each segment (for
  functions analytic on the segment they decay geometrically, so this bounds the error).
  Segments that do not reach it after `max_halvings` halvings of the width are marked `bad`
  and answered by direct quadrature (with one warning naming the q range and the cost): a
  moment that is not analytic in ln q there, such as E[max(u - 0.5, 0)²] ~ e^(-1/(8q)) as
  q -> 0, or E[sin(u)²] = (1 - e^(-2q))/2, whose integrand oscillates faster than the
  quadrature resolves beyond q ~ 100.
  """
  t0, t1 = math.log(lo), math.log(hi)
  theta = np.pi * (np.arange(_P) + 0.5) / _P
  nodes = np.cos(theta)  # Chebyshev points of the first kind on [-1, 1]
  dct = 2.0 / _P * np.cos(np.outer(np.arange(_P), theta))
  dct[0] *= 0.5
  for _ in range(max_halvings + 1):
    n = int(math.ceil((t1 - t0) / width))
    t = t0 + width * (np.arange(n)[:, None] + 0.5 * (nodes[None, :] + 1.0))
    values = _evaluate(act, np.exp(t.reshape(-1)), order).reshape(n, _P, -1)
    if not np.all(np.isfinite(values)):
      act.check_finite(np.exp(t.reshape(-1))[
          ~np.isfinite(values.reshape(n * _P, -1)).all(axis=-1)])
    coeffs = np.einsum("kp,npf->nkf", dct, values)
    err = np.max(np.abs(coeffs[:, -2:]), axis=1) / scale(values.max(axis=1))
    worst = float(np.max(err))
    if worst <= tol:
      return Table(t0, width, f64(coeffs)), worst
    width /= 2.0
  width *= 2.0
  bad = tuple(int(i) for i in np.nonzero(~(np.max(err, axis=-1) <= tol))[0])
  edges = np.exp(t0 + width * np.array([bad[0], bad[-1] + 1]))
  what = "moments" if order is None else f"Hermite coefficients (order {order})"
  if (act, what) not in _WARNED:
    _WARNED.add((act, what))
    warnings.warn(
        f"activation {act.name!r}: its {what} cannot be interpolated to {tol:g} (worst "
        f"{worst:.1e}) in {len(bad)} of {n} segments, q in [{edges[0]:.2g}, {edges[1]:.2g}]; "
        "there each value is a direct quadrature (a few hundred evaluations of φ per q, "
        "instead of one table lookup: slower, as accurate as the quadrature)",
        RuntimeWarning, stacklevel=4)
  return Table(t0, width, f64(coeffs), bad, functools.partial(_direct, act, order)), worst


@functools.lru_cache(maxsize=16)
def moment_table(act: Numerical, tol: float = 1e-13) -> Table:
  """(M, m, D) of `act` on MOMENT_RANGE, interpolation error below `tol` relative."""
  with jax.enable_x64(True):
    # relative for M and D; E[φ] relative to √M (it may vanish, as for odd φ)
    scale = lambda v: np.maximum(np.stack([v[:, 0], np.sqrt(v[:, 0]), v[:, 2]], -1), 1e-300)  # noqa: E731
    return _build(act, None, *MOMENT_RANGE, 2.0, scale, tol)[0]


def moments(table: Table, q):
  """(M, m, D) at q from the table; below its range linear in q (the moments are analytic at
  q = 0 for the activations here, so the relative error is O(q), below 1e-18)."""
  lo = MOMENT_RANGE[0]
  # value and slope df/dq at the lower end: the first segment's Chebyshev series at x = -1
  c = table.coeffs[0]
  signs = (-1.0) ** jnp.arange(c.shape[0])
  at_lo = jnp.sum(signs[:, None] * c, 0)
  k2 = jnp.arange(c.shape[0]) ** 2.0  # T_k'(-1) = (-1)^(k+1) k², times dx/dq = 2/(width·lo)
  slope = jnp.sum((-signs * k2)[:, None] * c, 0) * 2.0 / (table.width * lo)
  below = at_lo + (q - lo)[..., None] * slope
  return jnp.where((q < lo)[..., None], below, table(q))


moments_jit = jax.jit(moments)


@functools.lru_cache(maxsize=64)
def coefficient_table(act: Numerical, lo: float, hi: float, order: int = ORDER,
                      tol: float = 1e-12) -> Table:
  """a_0 .. a_{order+1} of `act` on [lo, hi], error below `tol`·√M(q)."""
  with jax.enable_x64(True):
    scale = lambda v: np.sqrt(np.maximum(np.sum(v * v, axis=-1, keepdims=True), 1e-300))  # noqa: E731
    return _build(act, order + 1, lo, hi, 2.0, scale, tol)[0]


def mehler(a1, a2, m1, m2, d1, d2, q1, q2, rho, centred: bool):
  """E[φ(u)φ(v)] and E[φ'(u)φ'(v)] from Mehler's series, with bounds on the truncation error.

  a1, a2: Hermite coefficients (..., K + 2) at q1, q2; m, d: the second moments E[φ²], E[φ'²]
  there (for the Parseval tails). `centred` drops a_0 (the covariance of φ, for weight mean).
  Returns (kernel, derivative kernel, kernel bound, derivative bound).
  """
  k = jnp.arange(a1.shape[-1] - 1.0)
  prod = a1 * a2
  kernel_terms = prod[..., :-1]
  deriv_terms = prod[..., 1:] * (k + 1.0) / jnp.sqrt(q1 * q2)[..., None]
  if centred:
    kernel_terms = kernel_terms.at[..., 0].set(0.0)
  tail_k = jnp.sqrt(jnp.maximum(m1 - jnp.sum(a1[..., :-1] ** 2, -1), 0.0)
                    * jnp.maximum(m2 - jnp.sum(a2[..., :-1] ** 2, -1), 0.0))
  b1 = a1[..., 1:] ** 2 * (k + 1.0) / q1[..., None]
  b2 = a2[..., 1:] ** 2 * (k + 1.0) / q2[..., None]
  tail_d = jnp.sqrt(jnp.maximum(d1 - jnp.sum(b1, -1), 0.0) * jnp.maximum(d2 - jnp.sum(b2, -1), 0.0))
  power = jnp.abs(rho) ** (a1.shape[-1] - 1.0)
  return (horner(kernel_terms, rho), horner(deriv_terms, rho), power * tail_k,
          power * tail_d)


def horner(c, x):
  """Σ_k c[..., k] x^k."""
  return polynomial(c)(x)


def polynomial(c):
  """x -> Σ_k c[..., k] x^k, with the coefficients laid out once (highest order first, k on
  the leading axis) so that repeated evaluation in a Newton loop reads them contiguously."""
  terms = jnp.moveaxis(c, -1, 0)[::-1]

  def evaluate(x):
    def step(acc, ck):
      return acc * x + ck, None
    return jax.lax.scan(step, jnp.zeros_like(x), terms)[0]

  return evaluate


@dataclasses.dataclass(frozen=True, eq=False)
class Tabulated(Activation):
  """`base` with its one-dimensional moments from `moment_table` and its dual activation from
  Mehler's series on `coefficient_table` (where given): the same interface as any activation,
  so the fixed-point solvers of `maps` run on it unchanged. Hashed by identity (a static jit
  argument); the `kernel_bound`/`derivative_bound` methods give the truncation bounds."""

  base: Numerical
  moment: Table
  coefficient: Table | None = None
  name: str = "tabulated"

  def __call__(self, x):
    return self.base.fn(x)

  def derivative(self, x):
    return self.base.derivative(x)

  @property
  def sup_square(self):
    return self.base.sup_square

  def _moments(self, q):
    return _tabulated_moments(self, jnp.asarray(q, dtype=float))

  def mean(self, q):
    return self._moments(q)[..., 1]

  def second_moment(self, q):
    return self._moments(q)[..., 0]

  def require_derivative(self):
    self.base.require_derivative()

  def check_finite(self, qs, limit: int = 8):
    self.base.check_finite(qs, limit)

  def derivative_second_moment(self, q):
    self.require_derivative()
    return self._moments(q)[..., 2]

  def _series(self, q1, q2, q12):
    q1, q2, q12 = jnp.broadcast_arrays(*(jnp.asarray(a, dtype=float) for a in (q1, q2, q12)))
    return _tabulated_series(self, q1, q2, q12)

  def kernel(self, q1, q2, q12):
    return self._series(q1, q2, q12)[0]

  def derivative_kernel(self, q1, q2, q12):
    self.require_derivative()
    return self._series(q1, q2, q12)[1]

  def kernel_bound(self, q1, q2, q12):
    return self._series(q1, q2, q12)[2]

  def derivative_bound(self, q1, q2, q12):
    return self._series(q1, q2, q12)[3]


# Compiled once per table (a Tabulated is hashed by identity, and `tabulated` caches them): the
# eager calls (fixed points, a few ρ at a time) took ~0.5 s each op by op.
@functools.partial(jax.jit, static_argnums=0)
def _tabulated_moments(tab: Tabulated, q):
  table = moments(tab.moment, q)
  if tab.base.saturation is None:
    return table
  # Beyond the table (q > 1e17): the large-q expansion of a saturating φ (not the clamp).
  top = MOMENT_RANGE[1]
  return jnp.where((q > top)[..., None], tab.base.asymptotic_moments(jnp.maximum(q, top)),
                   table)


@functools.partial(jax.jit, static_argnums=0)
def _tabulated_series(tab: Tabulated, q1, q2, q12):
  rho = q12 / jnp.sqrt(q1 * q2)
  m1, m2 = _tabulated_moments(tab, q1), _tabulated_moments(tab, q2)
  return mehler(tab.coefficient(q1), tab.coefficient(q2), m1[..., 0], m2[..., 0],
                m1[..., 2], m2[..., 2], q1, q2, rho, centred=False)


def coefficient_range(q):
  """[lo, hi] covering q, widened to powers of ten (so that tables are shared across calls)."""
  lo = 10.0 ** math.floor(math.log10(max(float(np.min(q)), 1e-16)))
  hi = 10.0 ** math.ceil(math.log10(float(np.max(q))) + 1e-12)
  return lo, max(hi, lo * 10)


@functools.lru_cache(maxsize=64)
def tabulated(act: Numerical, lo: float | None = None, hi: float | None = None,
              order: int = ORDER) -> Tabulated:
  """`act` with its moment table and, for lo < hi, its coefficient table on [lo, hi]."""
  coefficient = None if lo is None else coefficient_table(act, lo, hi, order)
  return Tabulated(act, moment_table(act), coefficient, name=act.name)


# ----------------------------------------------------------------------------------------------
# Mehler's series on a whole Gram matrix, with its fallback cascade: the series where its
# truncation bound is below SERIES_TOL, a longer series on the remaining entries, 2-D quadrature
# on the rest (the route of every numerical activation's kernel, `stax.Elementwise`).
# ----------------------------------------------------------------------------------------------
SERIES_TOL = 1e-11  # truncation bound accepted per entry, relative to √(E[·²] E[·²])


_UNROLL = 8  # Horner steps fused per pass over the matrix


@functools.partial(jax.jit, static_argnames=("order",))
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


@functools.partial(jax.jit, static_argnames=("order",))
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


def cascade(todo, by_series, by_quadrature) -> int:
  """The one cascade of every numerically integrated quantity: Mehler's series at each order of
  `ORDERS` in turn, then 2-D quadrature. `todo` is a boolean mask of the items to compute;
  `by_series(order, todo)` computes the items still to do at `order` and returns the mask of
  those whose truncation bound it rejects (a subset of `todo`); `by_quadrature(todo)` computes
  the rest. Returns how many items went to quadrature. Used by the Gram matrices
  (`gram_series`), the phase grid's c* (`phase.phase_diagram`) and the fixed-point solvers
  (`maps.series_layer`).

  >>> import numpy as np
  >>> done = []
  >>> cascade(np.ones(3, bool), lambda order, todo: todo & (np.arange(3) == 2),
  ...         lambda todo: done.append(np.nonzero(todo)[0].tolist()))
  1
  >>> done                # item 2 failed every order's bound
  [[2]]
  """
  todo = np.asarray(todo, bool)
  for order in ORDERS:
    if not todo.any():
      break
    todo = np.asarray(by_series(order, todo), bool)
  left = int(todo.sum())
  if left:
    by_quadrature(todo)
  return left


def gram_series(act, tabulated, q1, q2, rho, symmetric: bool, with_ntk: bool = True):
  """E[φφ] and E[φ'φ'] on the Gram matrix (`cascade`): Mehler's series on the whole matrix
  (Horner's rule fused over it), a longer series on the entries whose truncation bound is
  above SERIES_TOL, 2-D quadrature on those it still fails; on the diagonal of a symmetric
  Gram matrix the 1-D moments. Returns (K, D, moments at q1 and q2, number of entries by 2-D
  quadrature). `with_ntk=False`: D is not needed (zeros; φ may jump)."""
  m1, m2 = (np.array(moments_jit(tabulated.moment, f64(q))) for q in (q1, q2))
  lo, hi = coefficient_range(np.concatenate([q1, q2]))
  kernel, deriv = np.zeros_like(rho), np.zeros_like(rho)

  def rejected(order, i, j, a1, a2, b1, b2):
    """Where the Parseval bound of the series to `order` exceeds SERIES_TOL."""
    power = np.abs(rho[i, j]) ** (order + 1.0)
    bad = power * np.sqrt(_tails(m1[:, 0], a1)[i] * _tails(m2[:, 0], a2)[j]) > SERIES_TOL
    if with_ntk:
      bad |= power * np.sqrt(_tails(m1[:, 2], b1)[i] * _tails(m2[:, 2], b2)[j]) > SERIES_TOL
    return bad

  def by_series(order, todo):
    table = coefficient_table(act, lo, hi, order)
    if order == ORDERS[0]:  # the whole matrix at once (every entry is still to do)
      k, d, a1, a2, b1, b2 = (np.array(v) for v in _dense_series(
          table, f64(q1), f64(q2), f64(rho), order))
      kernel[...], deriv[...] = k, d
      power = np.abs(rho) ** (order + 1.0)
      bad = power * np.sqrt(np.outer(_tails(m1[:, 0], a1), _tails(m2[:, 0], a2))) > SERIES_TOL
      if with_ntk:
        bad |= power * np.sqrt(np.outer(_tails(m1[:, 2], b1), _tails(m2[:, 2], b2))) > SERIES_TOL
      return bad & todo
    i, j = np.nonzero(todo)  # the entries left, one by one
    a1, b1 = (np.asarray(v) for v in _row_coefficients(table, f64(q1), order))
    a2, b2 = (a1, b1) if symmetric else (np.asarray(v) for v in _row_coefficients(
        table, f64(q2), order))
    n = i.size
    pad = lambda v: np.pad(v, (0, (1 << max(n - 1, 0).bit_length()) - n), mode="edge")  # noqa: E731
    k, d = (np.asarray(v)[:n] for v in _entry_series(
        f64(a1), f64(a2), f64(b1), f64(b2), pad(i), pad(j), f64(pad(rho[i, j]))))
    kernel[i, j], deriv[i, j] = k, d
    left = np.zeros_like(todo)
    left[i, j] = rejected(order, i, j, a1, a2, b1, b2)
    return left

  def by_quadrature(todo):  # 2-D quadrature entry by entry
    i, j = np.nonzero(todo)
    q12 = rho[i, j] * np.sqrt(q1[i] * q2[j])
    kernel[i, j] = np.asarray(act.kernel(q1[i], q2[j], q12))
    if with_ntk:
      deriv[i, j] = np.asarray(act.derivative_kernel(q1[i], q2[j], q12))

  todo = np.ones(rho.shape, bool)
  if symmetric:
    np.fill_diagonal(todo, False)
  fallback = cascade(todo, by_series, by_quadrature)
  if symmetric:
    np.fill_diagonal(kernel, m1[:, 0])
    np.fill_diagonal(deriv, m1[:, 2])
  if not with_ntk:
    deriv = np.zeros_like(deriv)
  return kernel, deriv, m1, m2, fallback
