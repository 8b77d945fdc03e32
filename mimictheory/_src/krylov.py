"""Functions of a symmetric matrix applied to a few vectors, by block Lanczos.

f(A) B for an N × N symmetric A and a block B of b columns, without the N³ eigendecomposition
of A: block Lanczos builds an orthonormal basis Q of the block Krylov space
span{B, AB, …, A^{m−1}B} and the projection T = QᵀAQ (block tridiagonal, m b × m b), and
Rayleigh–Ritz gives f(A) B ≈ Q f(T) QᵀB = Q f(T) E₁R₀ (B = Q₁R₀). Each step is one product
A Q_j (the N² b flops that dominate) and a full re-orthogonalisation against the basis
(twice, so the basis stays orthonormal to rounding and T has no spurious copies of converged
Ritz values). For f = exp(−sA) the error falls superlinearly once m exceeds about √(s λ_max)
(Hochbruck & Lubich 1997, SIAM J. Numer. Anal. 34, 1911, Theorem 2); for a basis of the whole
space (m b ≥ N) the result is exact.

`Lanczos` keeps the process so that it can be extended, and `functions_of` extends it until
the coefficients f(T) E₁R₀ of every requested function stop changing. The caller chooses the
route (`mimictheory._src.predict`).

>>> import numpy as np
>>> from scipy.linalg import expm
>>> a = np.diag(np.linspace(0.0, 1.0, 200))
>>> b = np.ones((200, 1))
>>> process = Lanczos(a, b)
>>> values = lambda theta: [np.exp(-3.0 * theta)[None]]      # one function, one time
>>> (coefficients,) = functions_of(process, values, tol=1e-13, max_steps=50)
>>> bool(np.allclose(process.basis.T @ coefficients[0], expm(-3.0 * a) @ b, atol=1e-12))
True
"""
from __future__ import annotations

import numpy as np

__all__ = ["Lanczos", "functions_of"]


class Lanczos:
  """Block Lanczos on the symmetric `a` (N, N) from the block `start` (N, b), extendable.

  `basis` (d, N): the orthonormal basis of the finished steps, as rows; `projection()` the
  d × d block-tridiagonal T = QᵀAQ on it; `start_coordinates` (d, b): the coordinates of
  `start` in it (E₁R₀). Every entry of T is a Rayleigh–Ritz entry, α_j = Q_jᵀAQ_j and
  β_j = Q_{j+1}ᵀAQ_j, so that a block that loses rank (a start of dependent columns, an
  invariant subspace) costs nothing in accuracy: its extra columns are orthonormal directions
  re-orthogonalised against the basis like the others.

  >>> import numpy as np
  >>> process = Lanczos(np.diag([1.0, 2.0, 3.0]), np.ones((3, 1)))
  >>> process.extend(5).complete, process.basis.shape
  (True, (3, 3))
  >>> np.round(np.linalg.eigvalsh(process.projection()), 12).tolist()
  [1.0, 2.0, 3.0]
  """

  def __init__(self, a, start):
    self._a = a
    n, width = start.shape
    if width > n:
      raise ValueError(f"start must have at most N = {n} columns, got {width}")
    self.width = width
    q, r0 = np.linalg.qr(start)
    self._rows = np.empty((min(n, 4 * width), n))
    self._rows[:width] = q.T
    self._sizes = [width]  # the blocks' widths; the last one may be narrower (the space's end)
    self._r0 = r0
    self._alphas, self._betas = [], []

  @property
  def _found(self) -> int:
    return sum(self._sizes)

  @property
  def steps(self) -> int:
    """The blocks multiplied by A so far; T is known on them."""
    return len(self._alphas)

  @property
  def dimension(self) -> int:
    return sum(self._sizes[:self.steps])

  @property
  def basis(self):
    return self._rows[:self.dimension]

  @property
  def complete(self) -> bool:
    """The basis spans the whole space: f(T) is then f(A) in it, exactly."""
    return self.dimension >= self._a.shape[0]

  @property
  def start_coordinates(self):
    out = np.zeros((self.dimension, self.width))
    out[:self.width] = self._r0
    return out

  def _orthogonalise(self, w):
    """w (N, s) minus its part in the basis found so far, twice (Kahan's "twice is
    enough")."""
    found = self._rows[:self._found]
    for _ in range(2):
      w = w - found.T @ (found @ w)
    return w

  def extend(self, steps: int) -> Lanczos:
    """`steps` more Lanczos steps (fewer when the basis reaches the whole space)."""
    n = self._a.shape[0]
    for _ in range(steps):
      if self.complete:
        break
      lo = self._found - self._sizes[-1]
      q = self._rows[lo:self._found]  # (s, N): the last block
      w = (q @ self._a).T  # A q (A symmetric) as a row-major product: the N² s flops
      self._alphas.append(q @ w)
      left = n - self._found
      if left == 0:  # this was the space's last block
        continue
      w = self._orthogonalise(w)
      if left >= w.shape[1]:
        q_next = np.linalg.qr(w)[0]
      else:  # fewer directions are left than columns: w has rank <= left
        q_next = np.linalg.svd(w, full_matrices=False)[0][:, :left]
      q_next = np.linalg.qr(self._orthogonalise(q_next))[0]  # a rank-deficient w's extra
      self._betas.append(q_next.T @ w)                          # columns orthogonal too
      self._grow(self._found + q_next.shape[1])
      self._rows[self._found:self._found + q_next.shape[1]] = q_next.T
      self._sizes.append(q_next.shape[1])
    return self

  def _grow(self, rows: int):
    if rows > self._rows.shape[0]:
      bigger = np.empty((min(self._a.shape[0], max(rows, 2 * self._rows.shape[0])),
                         self._a.shape[1]))
      bigger[:self._found] = self._rows[:self._found]
      self._rows = bigger

  def projection(self):
    """T = QᵀAQ on the basis of the finished steps (d × d), symmetric."""
    d = self.dimension
    t = np.zeros((d, d))
    lo = 0
    for j, alpha in enumerate(self._alphas):
      s = alpha.shape[0]
      t[lo:lo + s, lo:lo + s] = 0.5 * (alpha + alpha.T)
      if j + 1 < self.steps:
        beta = self._betas[j]
        t[lo + s:lo + s + beta.shape[0], lo:lo + s] = beta
        t[lo:lo + s, lo + s:lo + s + beta.shape[0]] = beta.T
      lo += s
    return t


def functions_of(process: Lanczos, values, tol: float, max_steps: int, check_every: int = 5):
  """Extend `process` until f(T) E₁R₀ has converged for every function, or `max_steps`.

  `values(theta)` gives, for the Ritz values θ (d,), a list of arrays (times, d): each
  function's values at each time. Returns the list of coefficient arrays (times, d, b), to be
  multiplied by `process.basis` (f(A) start ≈ basisᵀ @ coefficients[i][t]), or None when
  `max_steps` steps did not converge. Converged: between two checks `check_every` steps
  apart, no coefficient array changed by more than `tol` times its largest norm over times
  (the earlier of the two is then already this accurate, and the later much more).
  """
  previous = None
  if process.steps == 0:
    process.extend(min(2 * check_every, max_steps))
  while True:
    theta, w = np.linalg.eigh(process.projection())
    top = w.T @ process.start_coordinates  # (d, b): Wᵀ E₁ R₀
    current = [np.einsum("ij,tj,jk->tik", w, f, top, optimize=True) for f in values(theta)]
    if process.complete:
      return current
    if previous is not None:
      changes = []
      for now, before in zip(current, previous, strict=True):
        padded = np.zeros_like(now)
        padded[:, :before.shape[1]] = before
        scale = np.max(np.linalg.norm(now, axis=(1, 2)))
        changes.append(np.max(np.linalg.norm(now - padded, axis=(1, 2))) /
                       max(scale, 1e-300))
      if max(changes) <= tol:
        return current
    if process.steps >= max_steps:
      return None
    previous = current
    process.extend(min(check_every, max_steps - process.steps))
