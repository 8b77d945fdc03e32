"""Exact batch norm at a finite batch: the NNGP and NTK maps of one BN layer, and χ1(B).

A real BN layer normalises every unit by its own batch statistics. For a batch of B inputs
whose pre-activations h (one unit, over the batch) are N(0, K), with G = I - 11ᵀ/B, g = G h
and r = |g| (Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz, "A mean field theory of batch
normalization", ICLR 2019):

    ĥ = √B g / r,                              (each unit: batch mean 0, batch variance 1)
    K' = σw² E[φ(ĥ) φ(ĥ)ᵀ] + σb²,              (NNGP of the next dense layer)
    Θ' = K' + σw² E[D J Θ Jᵀ D],               (NTK, the gradient through mean and variance)

with D = diag φ'(ĥ) and J = ∂ĥ/∂h = (√B / r) (G - ĝ ĝᵀ), ĝ = g / r.

Positively homogeneous activations φ(x) = a x + b max(x, 0) (ReLU, leaky ReLU, identity) are
computed exactly. Writing 1/r^(2m) = ∫₀^∞ s^(m-1) e^(-s r²) ds / Γ(m) and integrating the
Gaussian turns every expectation into a one-dimensional integral over s,

    E[r^(-2m) F(g)] = ∫₀^∞ s^(m-1)/Γ(m) det(I + 2sS)^(-1/2) E_{g ~ N(0, Σ(s))}[F(g)] ds,
    S = G K G,   Σ(s) = S (I + 2sS)^(-1),

whose inner expectations are closed forms: the arc-cosine kernel for the NNGP, and for the NTK
Stein's lemma reduces E[φ'ᵢφ'ⱼ gᵢ (M g)ⱼ] and E[φ'ᵢφ'ⱼ gᵢ gⱼ gᵀMg] (M = G Θ G) to the same
kernels and the truncated moments E[φ'ᵢ gᵢ δ(gⱼ)]. The s integral is the trapezoidal rule in
t = ln s over the range where the integrand is above 1e-16 of its scale; for an integrand that
is analytic in a strip and decays exponentially at both ends the rule converges exponentially,
and the difference to the rule with every other node is returned as an error estimate.

E[r⁻²] is finite only for B ≥ 4 (g lives in B - 1 dimensions), so the NTK and χ1 of a BN
network are infinite for batches of 2 or 3; the NNGP needs B ≥ 2. Other activations are
estimated by Monte Carlo over the per-unit normalisation (`monte_carlo_step`), with a standard
error from independent replicas.

χ1(B), the growth per layer of the NTK and of the squared gradient (Yang et al.'s gradient
explosion), is taken at the permutation-symmetric fixed point S ∝ G, where ĝ is uniform on a
sphere and independent of r: a one-dimensional s integral on two matrix entries for
φ = a x + b relu(x) (`symmetric_chi1`), a two-dimensional quadrature for any other φ
(`sphere_chi1`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src.activations import (
    Activation, Identity, LeakyReLU, ReLU, kernel_duals, root_one_minus_square)

__all__ = ["homogeneous_coefficients", "exact_step", "adaptive_step", "nodes_for_batch",
           "monte_carlo_step", "normalise_full_batch", "symmetric_chi1", "sphere_chi1", "NODES",
           "MIN_BATCH_NTK"]

NODES = 193  # trapezoid nodes in ln s (odd: the coarse rule uses every other node)
MIN_BATCH_NTK = 4  # E[1/r²] < ∞ needs g in at least 3 dimensions
_TAIL = 37.0  # the integrand is cut where it falls below e^-37 ≈ 1e-16 of its scale
_TWO_PI = 2.0 * math.pi


def homogeneous_coefficients(act: Activation):
  """(a, b) with φ(x) = a x + b max(x, 0), or None if φ is not of that form."""
  if isinstance(act, ReLU):
    return 0.0, 1.0
  if isinstance(act, Identity):
    return 1.0, 0.0
  if isinstance(act, LeakyReLU):
    return act.slope, 1.0 - act.slope
  return None


# ----------------------------------------------------------------------------------------------
# Entrywise Gaussian expectations for g ~ N(0, Σ), φ(x) = a x + b relu(x).
# ----------------------------------------------------------------------------------------------
def _pair(sig, d_i, d_j):
  """ρ and √(Σᵢᵢ Σⱼⱼ) for every entry; ρ = 0 where a variance is 0."""
  root = jnp.sqrt(d_i * d_j)
  rho = jnp.where(root > 0, sig / jnp.where(root > 0, root, 1.0), 0.0)
  return jnp.clip(rho, -1.0, 1.0), root


def _expectations(a, b, sig, d_i, d_j):
  """k = E[φᵢφⱼ], e = E[φ'ᵢφ'ⱼ], c = E[φ'ᵢ gᵢ φ''ⱼ] (the δ(gⱼ) term of Stein's lemma)."""
  rho, root = _pair(sig, d_i, d_j)
  value, slope = kernel_duals(rho)
  sine = root_one_minus_square(rho)
  k = (a * a + a * b) * sig + b * b * root * value
  e = a * a + a * b + b * b * slope
  # b² E[1(gᵢ>0) gᵢ δ(gⱼ)] = b² √(Σᵢᵢ (1-ρ²)) / (2π √Σⱼⱼ)
  c = b * b * jnp.where(d_j > 0, jnp.sqrt(d_i) * sine / (_TWO_PI * jnp.sqrt(
      jnp.where(d_j > 0, d_j, 1.0))), 0.0)
  return k, e, c


def _ntk_integrand(s, k, e, c, c_t, m, n, n_t, n_ii, n_jj, p, p_ii, p_jj, trace):
  """E[φ'ᵢφ'ⱼ (P Θ P)ᵢⱼ / r²] under the s integral, P = G - ĝĝᵀ, expanded in powers of 1/r²:

      e Mᵢⱼ - s (T2ᵢⱼ + T2ⱼᵢ) + s²/2 T3ᵢⱼ,     T2ᵢⱼ = E[φ'φ' gᵢ (Mg)ⱼ] = Nⱼᵢ e + Nⱼⱼ cᵢⱼ,
      T3ᵢⱼ = E[φ'φ' gᵢ gⱼ gᵀMg] = tr(MΣ) k + 2 Pᵢⱼ e + Pᵢᵢ cⱼᵢ + Pⱼⱼ cᵢⱼ,

  with N = MΣ, P = ΣMΣ (Stein's lemma; c_t is cⱼᵢ, n_t is Nⱼᵢ).
  """
  t2 = n_t * e + n_jj * c + n * e + n_ii * c_t
  t3 = trace * k + 2.0 * p * e + p_ii * c_t + p_jj * c
  return e * m - s * t2 + 0.5 * s * s * t3


# ----------------------------------------------------------------------------------------------
# The exact step for a Gram matrix.
# ----------------------------------------------------------------------------------------------
def _log_det_half(s, lam):
  """½ ln det(I + 2 s S) from the eigenvalues of S."""
  return 0.5 * jnp.sum(jnp.log1p(2.0 * s * lam))


def _upper_limit(log_det_half, trace, with_ntk: bool):
  """t_hi for s = exp(t - e^(-t)) / tr S: where det(I+2sS)^(-1/2) (times s tr S for the NTK's
  s² weight) falls below e^-37. `log_det_half(s)` is ½ ln det(I + 2sS), increasing in s."""

  def excess(t):
    s = jnp.exp(t - jnp.exp(-t)) / trace
    extra = jnp.maximum(jnp.log(s * trace), 0.0) if with_ntk else 0.0
    return log_det_half(s) - extra - _TAIL

  def bisect(_, bracket):
    a, b = bracket
    mid = 0.5 * (a + b)
    up = excess(mid) >= 0
    return jnp.where(up, a, mid), jnp.where(up, mid, b)

  return jax.lax.fori_loop(0, 90, bisect, (jnp.zeros(()), jnp.full((), 400.0)))[1]


def _range(lam, with_ntk: bool):
  """(t_lo, t_hi, s₀) for s = s₀ exp(t - e^(-t)), s₀ = 1/tr S. The map makes the small-s end
  decay double-exponentially (s < e^-37 s₀ below t_lo = -ln 37)."""
  trace = jnp.sum(lam)
  hi = _upper_limit(lambda s: _log_det_half(s, lam), trace, with_ntk)
  return -math.log(_TAIL), hi, 1.0 / trace


def _trapezoid(lo, hi, scale, nodes):
  """Nodes s = scale·exp(t - e^(-t)) and the trapezoid weights ds = s (1 + e^(-t)) dt, for the
  rule on `nodes` points and the coarse rule on every other point."""
  t = jnp.linspace(lo, hi, nodes)
  h = (hi - lo) / (nodes - 1)
  s = scale * jnp.exp(t - jnp.exp(-t))
  jac = s * (1.0 + jnp.exp(-t))
  ends = jnp.ones(nodes).at[0].set(0.5).at[-1].set(0.5)
  coarse_ends = jnp.where(jnp.arange(nodes) % 2 == 0, 2.0, 0.0).at[0].set(1.0).at[-1].set(1.0)
  return s, h * jac * ends, h * jac * coarse_ends


def exact_step(a, b, k, theta, sw2, sb2, same=None, nodes: int = NODES):
  """One exact BN layer for φ(x) = a x + b relu(x): (K, Θ) -> (K', Θ', errors).

  `k`, `theta` are the pre-BN NNGP kernel and NTK of a batch, (B, B); `theta=None` computes
  the NNGP only. `same` (B, B, bool) marks pairs of identical inputs (the diagonal at least):
  their correlation is pinned to 1, where rounding would cost √(1-ρ²) ~ 1e-8. The errors are the
  relative differences to the coarse (every-other-node)
  rule, max |fine - coarse| / max |fine|, for K' and Θ' (a bound for the fine rule's error).
  """
  size = k.shape[0]
  same = jnp.eye(size, dtype=bool) if same is None else same
  g = jnp.eye(size) - 1.0 / size
  s_mat = g @ k @ g
  s_mat = 0.5 * (s_mat + s_mat.T)
  lam, u = jnp.linalg.eigh(s_mat)
  lam = jnp.maximum(lam, 0.0)
  with_ntk = theta is not None
  s_nodes, w_fine, w_coarse = _trapezoid(*_range(lam, with_ntk), nodes)
  if with_ntk:
    m = g @ theta @ g
    m = 0.5 * (m + m.T)
    mu = m @ u
    q_diag = jnp.einsum("ik,ik->k", u, mu)  # diag(Uᵀ M U): tr(M Σ(s)) = Σₖ Qₖₖ λₖ/(1+2sλₖ)

  def node(carry, inputs):
    s, wf, wc = inputs
    scale = lam / (1.0 + 2.0 * s * lam)
    weight = jnp.exp(-_log_det_half(s, lam))
    sig = (u * scale) @ u.T
    sig = 0.5 * (sig + sig.T)
    d = jnp.maximum(jnp.diagonal(sig), 0.0)
    kk, e, c = _expectations(a, b, sig, d[:, None], d[None, :])
    at_one = a * a + a * b + 0.5 * b * b  # E[φ'²] = E[φ²]/q at ρ = 1
    kk = jnp.where(same, at_one * jnp.sqrt(d[:, None] * d[None, :]), kk)
    out = [weight * kk]
    if with_ntk:
      e = jnp.where(same, at_one, e)
      c = jnp.where(same, 0.0, c)
      n = (mu * scale) @ u.T  # M Σ
      p = sig @ n  # Σ M Σ
      p = 0.5 * (p + p.T)
      n_diag, p_diag = jnp.diagonal(n), jnp.diagonal(p)
      trace = jnp.sum(q_diag * scale)
      integrand = _ntk_integrand(s, kk, e, c, c.T, m, n, n.T, n_diag[:, None], n_diag[None, :],
                                 p, p_diag[:, None], p_diag[None, :], trace)
      out.append(weight * integrand)
    fine = [acc + wf * o for acc, o in zip(carry[0], out)]
    coarse = [acc + wc * o for acc, o in zip(carry[1], out)]
    return (fine, coarse), None

  zeros = [jnp.zeros_like(k)] * (2 if with_ntk else 1)
  (fine, coarse), _ = jax.lax.scan(node, (zeros, zeros), (s_nodes, w_fine, w_coarse))
  errors = [jnp.max(jnp.abs(f - c_)) / jnp.maximum(jnp.max(jnp.abs(f)), 1e-300)
            for f, c_ in zip(fine, coarse)]
  k_next = sw2 * size * fine[0] + sb2
  if not with_ntk:
    return k_next, None, errors[0], jnp.zeros(())
  theta_next = k_next + sw2 * size * fine[1]
  return k_next, theta_next, errors[0], errors[1]


def nodes_for_batch(size: int) -> int:
  """Trapezoid nodes to start from for a batch of `size` (about 1e-14 against 8193 nodes for
  full-rank kernels): small batches have slowly decaying tails in s (det(I+2sS)^(-1/2) ~
  s^(-(B-1)/2)); `adequate_nodes` doubles them where the data's kernel has a low rank."""
  if size <= 4:
    return 513
  if size <= 7:
    return 257
  if size <= 32:
    return 129
  return 49


_step = jax.jit(exact_step, static_argnames=("nodes",))
MAX_NODES = 4097


def adaptive_step(a, b, k, theta, sw2, sb2, same, tol: float = 1e-11):
  """`exact_step` with its trapezoid rule from `nodes_for_batch`, the node count doubled until
  the step's error estimate is below `tol` (at most MAX_NODES): (K', Θ', nodes)."""
  nodes = nodes_for_batch(k.shape[0])
  while True:
    k_next, theta_next, err_k, err_t = _step(a, b, k, theta, sw2, sb2, same, nodes=nodes)
    if max(float(err_k), float(err_t)) <= tol or nodes >= MAX_NODES:
      return k_next, theta_next, nodes
    nodes = 2 * nodes - 1


def adequate_nodes(a, b, k, with_ntk: bool, sw2, sb2, same, tol: float = 1e-11) -> int:
  """The node count for a recursion that starts from the kernel `k` (`adaptive_step` on its
  first layer). The first layer is the hardest: a kernel of low rank r decays only like
  s^(-r/2); the BN map drives deeper kernels towards full rank."""
  return adaptive_step(a, b, k, k if with_ntk else None, sw2, sb2, same, tol)[2]


# ----------------------------------------------------------------------------------------------
# The full-batch limit (Theorem 2).
# ----------------------------------------------------------------------------------------------
def _center(m):
  return m - m.mean(axis=0, keepdims=True) - m.mean(axis=1, keepdims=True) + m.mean()


def normalise_full_batch(k, ntk):
  """Full-batch BN of a dense layer's output: K -> H K H / ν, Θ -> H Θ H / ν (Theorem 2; Θ None:
  not computed)."""
  centred = _center(k)
  nu = jnp.mean(jnp.diagonal(centred))
  k_bn = centred / nu
  q = jnp.diagonal(k_bn)
  eye = jnp.eye(k.shape[0], dtype=bool)
  k_bn = jnp.where(eye, q[:, None], k_bn)  # ρ = 1 exactly on the diagonal
  return k_bn, None if ntk is None else _center(ntk) / nu


# ----------------------------------------------------------------------------------------------
# Monte Carlo over the per-unit normalisation (activations that are not positively homogeneous).
# ----------------------------------------------------------------------------------------------
def _unit_terms(act: Activation, h, m):
  """For units h (B, U): φ(ĥ)φ(ĥ)ᵀ summed over units, and Σ D J M Jᵀ D (the NTK term)."""
  size = h.shape[0]
  g = h - jnp.mean(h, axis=0, keepdims=True)
  r2 = jnp.sum(g * g, axis=0)
  unit = g * jax.lax.rsqrt(r2)  # ĝ
  hat = math.sqrt(size) * unit
  phi = act(hat)
  nngp = phi @ phi.T
  if m is None:
    return nngp, None
  d = act.derivative(hat) * jnp.sqrt(size / r2)  # D · √B / r
  mg = m @ unit
  gmg = jnp.sum(unit * mg, axis=0)
  # (P M P)ᵢⱼ = Mᵢⱼ - ĝᵢ(Mĝ)ⱼ - (Mĝ)ᵢĝⱼ + ĝᵢĝⱼ ĝᵀMĝ, P = G - ĝĝᵀ (M = GΘG already centred)
  ntk = (m * (d @ d.T) - (d * unit) @ (d * mg).T - (d * mg) @ (d * unit).T
         + (d * unit * gmg) @ (d * unit).T)
  return nngp, ntk


def monte_carlo_step(act: Activation, k, theta, sw2, sb2, key, samples: int, chunk: int = 4096):
  """One BN layer by Monte Carlo over `samples` independent units h ~ N(0, K): (K', Θ')."""
  size = k.shape[0]
  lam, u = jnp.linalg.eigh(0.5 * (k + k.T))
  root = u * jnp.sqrt(jnp.maximum(lam, 0.0))
  g = jnp.eye(size) - 1.0 / size
  m = None if theta is None else g @ theta @ g
  chunks = samples // chunk

  def one(key):
    h = root @ jax.random.normal(key, (size, chunk))
    return _unit_terms(act, h, m)

  nngp, ntk = jax.lax.map(one, jax.random.split(key, chunks))
  k_next = sw2 * jnp.sum(nngp, axis=0) / (chunks * chunk) + sb2
  if theta is None:
    return k_next, None
  return k_next, k_next + sw2 * jnp.sum(ntk, axis=0) / (chunks * chunk)


# ----------------------------------------------------------------------------------------------
# χ1 at a finite batch (the gradient explosion rate of Yang et al. 2019).
# ----------------------------------------------------------------------------------------------
def symmetric_chi1(a, b, size, nodes: int = 1025):
  """χ1(B) for φ = a x + b relu(x): the growth per layer of the NTK (and of the squared
  gradient) at the permutation-symmetric fixed point S ∝ G of the BN map.

  There ĝ is uniform on the sphere of the (B-1)-dimensional space ⊥ 1, and by symmetry the
  linear map Θ -> E[D J Θ Jᵀ D] sends G to α G + β 11ᵀ (β is removed by the next BN), so
  χ1 = α / (E[φᵢ²] - E[φᵢφⱼ]) with the scale of S cancelling. Every matrix is diagonal plus
  constant, so the s integral runs on two entries (diagonal, off-diagonal) for any B.
  """
  size = jnp.asarray(size, dtype=jnp.float64)
  dim = size - 1.0
  lo = -math.log(_TAIL)
  hi = _upper_limit(lambda s: 0.5 * dim * jnp.log1p(2.0 * s), dim, True)  # tr G = B - 1
  t = jnp.linspace(lo, hi, nodes)
  h = (hi - lo) / (nodes - 1)
  scale = 1.0 / dim
  s = scale * jnp.exp(t - jnp.exp(-t))
  w = h * s * (1.0 + jnp.exp(-t)) * jnp.ones(nodes).at[0].set(0.5).at[-1].set(0.5)
  sigma = 1.0 / (1.0 + 2.0 * s)  # Σ(s) = σ G
  weight = jnp.exp(-0.5 * dim * jnp.log1p(2.0 * s))
  diag_g, off_g = 1.0 - 1.0 / size, -1.0 / size

  def entries(gij, same):
    sig = sigma * gij
    d = sigma * diag_g
    k, e, c = _expectations(a, b, sig, d, d)
    if same:
      k = (a * a + a * b + 0.5 * b * b) * d
      e = jnp.full_like(d, a * a + a * b + 0.5 * b * b)
      c = jnp.zeros_like(d)
    n, n_d = sig, d  # N = G Σ = σ G
    p, p_d = sigma * sig, sigma * d  # P = σ² G
    trace = dim * sigma
    ntk = _ntk_integrand(s, k, e, c, c, gij, n, n, n_d, n_d, p, p_d, p_d, trace)
    return jnp.sum(w * weight * k), jnp.sum(w * weight * ntk)

  k_diag, x_diag = entries(diag_g, True)
  k_off, x_off = entries(off_g, False)
  return (x_diag - x_off) / (k_diag - k_off)


def _sphere_rule(size: int, order: int):
  """Nodes (ĝ₀, ĝ₁) and weights for E[f(ĝ₀, ĝ₁)], ĝ uniform on the unit sphere of 1^⊥ ⊂ R^B.

  The projection y of a uniform point of S^(m-1) (m = B - 1) on a plane has the density
  ∝ (1 - |y|²)^((m-4)/2) on the unit disk: t = |y|² is Beta(1, b), b = (m-2)/2, integrated
  by Gauss–Jacobi up to B = 1024 and beyond (where its weights overflow) through u = -b ln(1-t),
  which is Exp(1), by Gauss–Laguerre (the angular average of a smooth f is analytic in t); the
  angle by the trapezoidal rule (periodic, exponentially accurate). (ĝ₀, ĝ₁) = (‖Ge₀‖ y₁,
  c₁ y₁ + c₂ y₂) in an orthonormal basis of span{Ge₀, Ge₁}.
  """
  from scipy.special import roots_jacobi, roots_laguerre
  b = 0.5 * (size - 3.0)
  if size <= 1024:
    x, w = roots_jacobi(order, b - 1.0, 0.0)  # weight (1-x)^(b-1) on [-1, 1]
    t, w = 0.5 * (x + 1.0), w / w.sum()
  else:
    u, w = roots_laguerre(order)
    t = -np.expm1(-u / b)
  theta = np.arange(2 * order) * (np.pi / order)
  radius = np.sqrt(t)[:, None]
  y1, y2 = radius * np.cos(theta), radius * np.sin(theta)
  norm0 = math.sqrt(1.0 - 1.0 / size)
  c1 = (-1.0 / size) / norm0
  c2 = math.sqrt(max(1.0 - 1.0 / size - c1 * c1, 0.0))
  weights = np.broadcast_to(w[:, None] / (2 * order), y1.shape)
  return (norm0 * y1).reshape(-1), (c1 * y1 + c2 * y2).reshape(-1), weights.reshape(-1)


def sphere_chi1(act: Activation, size: int, order: int = 96):
  """χ1(B) for any activation: at the symmetric fixed point r² and ĝ are independent, with
  E[1/r²] = 1/((B-3) c) (c the scale of S, which cancels), so

      χ1 = B/(B-3) · (E[φ'₀² P₀₀] - E[φ'₀ φ'₁ P₀₁]) / (E[φ₀²] - E[φ₀ φ₁]),  P = G - ĝĝᵀ,

  with ĥ = √B ĝ: a two-dimensional integral (see `_sphere_rule`). Returns (χ1, error), the
  error the change from the rule of half the order.
  """
  def value(order):
    g0, g1, w = (jnp.asarray(a) for a in _sphere_rule(size, order))
    scale = math.sqrt(size)
    h0, h1 = scale * g0, scale * g1
    p00, p01 = (1.0 - 1.0 / size) - g0 * g0, -1.0 / size - g0 * g1
    d0, d1 = act.derivative(h0), act.derivative(h1)
    f0, f1 = act(h0), act(h1)
    num = jnp.sum(w * (d0 * d0 * p00 - d0 * d1 * p01)) * size / (size - 3.0)
    return num / jnp.sum(w * (f0 * f0 - f0 * f1))

  fine = value(order)
  return fine, jnp.abs(fine - value(order // 2)) / jnp.abs(fine)
