"""Training dynamics predicted by the kernels: neural-tangents' `predict` names, in float64.

A wide network trained by gradient descent on the mean squared error evolves as its
linearisation (Jacot et al. 2018; Lee et al. 2019). With the loss
L = ‖f(X) − Y‖² / (2 n_y) (n_y = Y.size, neural-tangents' normalisation) and the NTK Θ of the
training inputs, the outputs on the training set follow

    gradient flow:     f_t − Y = exp(−η t Θ / n_y) (f_0 − Y)
    gradient descent:  f_k − Y = (I − η Θ / n_y)^k (f_0 − Y)

and on test inputs f*_t = f*_0 − Θ*ₓ Θ⁻¹ (I − e^{−ηtΘ/n_y}) (f_0 − Y), written with the
function g(λ) = (1 − e^{−ηtλ/n_y}) / λ of the eigenvalues so that a singular Θ is no
division by zero (g(0) = ηt/n_y). One eigendecomposition of Θ serves every time t.
Gradient descent is stable while η < 2 n_y / λ_max (`max_learning_rate`).

Over the ensemble of random initialisations (f_0 a Gaussian process with the NNGP K, Lee et
al. 2019, eq 16), the mean and covariance at time t are those of
`gradient_descent_mse_ensemble`; at t = ∞ with Θ = K they are Gaussian-process inference
(`gp_inference`).

Batch norm couples the batch: its kernels exist for the training batch as a whole, so the
training-set dynamics of full-batch gradient descent are exact with the exact BN kernels at
batch N; a test input would change the batch's statistics, so test predictions are refused
for a description with `BatchNorm`.

>>> import numpy as np
>>> from mimictheory import predict
>>> ntk = np.array([[2.0, 0.5], [0.5, 1.0]])
>>> y = np.array([1.0, -1.0])
>>> fn = predict.gradient_descent_mse(ntk, y, learning_rate=1.0)
>>> np.round(fn(t=0.0, fx_train_0=np.zeros(2)), 6).tolist(), fn(t=None).tolist()
([0.0, 0.0], [1.0, -1.0])
"""
from __future__ import annotations

import collections

import jax
import numpy as np
import scipy.linalg

from mimictheory._src import checks, krylov

__all__ = ["gradient_descent_mse", "gp_inference", "gradient_descent_mse_ensemble",
           "max_learning_rate", "Gaussian", "PSD_TOLERANCE", "KRYLOV_MIN_INPUTS", "METHODS"]

#: a kernel whose smallest eigenvalue is below −PSD_TOLERANCE × its largest is refused
PSD_TOLERANCE = 1e-9

Gaussian = collections.namedtuple("Gaussian", ["mean", "covariance"])
Gaussian.__doc__ = """A mean and a covariance, as neural-tangents' `predict.Gaussian`.

>>> from mimictheory.predict import Gaussian
>>> Gaussian(mean=0.0, covariance=1.0).covariance
1.0
"""


def _matrix(name: str, k, rows: int | None = None, cols: int | None = None):
  k = np.asarray(k, dtype=np.float64) if not isinstance(k, jax.Array) else k
  if k.ndim != 2:
    raise ValueError(f"{name} must be a matrix (N1, N2), got shape {tuple(k.shape)}")
  if rows is not None and k.shape[0] != rows or cols is not None and k.shape[1] != cols:
    raise ValueError(f"{name} must have shape ({rows if rows is not None else 'N'}, "
                     f"{cols if cols is not None else 'N'}) to match the training targets, "
                     f"got {tuple(k.shape)}")
  if not isinstance(k, jax.Array) and not np.all(np.isfinite(k)):
    raise ValueError(f"{name} has NaN or infinite entries")
  return k


def _targets(y_train):
  y = np.asarray(y_train, dtype=np.float64)
  if y.ndim not in (1, 2) or y.shape[0] < 1:
    raise ValueError(f"y_train must have shape (N,) or (N, outputs), got {y.shape}")
  if not np.all(np.isfinite(y)):
    raise ValueError("y_train has NaN or infinite entries")
  return y


def _symmetric(k, diag_reg: float, absolute: bool, name: str = "k_train_train"):
  """The symmetric training kernel (k + kᵀ)/2 + the diagonal regulariser, refusing a k that is
  not symmetric beyond rounding (1e-8 of its largest entry). By blocks of rows, each against
  the same columns (twice as fast as whole-matrix transposes at N = 4000)."""
  k = np.asarray(k, np.float64)
  n = k.shape[0]
  sym = np.empty_like(k, order="C")
  asymmetry = largest = 0.0
  for lo in range(0, n, 128):
    rows, cols = k[lo:lo + 128], k[:, lo:lo + 128].T
    asymmetry = max(asymmetry, float(np.max(np.abs(rows - cols))))
    largest = max(largest, float(np.max(np.abs(rows))))
    block = np.add(rows, cols, out=sym[lo:lo + 128])
    block *= 0.5
  if asymmetry > 1e-8 * max(largest, 1e-300):
    raise ValueError(f"{name} must be symmetric (the kernel of the training inputs with "
                     f"themselves); it is off by {asymmetry:.2e}")
  reg = diag_reg if absolute else diag_reg * np.trace(sym) / n
  sym[np.diag_indices(n)] += reg
  return sym


def _refuse_negative(smallest: float, largest: float, name: str):
  if smallest < -PSD_TOLERANCE * max(abs(largest), 1e-300):
    raise ValueError(f"{name} is not positive semi-definite: its smallest eigenvalue is "
                     f"{smallest:.3e} against the largest {largest:.3e} (beyond rounding, "
                     f"{PSD_TOLERANCE:g} of it); is it a kernel of the training inputs?")


def _eigen(k, diag_reg: float, absolute: bool, name: str = "k_train_train"):
  """Eigen-decomposition of the symmetric training kernel (+ the diagonal regulariser),
  refusing one that is not positive semi-definite beyond rounding."""
  evals, evecs = np.linalg.eigh(_symmetric(k, diag_reg, absolute, name))
  _refuse_negative(evals[0], evals[-1], name)
  return np.maximum(evals, 0.0), evecs


def _positive_semi_definite(sym, largest: float, name: str):
  """Refuse `sym` if it is not positive semi-definite beyond rounding, without its spectrum:
  sym + PSD_TOLERANCE · largest · I has a Cholesky factor exactly when its smallest
  eigenvalue is above −PSD_TOLERANCE · largest (to the factorisation's backward error,
  N ε ‖sym‖, far below it). `largest`: λ_max or a lower bound of it (a Ritz value), so the
  test is at least as strict as `_eigen`'s. Where it fails, the eigenvalues name the
  culprit (and decide, should the bound have been too strict)."""
  shifted = sym.copy()
  shifted[np.diag_indices(sym.shape[0])] += PSD_TOLERANCE * max(largest, 0.0)
  # LAPACK's potrf in place on the Fortran-ordered view (the matrix is symmetric)
  info = scipy.linalg.lapack.dpotrf(shifted.T, lower=0, overwrite_a=1, clean=0)[1]
  if info != 0:
    evals = np.linalg.eigvalsh(sym)
    _refuse_negative(evals[0], evals[-1], name)


def _pseudo_inverse(evals):
  """1/λ of the eigenvalues, 0 for those at rounding level (below N · 1e-15 of the largest, as
  `numpy.linalg.pinv`): a kernel made singular by repeated inputs is inverted on its range."""
  cut = len(evals) * 1e-15 * max(evals[-1], 1e-300)
  return np.where(evals > cut, 1.0 / np.where(evals > cut, evals, 1.0), 0.0)


def _check_learning_rate(learning_rate):
  return float(checks.check_positive("learning_rate", learning_rate))


def _times(t):
  t = np.asarray(t, dtype=np.float64)
  if np.any(np.isnan(t)) or np.any(t < 0):
    raise ValueError(f"t must be a time (or a number of steps) >= 0, got {t.ravel()[:4]}")
  return t


def _steps(t, discrete: bool):
  """Times checked (>= 0); for gradient descent (`discrete`) whole numbers of steps."""
  t = _times(t)
  if discrete and not np.all(t == np.round(t)):
    raise ValueError(f"t must be whole numbers of steps with discrete=True, got "
                     f"{t.ravel()[:4]}")
  return t


def _gain(evals, t, eta: float, n_y: int, discrete: bool):
  """(decay, g) of the eigenvalues at times t (leading axes of t): decay the factor of f_0 − Y
  on the training set, e^{−ηtλ/n_y} or (1 − ηλ/n_y)^t, and g = (1 − decay)/λ (its limit at
  λ = 0)."""
  lam = evals.reshape((1,) * t.ndim + (-1,))
  tt = t[..., None]
  step = eta * lam / n_y
  if discrete:
    decay = np.power(1.0 - step, tt)
    small = np.abs(step) < 1e-12
    g = np.where(small, eta * tt / n_y, (1.0 - decay) / np.where(small, 1.0, lam))
  else:
    decay = np.exp(-step * tt)
    small = step * np.maximum(tt, 1.0) < 1e-12
    g = np.where(small, eta * tt / n_y, -np.expm1(-step * tt) / np.where(small, 1.0, lam))
  return decay, g


#: `method="auto"`: kernels of at least this many training inputs are evaluated at finite
#: times by block Lanczos on the residual (`krylov`) instead of an eigendecomposition
KRYLOV_MIN_INPUTS = 2000
#: Lanczos stops when no coefficient changes by more than this (relative) in 5 more steps
KRYLOV_TOL = 1e-12
METHODS = ("auto", "eigh", "krylov")


class _Flow:
  """The functions of the training kernel Θ that gradient descent applies to the residual
  R = f_0 − Y: decay(Θ) R and g(Θ) R at every time (`_gain`), factored as `left @
  coefficients[t]` so that the test outputs are (Θ*ₓ left) @ coefficients. The one place
  where the route is chosen:

  - "eigh": one eigendecomposition (N³ flops, LAPACK), after which every time, every residual
    and t = ∞ are cheap; left = V, coefficients = diag(f_t(λ)) Vᵀ R.
  - "krylov": block Lanczos from R's columns (`krylov.Lanczos`), about √(ηtλ_max/n_y) + a few
    products Θ R per residual, converged to `KRYLOV_TOL`; left = Q, coefficients =
    f_t(T) E₁R₀. Kept for the last residual, so that new times on it are cheap.

  "auto" takes Lanczos for N ≥ KRYLOV_MIN_INPUTS at finite times, with at most N/20 steps (a
  third of an eigendecomposition's time, measured); beyond that, or at t = ∞, or once the
  eigendecomposition exists, the eigendecomposition. "krylov" never falls back: its basis at
  worst spans the space, where it is exact.
  """

  def __init__(self, k, diag_reg: float, absolute: bool, eta: float, n_y: int,
               discrete: bool, method: str):
    self._sym = _symmetric(k, diag_reg, absolute)
    self._n = self._sym.shape[0]
    self._args = (eta, n_y, discrete)
    self._method = method
    self._eigen = None
    self._last = None  # (residual, Lanczos process)
    if method == "eigh" or method == "auto" and self._n < KRYLOV_MIN_INPUTS:
      self.eigen()  # refuses a kernel that is not positive semi-definite, now
    else:  # the same test without the spectrum (a Cholesky factor), now
      probe = np.ones((self._n, 1)) + np.cos(np.arange(self._n))[:, None]
      ritz = np.linalg.eigvalsh(krylov.Lanczos(self._sym, probe).extend(20).projection())
      _positive_semi_definite(self._sym, ritz[-1], "k_train_train")

  def eigen(self):
    if self._eigen is None:
      evals, evecs = np.linalg.eigh(self._sym)
      _refuse_negative(evals[0], evals[-1], "k_train_train")
      self._eigen = np.maximum(evals, 0.0), evecs
    return self._eigen

  def infinite(self, residual):
    """(left, coefficients (1, d, outputs)) of Θ⁺ R (the pseudo-inverse where Θ is
    singular)."""
    evals, evecs = self.eigen()
    return evecs, (_pseudo_inverse(evals)[:, None] * (evecs.T @ residual))[None]

  def at(self, residual, ts):
    """(left, decay coefficients, g coefficients), (T, d, outputs) each, at the times ts
    (T,)."""
    eta, n_y, discrete = self._args
    if self._eigen is None and self._method != "eigh" and residual.shape[1] <= self._n // 20:
      limit = self._n if self._method == "krylov" else max(self._n // 20, 4)
      if self._last is None or not np.array_equal(self._last[0], residual):
        self._last = residual.copy(), krylov.Lanczos(self._sym, residual)
      process = self._last[1]

      def values(theta):
        return _gain(np.maximum(theta, 0.0), ts, eta, n_y, discrete)

      found = krylov.functions_of(process, values, KRYLOV_TOL, limit)
      if found is not None:
        return process.basis.T, found[0], found[1]
    evals, evecs = self.eigen()
    coords = evecs.T @ residual
    decay, g = _gain(evals, ts, eta, n_y, discrete)
    return evecs, decay[:, :, None] * coords, g[:, :, None] * coords


def _combine(left, coefficients, a=None):
  """a @ left @ coefficients[t] for every t, as (T, rows, outputs), in the cheaper order (a:
  None is the identity)."""
  times, d, outputs = coefficients.shape
  flat = np.moveaxis(coefficients, 0, 1).reshape(d, times * outputs)
  if a is None:
    out = left @ flat
  elif d <= times * outputs:
    out = (a @ left) @ flat
  else:
    out = a @ (left @ flat)
  return np.moveaxis(out.reshape(-1, times, outputs), 1, 0)


def gradient_descent_mse(k_train_train, y_train, learning_rate: float = 1.0,
                         diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                         trace_axes=(-1,), discrete: bool = False, method: str = "auto"):
  """The outputs of a network trained on the MSE from f_0, at any time, given its NTK on the
  training inputs (neural-tangents' `predict.gradient_descent_mse`, same signature).

  `k_train_train` (N, N), `y_train` (N,) or (N, outputs) (one kernel for every output:
  `trace_axes=(-1,)`, the only one allowed). Returns `predict_fn(t=None, fx_train_0=0.,
  fx_test_0=None, k_test_train=None)`: the training outputs at times `t` (any shape; t=None is
  t = ∞, by a linear solve), and with `fx_test_0` and `k_test_train` (N_test, N) the test
  outputs too, as `(fx_train_t, fx_test_t)`, with t's shape in front. Time is in units of the
  learning rate (η t is what matters), as in neural-tangents; `discrete=True` is gradient
  descent itself, t the number of steps (whole numbers). `diag_reg`: Θ + diag_reg · I
  (times the mean diagonal unless `diag_reg_absolute_scale`). Float64 NumPy results.

  `method` (not in neural-tangents): how the functions of Θ are evaluated. "eigh", one
  eigendecomposition, then any time and any f_0 cheaply; "krylov", block Lanczos on the
  columns of f_0 − Y, √(ηtλ_max/n_y) products with Θ per new f_0, so N = 4000 in about 2 s
  where the eigendecomposition alone takes 9 s (benchmarks/README.md), to 1e-12; "auto"
  (default), Lanczos from N = `KRYLOV_MIN_INPUTS` on at finite times, falling back to the
  eigendecomposition where it converges slowly.

  >>> import numpy as np
  >>> from mimictheory import predict
  >>> fn = predict.gradient_descent_mse(np.eye(2), np.ones(2), learning_rate=2.0)
  >>> np.round(fn(t=1.0, fx_train_0=np.zeros(2)), 6).tolist()   # 1 − e^{−2·1·1/2}
  [0.632121, 0.632121]
  """
  y = _targets(y_train)
  if tuple(np.atleast_1d(trace_axes)) != (-1,) and not (y.ndim == 1 and not trace_axes):
    raise ValueError(f"trace_axes must be (-1,) (one kernel for every output), got "
                     f"{trace_axes!r}")
  n = y.shape[0]
  k = _matrix("k_train_train", k_train_train, n, n)
  eta = _check_learning_rate(learning_rate)
  checks.check_nonnegative("diag_reg", diag_reg)
  n_y = y.size
  flow = _Flow(k, float(diag_reg), bool(diag_reg_absolute_scale), eta, n_y, discrete,
               checks.check_choice("method", method, METHODS))

  def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
    f0 = None if fx_train_0 is None else np.broadcast_to(
        np.asarray(fx_train_0, np.float64), y.shape)
    if fx_test_0 is not None and k_test_train is None:
      raise ValueError("fx_test_0 needs k_test_train, the kernel (N_test, N) of the test "
                       "inputs with the training inputs")
    kt = None
    if fx_test_0 is not None:
      kt = np.asarray(_matrix("k_test_train", k_test_train, None, n), np.float64)
      ft0 = np.broadcast_to(np.asarray(fx_test_0, np.float64), (kt.shape[0],) + y.shape[1:])
    residual = ((np.zeros_like(y) if f0 is None else f0) - y).reshape(n, -1)  # f_0 − Y
    if t is None:  # t = ∞: f = Y on the training set (as neural-tangents, whatever diag_reg;
      train = None if f0 is None else y.copy()  # its regularised value: the test formula with
      test = None                              # k_test_train = k_train_train)
      if kt is not None:
        left, pinv = flow.infinite(residual)
        test = ft0 - _combine(left, pinv, kt)[0].reshape(ft0.shape)
    else:
      ts = _steps(t, discrete)
      train = test = None
      if f0 is not None or kt is not None:
        left, decay, g = flow.at(residual, ts.reshape(-1))
        if f0 is not None:
          train = y + _combine(left, decay).reshape(ts.shape + y.shape)
        if kt is not None:  # Θ*ₓ Θ⁻¹(I − decay)(f_0 − Y), every time in one product
          test = ft0 - _combine(left, g, kt).reshape(ts.shape + ft0.shape)
    if test is None:
      return train
    return test if train is None else (train, test)

  return predict_fn


def max_learning_rate(ntk_train_train, y_train_size: int | None = None, momentum: float = 0.0,
                      eps: float = 1e-12) -> float:
  """The largest learning rate at which full-batch gradient descent on the MSE
  ‖f − Y‖² / (2 n_y) converges for the infinite-width network with this NTK:
  η_max = 2 (1 + momentum) n_y / λ_max (neural-tangents' `predict.max_learning_rate`;
  n_y = `y_train_size`, by default the number of training inputs).

  >>> import numpy as np
  >>> from mimictheory import predict
  >>> round(predict.max_learning_rate(np.diag([4.0, 1.0])), 9)   # 2 · 2 / 4
  1.0
  """
  k = _matrix("ntk_train_train", ntk_train_train)
  n_y = k.shape[0] if y_train_size is None else checks.check_int("y_train_size", y_train_size,
                                                                 minimum=1)
  checks.check_interval("momentum", momentum, 0.0, 1.0)
  evals, _ = _eigen(np.asarray(k, np.float64), 0.0, True, "ntk_train_train")
  return float(2.0 * (1.0 + momentum) * n_y / (evals[-1] + eps))


def _attr(k, name: str):
  """The `name` ("nngp" or "ntk") of a kernel given as an object with those fields (a
  `stax.Kernel`, a namedtuple) or the matrix itself (neural-tangents' convention)."""
  return getattr(k, name) if hasattr(k, name) else k


def _per_get(get, one):
  """`one(g)` for get a name ("nngp", "ntk"), or a namedtuple of them for a tuple or None
  (both), as neural-tangents returns them."""
  if isinstance(get, str):
    return one(checks.check_choice("get", get, ("nngp", "ntk")))
  names = ("nngp", "ntk") if get is None else tuple(
      checks.check_choice("get", g, ("nngp", "ntk")) for g in get)
  return collections.namedtuple("Gaussians", names)(*(one(g) for g in names))


def _solver(k, diag_reg, absolute):
  """b -> (K + λI)⁺ b by the eigen-decomposition (a pseudo-inverse where K is singular)."""
  evals, evecs = _eigen(np.asarray(k, np.float64), float(diag_reg), bool(absolute))
  pinv = _pseudo_inverse(evals)
  return lambda b: evecs @ (pinv[:, None] * (evecs.T @ b))


def _posterior(g, mean, k_tx, k_tt, nngp_xx, nngp_tx, solve):
  """The covariance on test inputs: for the NNGP, Bayesian inference with the regulariser as
  observation noise, K** − K*ₓ (K + λI)⁻¹ Kₓ*; for the NTK, Lee et al. (2019) eq 16 at t = ∞,
  K** + A K A' − (A Kₓ* + K*ₓ A') with A = Θ*ₓ (Θ + λI)⁻¹ (the same at λ = 0 with Θ = K)."""
  if g == "nngp":
    return Gaussian(mean, k_tt - k_tx @ solve(k_tx.T))
  a = solve(k_tx.T).T
  cross = a @ nngp_tx.T
  return Gaussian(mean, k_tt + a @ nngp_xx @ a.T - cross - cross.T)


def gp_inference(k_train_train, y_train, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False, trace_axes=(-1,)):
  """The posterior of infinitely wide networks on test inputs (neural-tangents'
  `predict.gp_inference`, same signature): "nngp", Bayesian inference with the NNGP as the
  prior, mean K*ₓ K⁻¹ Y and covariance K** − K*ₓ K⁻¹ Kₓ*; "ntk", the ensemble of networks
  trained to convergence by gradient descent on the MSE (Lee et al. 2019), mean Θ*ₓ Θ⁻¹ Y and
  covariance K** + Θ*ₓ Θ⁻¹ K Θ⁻¹ Θₓ* − (Θ*ₓ Θ⁻¹ Kₓ* + h.c.). The kernels are matrices or objects
  with `nngp` and `ntk` (a `stax.Kernel`, `kernel_fn(..., get=("nngp", "ntk"))`).

  Returns `predict_fn(get=None, k_test_train=None, k_test_test=None)`: per get, the mean, or
  `Gaussian(mean, covariance)` when `k_test_test` is given; a namedtuple of both for get=None
  or a tuple. `k_test_train=None`: the training set (mean Y, covariance 0). `diag_reg`:
  K + diag_reg · I (times the mean diagonal unless `diag_reg_absolute_scale`).

  >>> import numpy as np
  >>> from mimictheory import predict
  >>> fn = predict.gp_inference(np.eye(2), np.array([1.0, 2.0]))
  >>> g = fn("nngp", np.array([[0.5, 0.0]]), np.array([[1.0]]))
  >>> g.mean.tolist(), g.covariance.tolist()
  ([0.5], [[0.75]])
  """
  y = _targets(y_train)
  if tuple(np.atleast_1d(trace_axes)) != (-1,):
    raise ValueError(f"trace_axes must be (-1,), got {trace_axes!r}")
  n = y.shape[0]
  checks.check_nonnegative("diag_reg", diag_reg)
  solvers = {}

  def solve(g):
    if g not in solvers:
      k = _matrix(f"k_train_train ({g})", _attr(k_train_train, g), n, n)
      solvers[g] = _solver(k, diag_reg, diag_reg_absolute_scale)
    return solvers[g]

  def predict_fn(get=None, k_test_train=None, k_test_test=None):
    def one(g):
      if k_test_train is None:  # the training set: its targets, exactly
        return y.copy() if k_test_test is None else Gaussian(y.copy(), np.zeros((n, n)))
      k_tx = _matrix(f"k_test_train ({g})", _attr(k_test_train, g), None, n)
      mean = (k_tx @ solve(g)(y.reshape(n, -1))).reshape((k_tx.shape[0],) + y.shape[1:])
      if k_test_test is None:
        return mean
      m = k_tx.shape[0]
      k_tt = _matrix("k_test_test (nngp)", _attr(k_test_test, "nngp"), m, m)
      nngp_tx = _matrix("k_test_train (nngp)", _attr(k_test_train, "nngp"), m, n)
      nngp_xx = _matrix("k_train_train (nngp)", _attr(k_train_train, "nngp"), n, n)
      return _posterior(g, mean, k_tx, k_tt, nngp_xx, nngp_tx, solve(g))
    return _per_get(get, one)

  return predict_fn


def gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                                  trace_axes=(-1,), discrete: bool = False):
  """The mean and covariance over random initialisations of the outputs of infinitely wide
  networks trained on the MSE (Lee et al. 2019, eq 16; neural-tangents'
  `predict.gradient_descent_mse_ensemble`, same signature). `kernel_fn(x1, x2, get)` is a
  description's (`stax`), giving the NNGP K and the NTK Θ. Returns `predict_fn(t=None,
  x_test=None, get=None, compute_cov=False)`: on x_test (the training inputs if None) at
  times t (any shape in front; None is t = ∞), per get the mean, or `Gaussian(mean,
  covariance)` with compute_cov; a namedtuple of both for get=None or a tuple. With
  D = Θ⁻¹(I − e^{−ηtΘ/n_y}) (g(Θ) of `gradient_descent_mse`; `discrete=True`: t steps of
  gradient descent),

      mean = Θ*ₓ D Y,   cov = K** + Θ*ₓ D K D Θₓ* − (Θ*ₓ D Kₓ* + K*ₓ D Θₓ*);

  get="nngp" trains only the readout (Θ = K). A description with `BatchNorm` has training-set
  predictions only (x_test=None): its kernels are of the whole batch.

  >>> import numpy as np
  >>> from mimictheory import predict, stax
  >>> net = stax.serial(stax.Dense(64, W_std=1.5), stax.Relu(), stax.Dense(1, W_std=1.5))
  >>> x, y = np.eye(3), np.array([1.0, 0.0, -1.0])
  >>> fn = predict.gradient_descent_mse_ensemble(net.kernel_fn, x, y)
  >>> (np.round(fn(t=None, get="ntk"), 6) + 0.0).tolist()     # at t = ∞ the training targets
  [1.0, 0.0, -1.0]
  """
  y = _targets(y_train)
  eta = _check_learning_rate(learning_rate)
  if tuple(np.atleast_1d(trace_axes)) != (-1,):
    raise ValueError(f"trace_axes must be (-1,), got {trace_axes!r}")
  checks.check_nonnegative("diag_reg", diag_reg)
  n = y.shape[0]
  if np.shape(x_train)[0] != n:
    raise ValueError(f"x_train and y_train must have the same number of inputs, got "
                     f"{np.shape(x_train)[0]} and {n}")
  train = kernel_fn(x_train, None, ("nngp", "ntk"))
  kernels = {"nngp": np.asarray(train.nngp, np.float64), "ntk": np.asarray(train.ntk, np.float64)}
  owner = getattr(kernel_fn, "__self__", None)  # a description's bound kernel_fn
  entrywise = owner.entrywise() if hasattr(owner, "entrywise") else True
  n_y = y.size
  spaces = {}

  def space(g):
    if g not in spaces:
      spaces[g] = _eigen(kernels[g], float(diag_reg), bool(diag_reg_absolute_scale))
    return spaces[g]

  def predict_fn(t=None, x_test=None, get=None, compute_cov: bool = False):
    ts = None if t is None else _steps(t, discrete)
    if x_test is None:
      test = {"nngp": kernels["nngp"], "ntk": kernels["ntk"]}
      k_tt = kernels["nngp"]
    else:
      if not entrywise:
        raise ValueError("x_test: a description with BatchNorm has kernels of the whole "
                         "training batch only (a test input would change the batch's "
                         "statistics); predict on the training set (x_test=None)")
      cross = kernel_fn(x_test, x_train, ("nngp", "ntk"))
      test = {"nngp": np.asarray(cross.nngp, np.float64),
              "ntk": np.asarray(cross.ntk, np.float64)}
      k_tt = np.asarray(kernel_fn(x_test, None, "nngp"), np.float64) if compute_cov else None

    def one(g):
      evals, evecs = space(g)
      if ts is None:  # t = ∞: D = Θ⁻¹ (the pseudo-inverse where Θ is singular)
        shape = ()
        gain = _pseudo_inverse(evals)[None]
      else:
        shape = ts.shape
        gain = _gain(evals, ts.reshape(-1), eta, n_y, discrete)[1]
      # Θ*ₓ D = P diag(g_t) Vᵀ with P = Θ*ₓ V: every time from one product with P
      p = test[g] @ evecs  # (M, N)
      m = p.shape[0]
      coords = evecs.T @ y.reshape(n, -1)  # (N, outputs)
      scaled = (gain.T[:, :, None] * coords[:, None, :]).reshape(n, -1)  # (N, T·outputs)
      mean = np.moveaxis((p @ scaled).reshape(m, gain.shape[0], -1), 1, 0)
      mean = mean.reshape(shape + (m,) + y.shape[1:])
      if not compute_cov:
        return mean
      # K** + A K Aᵀ − (A Kₓ* + K*ₓ Aᵀ), A = P diag(g) Vᵀ: with B = Vᵀ K V and Q = Vᵀ Kₓ*
      # computed once, one time at a time (each an (M, N) × (N, M) product)
      b = evecs.T @ kernels["nngp"] @ evecs
      q = evecs.T @ test["nngp"].T
      cov = np.empty((gain.shape[0], m, m))
      for i, gi in enumerate(gain):
        pg = p * gi
        cross = pg @ q
        cov[i] = k_tt + pg @ b @ pg.T - cross - cross.T
      return Gaussian(mean, cov.reshape(shape + (m, m)))

    return _per_get(get, one)

  return predict_fn
