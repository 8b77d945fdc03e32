"""Phase diagrams over (σw², σb²): q*, χ1, c*, the depth scales, the regime of every cell, and
the critical line χ1 = 1.

The whole grid is one vectorised computation: the fixed-point solvers of `maps` run on arrays
(every grid point iterates in lock-step inside one `lax.while_loop`), in chunks that bound the
memory and drive the progress bar. For numerically integrated activations the solvers run on
one-dimensional tables (module `tables`): the moments M, m, D and the Hermite coefficients
a_k depend on q only, so they are tabulated once over ln q with error control, and c* comes
from Mehler's series with a truncation bound; the cells where the bound is not small enough
(kinked φ just past the critical line, where c* -> 1) are recomputed by 2-D quadrature.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src import checks
from mimictheory._src import tables
from mimictheory._src.io import progress_bar
from mimictheory._src.maps import (
    COLLAPSED, CONVERGED, DIVERGED, NOT_CONVERGED, Q_MAX, Q_MIN, Layer, limit_point,
    newton_cstar, resolve_arguments, slope_at_cstar, slope_at_one, solve_cstar, solve_qstar_status,
    zero_is_fixed, depth_scale)
from mimictheory._src.norms import rule
from mimictheory._src.precision import concrete_only, f64, float64

__all__ = ["PhaseDiagram", "phase_diagram", "CriticalLine", "critical_line", "REGIMES"]

#: The regime of a cell (`PhaseDiagram.regime` holds the index).
REGIMES = ("ordered", "critical", "chaotic", "q* = 0", "q* = ∞", "not converged")
ORDERED, CRITICAL, CHAOTIC, ZERO, INFINITE, UNCONVERGED = range(6)
CRITICAL_TOL = 1e-10  # |χ1 - 1| below this counts as critical
# Mehler truncation bounds accepted for T(c*) and T'(c*). c* itself is ill-conditioned near
# the critical line (an error δ in T moves it by δ / (1 - T'(c*))) whatever the method, so the
# series is accepted where it is as accurate as the 2-D quadrature (~1e-13).
_SERIES_TOL_T, _SERIES_TOL = 1e-13, 1e-11


@dataclasses.dataclass(frozen=True)
class PhaseDiagram:
  """Mean-field quantities on the grid sw2 × sb2; every field but the axes has shape (n_w, n_b).

  qstar: variance fixed point reached from q = 1 (0 or ∞ at the ends); chi1: the gradient
  growth per layer σw² f E[φ'(√q* z)²]; cstar: the stable correlation fixed point; chi_c: T'(c*)
  (equal to χ1 where c* = 1 and 0 < q* < ∞, but 1 where q* is 0 or ∞: there the correlation map
  is marginal whatever χ1 is); xi_c, xi_q: depth scales (∞ at criticality); regime: index into
  `REGIMES` (ordered, critical, chaotic, q* = 0, q* = ∞, not converged). `critical` is the
  line χ1 = 1 (see `critical_line`); `fallback` counts the cells whose c* needed 2-D quadrature.

  >>> import numpy as np, mimictheory as mt
  >>> pd = mt.phase_diagram("erf", sw2=[0.5, 3.0], sb2=[0.05])
  >>> [mt.REGIMES[r] for r in pd.regime[:, 0]]
  ['ordered', 'chaotic']
  """

  activation: str
  norm: str
  sw2: np.ndarray
  sb2: np.ndarray
  qstar: np.ndarray
  chi1: np.ndarray
  cstar: np.ndarray
  chi_c: np.ndarray
  xi_c: np.ndarray
  xi_q: np.ndarray
  regime: np.ndarray
  critical: "CriticalLine | None"
  fallback: int = 0

  def arrays(self) -> dict:
    """The numeric fields, e.g. for `np.savez` (with `regime_names` to read `regime`)."""
    out = {k: getattr(self, k) for k in ("sw2", "sb2", "qstar", "chi1", "cstar", "chi_c",
                                         "xi_c", "xi_q", "regime")}
    out["regime_names"] = np.asarray(REGIMES)
    if self.critical is not None:
      out.update(critical_sb2=self.critical.sb2, critical_sw2=self.critical.sw2,
                 critical_exists=self.critical.exists)
    return out


def _regime(status, chi1):
  by_chi = jnp.where(jnp.abs(chi1 - 1.0) <= CRITICAL_TOL, CRITICAL,
                     jnp.where(chi1 < 1.0, ORDERED, CHAOTIC))
  return jnp.select([status == COLLAPSED, status == DIVERGED, status == NOT_CONVERGED],
                    [ZERO, INFINITE, UNCONVERGED], by_chi)


# q* iterations for the whole grid; the few cells still moving (slow, linear convergence near
# q* = 0 or near the divergence boundary) continue alone, so a chunk is not held up by them.
_FIRST_PASS = 24


@partial(jax.jit, static_argnames=("max_iter",))
def _variance_fields(layer: Layer, q0=1.0, max_iter: int = 400):
  """q*, its status, χ1, χ_q = V'(q*) and T'(1), all from one-dimensional integrals; q* by
  the iteration from q0 (an iterate of the one from 1, when resumed)."""
  q, status = solve_qstar_status(layer, q0, max_iter)
  q_eval, lay = limit_point(layer, q)
  chi1 = lay.diagonal_slope(q_eval)
  chi_q = jnp.where(jnp.isinf(q), jnp.inf, lay.variance_slope(q_eval))
  return q, status, chi1, chi_q, slope_at_one(layer, q)


@partial(jax.jit, static_argnames=("max_iter",))
def _correlation_fields(layer: Layer, q, start=None, max_iter: int = 100):
  """c* and T'(c*) by the layer's own kernels (closed forms or 2-D quadrature), Newton from
  `start` (an estimate, e.g. the truncated series') or from 0."""
  c = solve_cstar(layer, q, start, max_iter)
  return c, slope_at_cstar(layer, q, c)


@jax.jit
def _series_fields(layer: Layer, q):
  """c* and T'(c*) from Mehler's series at each cell's q* (layer.activation: a `Tabulated` with
  coefficients), and whether the truncation bounds on T and T' are below _SERIES_TOL_T and
  _SERIES_TOL (then the series is as accurate as the 2-D quadrature it replaces).

  T(c) = (s Σ_k a_k² c^k + shift) / V and T'(c) = s Σ_k (k+1) a_{k+1}² c^k / V (eq 3 with
  Mehler's formula; a_0 dropped for weight mean and BN), s = σw² f, shift = σb²; for BN
  s = 1 / Var φ, shift = 0, V = 1.
  """
  act = layer.activation
  q_eval, lay = limit_point(layer, q)
  a = act.coefficient(q_eval)
  k = jnp.arange(a.shape[-1] - 1.0)
  terms = jnp.square(a[..., :-1])
  if layer.rule.centred:
    terms = terms.at[..., 0].set(0.0)  # centring removes (E φ)²
  slope_terms = jnp.square(a[..., 1:]) * (k + 1.0)  # E[φ'φ'] = Σ (k+1) a_{k+1}² c^k / q
  bn = layer.rule.normalised
  s = 1.0 / act.variance(q_eval) if bn else lay.sw2 * lay.factor
  shift = 0.0 if bn else lay.sb2
  v = lay.variance_map(q_eval)
  kernel, slope = tables.polynomial(terms), tables.polynomial(slope_terms)
  tmap = lambda c: (s * kernel(c) + shift) / v  # noqa: E731
  tslope = lambda c: s * slope(c) / v  # noqa: E731
  slope_one = slope_at_one(layer, q)
  c = newton_cstar(tmap, tslope, jnp.shape(q), slope_one)
  chi_c = jnp.where(c == 1.0, slope_one, tslope(c))
  power = c ** (a.shape[-1] - 1.0)  # Parseval tails of the series beyond order K
  tail_t = jnp.maximum(act.second_moment(q_eval) - jnp.sum(jnp.square(a[..., :-1]), -1), 0.0)
  tail_d = jnp.maximum(act.derivative_second_moment(q_eval) - jnp.sum(slope_terms, -1) / q_eval,
                       0.0)
  err_t = s * power * tail_t / v
  err_slope = s * power * tail_d * q_eval / v
  ok = (c == 1.0) | ((err_t <= _SERIES_TOL_T) & (err_slope <= _SERIES_TOL))
  return c, chi_c, ok


def grid_axis(name, values, positive):
  arr = checks.check_positive(name, values) if positive else checks.check_nonnegative(name, values)
  arr = np.atleast_1d(arr).astype(float)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"{name} must be a one-dimensional grid of at least one value, got shape "
                     f"{arr.shape}")
  return arr


def _chunks(n: int, chunk: int):
  return range(0, n, chunk)


def _padded(a, start, chunk):
  """a[start:start + chunk], padded with its last value to `chunk` (one compiled shape)."""
  piece = a[start:start + chunk]
  return np.pad(piece, (0, chunk - piece.size), mode="edge"), piece.size


def _map_chunks(fn, arrays, chunk, progress, desc):
  """fn(*padded chunks) over the flat `arrays`; concatenated NumPy outputs."""
  n = arrays[0].size
  pieces = []
  for start in progress_bar(_chunks(n, chunk), progress, desc):
    padded = [_padded(a, start, chunk) for a in arrays]
    size = padded[0][1]
    out = fn(*(p for p, _ in padded))
    pieces.append([np.asarray(o)[:size] for o in out])
  return [np.concatenate(p) for p in zip(*pieces)]


@concrete_only
@float64
def phase_diagram(activation="relu", sw2=None, sb2=None, norm="none", fan_in=None,
                  chunk: int | None = None, progress: bool = False) -> PhaseDiagram:
  """χ1, q*, c*, ξ_c, ξ_q and the regime over the grid `sw2` × `sb2`, and the critical line.

  Regimes (`REGIMES`): ordered (χ1 < 1), critical (abs(χ1 - 1) <= 1e-10), chaotic (χ1 > 1), q* = 0
  (the variance collapses: σb² = 0 with φ(0) = 0 or weight mean, and V'(0) <= 1), q* = ∞ (it
  diverges past 1e12: ReLU with σw² > 2), not converged. q* is the fixed point the variance
  map reaches from q = 1. Numerically integrated activations run on one-dimensional tables
  with c* from Mehler's series (see the module docstring); closed forms are exact.

  Args:
    activation, norm, fan_in: as in `correlation_map`.
    sw2, sb2: 1-D grids (defaults: 200 points on [0.5, 4] and 150 on [0, 0.3]).
    chunk: grid points per vectorised chunk (default 65536).
    progress: show a progress bar over the chunks.

  >>> import numpy as np, mimictheory as mt
  >>> pd = mt.phase_diagram("relu", sw2=np.array([1.0, 2.0, 3.0]), sb2=np.array([0.0, 0.1]))
  >>> pd.chi1[:, 0].tolist()   # σw²/2 for ReLU (Proposition 1)
  [0.5, 1.0, 1.5]
  >>> [mt.REGIMES[r] for r in pd.regime[:, 0]]   # σb² = 0: q* = 0 below σw² = 2, ∞ above
  ['q* = 0', 'critical', 'q* = ∞']
  """
  sw2 = np.linspace(0.5, 4.0, 200) if sw2 is None else grid_axis("sw2", sw2, positive=True)
  sb2 = np.linspace(0.0, 0.3, 150) if sb2 is None else grid_axis("sb2", sb2, positive=False)
  act, _, _, factor = resolve_arguments(activation, 1.0, 0.0, norm, fan_in)
  norm = rule(norm).name  # one spelling ("bn": "batch_norm")
  cells = sw2.size * sb2.size  # the fields, their flat copies and the meshgrid: ~24 per cell
  checks.check_memory("phase_diagram", 8.0 * 24 * cells, f"{sw2.size} x {sb2.size} cells, "
                      "24 float64 values each", "use a coarser grid, or split it")
  w, b = (a.reshape(-1) for a in np.meshgrid(sw2, sb2, indexing="ij"))
  chunk = checks.check_int("chunk", 65536 if chunk is None else chunk, minimum=1)
  chunk = min(chunk, w.size)
  numerical = not act.closed_form
  base = tables.tabulated(act) if numerical else act
  layer = lambda a, ws, bs: Layer(a, norm, f64(ws), f64(bs), f64(factor))  # noqa: E731
  desc = f"phase diagram ({act.name})"
  fields = _map_chunks(lambda ws, bs: _variance_fields(layer(base, ws, bs), 1.0, _FIRST_PASS),
                      [w, b], chunk, progress, desc)
  slow = np.nonzero(fields[1] == NOT_CONVERGED)[0]
  if slow.size:
    resumed = _map_chunks(lambda ws, bs, qs: _variance_fields(layer(base, ws, bs), f64(qs)),
                          [w[slow], b[slow], fields[0][slow]], min(chunk, slow.size), progress,
                          desc + ", slow cells")
    for field, values in zip(fields, resumed):
      field[slow] = values
  q, status, chi1, chi_q, slope_one = fields
  cstar, chi_c = np.ones_like(q), slope_one.copy()
  fallback = 0
  # c* < 1 only where T'(1) > 1 at a finite q*; elsewhere c* = 1 and χ_c = T'(1).
  open_ = (slope_one > 1.0 + 1e-12) & np.isfinite(q) & (q > 0)
  if open_.any() and numerical:  # Mehler's series, longer where needed, then 2-D quadrature

    def by_series(order, todo):
      idx = np.nonzero(todo)[0]
      series = tables.tabulated(act, *tables.coefficient_range(q[idx]), order)
      c, s, ok = _map_chunks(lambda ws, bs, qs: _series_fields(layer(series, ws, bs), f64(qs)),
                             [w[idx], b[idx], q[idx]], min(chunk, idx.size), progress,
                             f"{desc}, Mehler order {order}")
      cstar[idx], chi_c[idx] = c, s
      left = np.zeros_like(todo)
      left[idx[~ok]] = True
      return left

    def by_quadrature(todo):  # from the series' estimate Newton converges quadratically
      idx = np.nonzero(todo)[0]
      c, s = _map_chunks(
          lambda ws, bs, qs, cs: _correlation_fields(layer(act, ws, bs), f64(qs), f64(cs), 3),
          [w[idx], b[idx], q[idx], cstar[idx]], min(chunk, 256, idx.size), progress,
          desc + ", pointwise kernels")
      cstar[idx], chi_c[idx] = c, s

    fallback = tables.cascade(open_, by_series, by_quadrature)
  elif open_.any():  # closed forms
    idx = np.nonzero(open_)[0]
    c, s = _map_chunks(lambda ws, bs, qs: _correlation_fields(layer(act, ws, bs), f64(qs)),
                       [w[idx], b[idx], q[idx]], chunk, progress, desc)
    cstar[idx], chi_c[idx] = c, s
  regime = np.asarray(_regime(status, chi1))
  fields = [a.reshape(sw2.size, sb2.size) for a in
            (q, chi1, cstar, chi_c, np.asarray(depth_scale(chi_c)),
             np.asarray(depth_scale(chi_q)), regime)]
  critical = None if rule(norm).normalised else critical_line(act, sb2, norm, fan_in)
  return PhaseDiagram(act.name, norm, sw2, sb2, *fields, critical, fallback)


# ----------------------------------------------------------------------------------------------
# The critical line.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CriticalLine:
  """The critical line χ1 = 1 as σw²(σb²).

  sb2: the σb² grid. sw2, qstar: the critical σw² and its q* on the branch the phase diagram
  sees (its fixed point is the one reached from q = 1; the smallest σw² if several are), NaN
  where `exists` is False. branch_sw2, branch_qstar (n_b, B): every solution of χ1 = 1 and
  V(q*) = q* found by the scan, NaN-padded; branch_reached: whether the variance map reaches
  that q* from q = 1 (False: a fixed point that the iteration does not find, so the grid's χ1
  is not 1 there).

  >>> import mimictheory as mt
  >>> line = mt.critical_line("erf", sb2=[0.0, 0.05])
  >>> [round(float(s), 4) for s in line.sw2]   # π/4 at σb² = 0
  [0.7854, 1.3758]
  """

  sb2: np.ndarray
  sw2: np.ndarray
  qstar: np.ndarray
  exists: np.ndarray
  branch_sw2: np.ndarray | None = None
  branch_qstar: np.ndarray | None = None
  branch_reached: np.ndarray | None = None


def _on_critical_line(act, norm, factor, q):
  """(σw², σb²) whose fixed point is q with χ1 = 1: σw² = 1/(f E[φ'²]), σb² = q - σw² f A(q)."""
  sw2 = 1.0 / (factor * act.derivative_second_moment(q))
  return sw2, q - sw2 * factor * rule(norm).moment(act, q)


_SCAN = np.logspace(math.log10(Q_MIN) + 1, math.log10(Q_MAX) - 1, 4001)  # q* scanned for roots


def _bucket(*arrays):
  """Pad 1-D arrays with their last value to the next power of two (few compiled shapes)."""
  n = arrays[0].size
  size = 1 << max(n - 1, 0).bit_length()
  return [np.pad(a, (0, size - n), mode="edge") for a in arrays]


def _scan_roots(act, norm, factor, target):
  """Every q with σb²(q) = target on the critical line: sign changes on _SCAN, then bisection
  in ln q on the table. Returns (target index, q) of all roots."""
  line_sb2 = np.asarray(_line_jit(act, norm, factor, f64(_SCAN))[1])
  g = line_sb2[None, :] - target[:, None]
  rows, cols = np.nonzero(np.sign(g[:, :-1]) * np.sign(g[:, 1:]) < 0)
  lo, hi = np.log(_SCAN[cols]), np.log(_SCAN[cols + 1])
  if rows.size:
    n = rows.size
    lo, hi = (np.asarray(a)[:n] for a in _bisect_line(act, norm, factor,
                                                      *map(f64, _bucket(target[rows], lo, hi))))
  return rows, np.exp(0.5 * (lo + hi))


@partial(jax.jit, static_argnames=("act", "norm"))
def _line_jit(act, norm, factor, q):
  return _on_critical_line(act, norm, factor, q)


@partial(jax.jit, static_argnames=("act", "norm"))
def _bisect_line(act, norm, factor, target, lo, hi):
  g = lambda s: _on_critical_line(act, norm, factor, jnp.exp(s))[1] - target  # noqa: E731
  up = g(lo) < 0

  def body(_, state):
    lo, hi = state
    mid = 0.5 * (lo + hi)
    below = (g(mid) < 0) == up
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  return jax.lax.fori_loop(0, 100, body, (lo, hi))



@concrete_only
@float64
def critical_line(activation="relu", sb2=None, norm="none", fan_in=None) -> CriticalLine:
  """The critical line χ1 = 1 as σw²(σb²), with every branch: parametrised by q*.

  On the line, χ1 = σw² f E[φ'(√q z)²] = 1 and V(q) = q give σw² and σb² as functions of q*;
  every sign change of σb²(q*) - σb² over q* in [1e-13, 1e11] is a branch, refined by
  bisection (on the moment table for numerical activations). A branch point is on the grid's
  line only if its q* is the fixed point reached from q = 1 (`branch_reached`); `sw2` is that
  one. At σb² = 0 the line ends at q* = 0 where V(0) = 0 (σw² = 1/(f φ'(0)²); 1 for tanh).
  For positively homogeneous φ (ReLU) χ1 does not depend on q* and the line is σw² = 1/(f
  E[φ'(z)²]) (= 2 for ReLU, Proposition 1). Batch norm has no critical line: its χ1 does not
  depend on (σw², σb²).

  >>> import mimictheory as mt
  >>> line = mt.critical_line("tanh", sb2=[0.0, 0.05])
  >>> [round(float(v), 6) for v in line.sw2]        # σw² = 1 at σb² = 0 (tanh'(0) = 1)
  [1.0, 1.760955]
  """
  act, _, _, factor = resolve_arguments(activation, 1.0, 0.0, norm, fan_in)
  norm = rule(norm).name  # one spelling ("bn": "batch_norm")
  if rule(norm).normalised:
    raise ValueError(f"norm={norm!r} has no critical line: its chi1 does not depend on "
                     "(sw2, sb2); use norm 'none' or 'weight_mean'")
  sb2 = np.linspace(0.0, 0.3, 150) if sb2 is None else grid_axis("sb2", sb2, positive=False)
  target = f64(sb2)
  if act.homogeneity == 1:
    sw2 = 1.0 / (factor * act.derivative_second_moment(f64(1.0)))
    sw2 = jnp.full(target.shape, sw2)
    slope = sw2 * factor * rule(norm).moment(act, f64(1.0))  # V(q) = slope·q + σb², homogeneous
    q = jnp.where(slope < 1, target / jnp.where(slope < 1, 1 - slope, 1.0), jnp.inf)
    q = jnp.where((slope >= 1) & (target == 0), 1.0, q)
    exists = np.ones(target.shape, bool)
    return CriticalLine(sb2, np.asarray(sw2), np.asarray(q), exists)
  tab = act if act.closed_form else tables.tabulated(act)
  # Where V(0) = 0, σb²(q*) -> 0 as q* -> 0 and the σb² = 0 row would see rounding noise as
  # roots: its only point is the end point below.
  zero_fixed = rule(norm).centred or float(act(f64(0.0))) == 0.0
  scan = np.nonzero(~((sb2 == 0) & zero_fixed))[0]
  rows, roots = _scan_roots(tab, norm, f64(factor), np.asarray(sb2[scan]))
  rows = scan[rows]
  line_sw2 = np.asarray(_line_jit(tab, norm, f64(factor), f64(roots))[0])
  if zero_fixed and np.any(sb2 == 0):  # the end point q* -> 0, where V(0) = 0
    zero = np.nonzero(sb2 == 0)[0]
    edge = float(_line_jit(tab, norm, f64(factor), f64(Q_MIN * 1e-3))[0])
    rows = np.concatenate([rows, zero])
    roots = np.concatenate([roots, np.zeros(zero.size)])
    line_sw2 = np.concatenate([line_sw2, np.full(zero.size, edge)])
  reached = np.zeros(rows.size, bool)
  if rows.size:
    n = rows.size
    padded_sw2, padded_sb2 = _bucket(line_sw2, sb2[rows])
    layer = Layer(tab, norm, f64(padded_sw2), f64(padded_sb2), f64(factor))
    q_r, status = (np.asarray(a)[:n] for a in solve_qstar_status(layer))
    zero_fixed = np.asarray(zero_is_fixed(layer))[:n]
    reached = np.where(roots == 0, (status == COLLAPSED) & zero_fixed,
                       (status == CONVERGED) & (np.abs(q_r - roots) <= 1e-6 * roots))
  width = max(1, int(np.bincount(rows, minlength=sb2.size).max()) if rows.size else 1)
  branch_sw2 = np.full((sb2.size, width), np.nan)
  branch_q, branch_reached = branch_sw2.copy(), np.zeros((sb2.size, width), bool)
  order = np.lexsort((line_sw2, rows))
  slot = np.zeros(sb2.size, int)
  for k in order:  # a handful of roots per σb²: bookkeeping only
    r = rows[k]
    branch_sw2[r, slot[r]], branch_q[r, slot[r]] = line_sw2[k], roots[k]
    branch_reached[r, slot[r]] = reached[k]
    slot[r] += 1
  first = np.argmax(branch_reached, axis=1)
  exists = branch_reached.any(axis=1)
  pick = lambda a: np.where(exists, a[np.arange(sb2.size), first], np.nan)  # noqa: E731
  return CriticalLine(sb2, pick(branch_sw2), pick(branch_q), exists, branch_sw2, branch_q,
                      branch_reached)
