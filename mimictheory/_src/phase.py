"""Phase diagrams over (σw², σb²): q*, χ1, c*, the depth scales, and the critical line χ1 = 1.

The whole grid is one vectorised computation: the fixed-point solvers of `maps` run on arrays
(every grid point iterates in lock-step inside one `lax.while_loop`), in chunks that bound the
memory of numerical activations and drive the progress bar.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src import checks
from mimictheory._src.activations import Numerical
from mimictheory._src.io import progress_bar
from mimictheory._src.maps import (
    BATCH_NORMS, Layer, _chi1, _depth_scales, _eval_point, _newton_cstar, _resolve, _solve_qstar,
    depth_scale)
from mimictheory._src.precision import f64, float64

__all__ = ["PhaseDiagram", "phase_diagram", "CriticalLine", "critical_line"]


@dataclasses.dataclass(frozen=True)
class PhaseDiagram:
  """Mean-field quantities on the grid sw2 × sb2; every field but the axes has shape (n_w, n_b).

  qstar: variance fixed point (∞ where the variance diverges); chi1: σw² E[φ'²] at q*;
  cstar: stable correlation fixed point; chi_c: T'(c*); xi_c, xi_q: depth scales (∞ at
  criticality). `critical` is the exact line χ1 = 1 (see `critical_line`).
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
  critical: "CriticalLine | None"

  def arrays(self) -> dict:
    """The numeric fields, e.g. for `np.savez`."""
    out = {k: getattr(self, k) for k in ("sw2", "sb2", "qstar", "chi1", "cstar", "chi_c",
                                         "xi_c", "xi_q")}
    if self.critical is not None:
      out.update(critical_sb2=self.critical.sb2, critical_sw2=self.critical.sw2,
                 critical_exists=self.critical.exists)
    return out


@jax.jit
def _phase_chunk(layer: Layer):
  q, c, chi_q, chi_c = _depth_scales(layer)
  return q, _chi1(layer, q), c, chi_c, depth_scale(chi_c), depth_scale(chi_q)


def _hermite_coefficients(act: Numerical, q, order: int):
  """a_k = E[φ(√q z) He_k(z)] / √k!, k = 0..order, by 1-D quadrature (shape q.shape + (K+1,)).

  Mehler's formula gives E[φ(u)φ(v)] = Σ_k a_k² c^k for (u, v) of variance q and correlation
  c; weight mean and BN remove a_0² = (E φ)². The wider cutoff keeps He_k(z) e^(-z²/2)
  negligible at the ends for k <= 64.
  """
  wide = dataclasses.replace(act, cutoff=16.0, panels=64)

  def one(qi):
    z, w = wide._panel_nodes(wide._breaks(wide._kinks_at(jnp.sqrt(qi))))
    fw = w * act.fn(jnp.sqrt(qi) * z)

    def step(carry, k):  # orthonormal recurrence h_{k+1} = (z h_k - √k h_{k-1}) / √(k+1)
      h_prev, h = carry
      h_next = (z * h - jnp.sqrt(k) * h_prev) / jnp.sqrt(k + 1.0)
      return (h, h_next), jnp.sum(fw * h)

    _, a = jax.lax.scan(step, (jnp.zeros_like(z), jnp.ones_like(z)), jnp.arange(order + 1.0))
    return a

  return jax.lax.map(one, q.reshape(-1), batch_size=256).reshape(q.shape + (order + 1,))


@partial(jax.jit, static_argnames=("order",))
def _phase_chunk_series(layer: Layer, order: int = 64):
  """As `_phase_chunk`, with c* and T'(c*) from the Mehler series (no 2-D integrals)."""
  q = _solve_qstar(layer)
  q_eval, lay = _eval_point(layer, q)
  a2 = jnp.square(_hermite_coefficients(layer.activation, q_eval, order))
  if layer.norm != "none":
    a2 = a2.at[..., 0].set(0.0)  # centring removes (E φ)²
  k = jnp.arange(order + 1.0)
  scale = 1.0 if layer.norm in BATCH_NORMS else lay.sw2 * lay.factor
  shift = 0.0 if layer.norm in BATCH_NORMS else lay.sb2
  cov = lambda c: scale * jnp.sum(a2 * c[..., None] ** k, -1) + shift
  dcov = lambda c: scale * jnp.sum(a2[..., 1:] * k[1:] * c[..., None] ** (k[1:] - 1), -1)
  norm = cov(jnp.ones_like(q))
  c = _newton_cstar(lambda c: cov(c) / norm, lambda c: dcov(c) / norm, q.shape)
  chi_c = dcov(c) / norm
  chi_q = jnp.where(jnp.isinf(q), jnp.inf, lay.variance_slope(q_eval))
  return q, _chi1(layer, q), c, chi_c, depth_scale(chi_c), depth_scale(chi_q)


def _grid_axis(name, values, positive):
  arr = checks.check_positive(name, values) if positive else checks.check_nonnegative(name, values)
  arr = np.atleast_1d(arr).astype(float)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a one-dimensional grid, got shape {arr.shape}")
  return arr


@float64
def phase_diagram(activation="tanh", sw2=None, sb2=None, norm="none", fan_in=None,
                  chunk: int | None = None, progress: bool = False) -> PhaseDiagram:
  """χ1, q*, c*, ξ_c, ξ_q over the grid `sw2` × `sb2`, and the critical line χ1 = 1.

  Args:
    activation, norm, fan_in: as in `correlation_map`.
    sw2, sb2: 1-D grids (defaults: 200 points on [0.5, 4] and 150 on [0, 0.3]).
    chunk: grid points per vectorised chunk (default: the whole grid for closed forms, 4096
      for numerically integrated activations).
    progress: show a progress bar over the chunks.

  >>> import numpy as np, mimictheory as mt
  >>> pd = mt.phase_diagram("relu", sw2=np.array([1.0, 2.0, 3.0]), sb2=np.array([0.0, 0.1]))
  >>> pd.chi1[:, 0].tolist()   # σw²/2 for ReLU (Proposition 1)
  [0.5, 1.0, 1.5]
  """
  sw2 = np.linspace(0.5, 4.0, 200) if sw2 is None else _grid_axis("sw2", sw2, positive=True)
  sb2 = np.linspace(0.0, 0.3, 150) if sb2 is None else _grid_axis("sb2", sb2, positive=False)
  act, _, _, factor = _resolve(activation, 1.0, 0.0, norm, fan_in)
  w, b = (a.reshape(-1) for a in np.meshgrid(sw2, sb2, indexing="ij"))
  numerical = isinstance(act, Numerical)
  if chunk is None:
    chunk = 2048 if numerical else w.size
  chunk = checks.check_int("chunk", chunk, minimum=1)
  chunk = min(chunk, w.size)
  pieces = []
  for start in progress_bar(range(0, w.size, chunk), progress, f"phase diagram ({act.name})"):
    wc, bc = w[start:start + chunk], b[start:start + chunk]
    pad = chunk - wc.size  # pad the last chunk: one compiled shape for all
    wc, bc = np.pad(wc, (0, pad), mode="edge"), np.pad(bc, (0, pad), mode="edge")
    layer = Layer(act, norm, f64(wc), f64(bc), f64(factor))
    out = _phase_chunk_series(layer) if numerical else _phase_chunk(layer)
    pieces.append([np.asarray(o)[:chunk - pad] for o in out])
  fields = [np.concatenate(p).reshape(sw2.size, sb2.size) for p in zip(*pieces)]
  critical = None if norm in BATCH_NORMS else critical_line(act, sb2, norm, fan_in)
  return PhaseDiagram(act.name, norm, sw2, sb2, *fields, critical)


# ----------------------------------------------------------------------------------------------
# The critical line.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CriticalLine:
  """For each σb²: the σw² with χ1 = 1 and its q*; `exists` is False where there is none."""

  sb2: np.ndarray
  sw2: np.ndarray
  qstar: np.ndarray
  exists: np.ndarray


def _on_critical_line(act, norm, factor, q):
  """(σw², σb²) whose fixed point is q and χ1 = 1: σw² = 1/(f E[φ'²]), σb² = q - σw² A(q)."""
  sw2 = 1.0 / (factor * act.derivative_second_moment(q))
  moment = act.second_moment(q) if norm == "none" else act.variance(q)
  return sw2, q - sw2 * factor * moment


@partial(jax.jit, static_argnames=("act", "norm", "steps"))
def _critical_bisect(act, norm, factor, target, steps: int = 120):
  lo, hi = jnp.full(target.shape, -30.0), jnp.full(target.shape, 8.0)  # log q bracket
  g = lambda s: _on_critical_line(act, norm, factor, jnp.exp(s))[1] - target
  g_lo, g_hi = g(lo), g(hi)
  exists = (g_lo <= 1e-12) & (g_hi >= 0)  # σb² -> 0 as q -> 0, up to rounding

  def body(_, state):
    lo, hi = state
    mid = 0.5 * (lo + hi)
    up = g(mid) < 0
    return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

  lo, hi = jax.lax.fori_loop(0, steps, body, (lo, hi))
  q = jnp.exp(0.5 * (lo + hi))
  return _on_critical_line(act, norm, factor, q)[0], q, exists


@float64
def critical_line(activation="tanh", sb2=None, norm="none", fan_in=None) -> CriticalLine:
  """The critical line χ1 = 1 as σw²(σb²), exactly (no grid): parametrised by q*.

  On the line, χ1 = σw² f E[φ'(√q z)²] = 1 and V(q) = q give σw² and σb² as functions of q*;
  each σb² is matched by bisection in log q*. For positively homogeneous φ (ReLU) χ1 does not
  depend on q* and the line is σw² = 1/(f E[φ'(z)²]) (= 2 for ReLU, Proposition 1). Batch
  norm has no critical line: its χ1 does not depend on (σw², σb²).

  >>> import mimictheory as mt
  >>> line = mt.critical_line("tanh", sb2=[0.0, 0.05])
  >>> [round(float(v), 6) for v in line.sw2]        # σw² = 1 at σb² = 0 (tanh'(0) = 1)
  [1.0, 1.760955]
  """
  act, _, _, factor = _resolve(activation, 1.0, 0.0, norm, fan_in)
  if norm in BATCH_NORMS:
    raise ValueError(f"norm={norm!r} has no critical line: its chi1 does not depend on "
                     "(sw2, sb2); use norm 'none' or 'weight_mean'")
  sb2 = np.linspace(0.0, 0.3, 150) if sb2 is None else _grid_axis("sb2", sb2, positive=False)
  target = f64(sb2)
  if act.homogeneity == 1:
    sw2 = 1.0 / (factor * act.derivative_second_moment(f64(1.0)))
    sw2 = jnp.full(target.shape, sw2)
    moment = act.second_moment(f64(1.0)) if norm == "none" else act.variance(f64(1.0))
    slope = sw2 * factor * moment  # V(q) = slope · q + σb² for homogeneous φ
    q = jnp.where(slope < 1, target / jnp.where(slope < 1, 1 - slope, 1.0), jnp.inf)
    q = jnp.where((slope >= 1) & (target == 0), 1.0, q)
    exists = jnp.ones(target.shape, bool)
  else:
    sw2, q, exists = _critical_bisect(act, norm, f64(factor), target)
  exists = np.asarray(exists)
  return CriticalLine(sb2, np.where(exists, np.asarray(sw2), np.nan),
                      np.where(exists, np.asarray(q), np.nan), exists)
