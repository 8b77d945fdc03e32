"""Training dynamics, predicted against measured: finite networks of a `stax` description
trained by full-batch gradient descent on the mean squared error, beside the prediction of
`predict` from the same description's kernels (issue 24).

One description gives both sides, so they cannot drift apart: its `kernel_fn` (float64) is
the theory at the description's widths (infinite width, with Lemma 1's fan-in factor where
`Dense(weight_mean=True)` has a finite width); its `init_fn` and `apply_fn` (float32) are the
finite networks, NTK parameterisation, trained on L = ‖f(X) − Y‖² / (2 n_y) as `predict`.

- `training_curves`: the expected training and test losses over initialisations (Lee et al.
  2019, eq 16: the mean and covariance of the outputs, so E L = (‖E f − Y‖² + tr Cov) /
  (2 n_y)) at any step counts, against networks of several seeds.
- `learning_rate_limit`: the largest rate at which finite networks still train, by
  bisection, against `predict.max_learning_rate` of the NTK (2 n_y / λ_max), and whether the
  loss rose before it fell on the way (catapult dynamics, Lewkowycz et al. 2020).
- `last_bn_rate`: the last BN layer on the logits (MimicNorm): its output NTK at the batch
  (centred, divided by the logits' batch variance ν) and the effective rate η/ν measured over
  training against the predicted limit (the paper's "autotuned learning rate").

Theorem 1's argument runs through the NTK's condition number κ: at the largest stable rate
the slowest mode of the training error shrinks by (1 − 2/κ) per step at best, so a chaotic
network (κ → 1) trains in few steps and an ordered one (κ → ∞) barely at all.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mimictheory._src import checks
from mimictheory._src import stax as _stax
from mimictheory._src.io import progress_bar
from mimictheory._src.predict import gradient_descent_mse_ensemble, max_learning_rate

__all__ = ["TrainingCurves", "training_curves", "LearningRateLimit", "learning_rate_limit",
           "LastBatchNormRate", "last_bn_rate", "recorded_steps"]


def recorded_steps(steps: int, points: int = 24) -> np.ndarray:
  """0 and about `points` step counts spaced evenly in log up to `steps`, without repeats.

  >>> from mimictheory._src.dynamics import recorded_steps
  >>> recorded_steps(100, points=5).tolist()
  [0, 1, 3, 10, 32, 100]
  """
  steps = checks.check_int("steps", steps, minimum=1)
  points = checks.check_int("points", points, minimum=1)
  return np.unique(np.concatenate([[0], np.round(np.geomspace(1, steps, points))])).astype(int)


def _description(network):
  if not isinstance(network, _stax.Network):
    raise TypeError(f"network must be a mimictheory.stax description (e.g. stax.mlp(...)), got "
                    f"{type(network).__name__}")
  return network


def _data(x, y, name_x="x_train", name_y="y_train"):
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.ndim < 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
    raise ValueError(f"{name_x} must be (N, features...) and {name_y} (N, outputs) with the same "
                     f"N, got {x.shape} and {y.shape}")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError(f"{name_x} and {name_y} must be finite")
  return x, y


def _loss(apply_fn, params, x, y):
  return jnp.sum((apply_fn(params, x) - y) ** 2) / (2 * y.size)


def _trainer(network, x, y, x_test, y_test, probe=None):
  """Compiled once per description and data, vmapped over seeds: init(keys) -> params;
  advance(params, k, eta) -> (params after k steps of full-batch gradient descent at rate eta,
  the largest training loss met on the way); losses(params) -> (training loss, test loss,
  probe(params, x) or NaN). The rate is an argument: a bisection over it compiles once."""
  init_fn, apply_fn, _ = network
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  has_test = x_test is not None
  if has_test:
    x_test, y_test = jnp.asarray(x_test, jnp.float32), jnp.asarray(y_test, jnp.float32)
  grad = jax.value_and_grad(lambda p: _loss(apply_fn, p, x, y))

  def advance(params, k, eta):
    def step(_, carry):
      params, highest = carry
      value, g = grad(params)
      params = jax.tree_util.tree_map(lambda a, b: a - eta * b, params, g)
      return params, jnp.maximum(highest, jnp.where(jnp.isfinite(value), value, jnp.inf))
    return jax.lax.fori_loop(0, k, step, (params, jnp.float32(0.0)))

  def losses(params):
    nan = jnp.float32(jnp.nan)
    test = _loss(apply_fn, params, x_test, y_test) if has_test else nan
    return _loss(apply_fn, params, x, y), test, nan if probe is None else probe(params, x)

  init = jax.jit(jax.vmap(lambda key: init_fn(key, x.shape)[1]))
  return (init, jax.jit(jax.vmap(advance, in_axes=(0, None, None))),
          jax.jit(jax.vmap(losses)))


def _train(trainer, eta, steps, keys, progress=False, desc="training"):
  """Losses (seeds, T) on the training and test inputs at the recorded `steps`, the largest
  training loss each seed met (seeds,), and the probe (seeds, T), of `_trainer`'s networks."""
  init, advance, losses = trainer
  params = init(keys)
  eta = jnp.float32(eta)
  train, test, probed, highest, done = [], [], [], np.zeros(len(keys)), 0
  for s in progress_bar(steps, progress, desc):
    if s > done:
      params, top = advance(params, int(s - done), eta)
      highest = np.maximum(highest, np.asarray(top, np.float64))
      done = int(s)
    for out, value in zip((train, test, probed), losses(params)):
      out.append(np.asarray(value, np.float64))
  return np.stack(train, 1), np.stack(test, 1), highest, np.stack(probed, 1)


def _expected_losses(network, x, y, x_test, y_test, eta, steps):
  """E over initialisations of the training (and test) loss at the step counts: from the
  ensemble's mean and covariance (Lee et al. 2019, eq 16), (‖E f − Y‖² + outputs · tr Cov) /
  (2 n_y)."""
  fn = gradient_descent_mse_ensemble(network.kernel_fn, x, y, learning_rate=eta, discrete=True)

  def expected(g, target):
    gap = np.sum((g.mean - target) ** 2, axis=(-2, -1))
    spread = target.shape[1] * np.trace(g.covariance, axis1=-2, axis2=-1)
    # a sum of squares and a trace: ≥ 0 but for rounding once the error is gone (≈ −1e-17)
    return np.maximum((gap + spread) / (2 * target.size), 0.0)

  train = expected(fn(steps, None, "ntk", compute_cov=True), y)
  test = None if x_test is None else expected(fn(steps, x_test, "ntk", compute_cov=True), y_test)
  return train, test


def _check_rate(learning_rate, lr_fraction):
  if learning_rate is not None and lr_fraction is not None:
    raise ValueError("give learning_rate or lr_fraction (of the predicted limit), not both")
  if learning_rate is not None:
    return checks.check_positive("learning_rate", learning_rate), None
  return None, checks.check_positive("lr_fraction", 0.5 if lr_fraction is None else lr_fraction)


def mean_and_se(a):
  """Mean and standard error over seeds (axis 0); a diverged seed (non-finite) makes its
  entries NaN rather than infinite."""
  finite = np.where(np.isfinite(a), a, np.nan)
  return np.mean(finite, 0), np.std(finite, 0, ddof=1) / math.sqrt(a.shape[0])


@dataclasses.dataclass(frozen=True)
class TrainingCurves:
  """Predicted against measured loss curves of one description (`training_curves`).

  steps (T,): the step counts recorded, 0 first. predicted_train, predicted_test (T,): the
  expected losses over initialisations at infinite width (Lee et al. 2019); None where the
  description has no test predictions (BatchNorm). train_loss, test_loss (seeds, T): the
  finite networks'. learning_rate: η used; max_learning_rate: `predict.max_learning_rate` of
  the NTK; condition_number: κ = λ_max / λ_min of the NTK on the training inputs.

  >>> import numpy as np
  >>> from mimictheory import TrainingCurves
  >>> c = TrainingCurves(np.arange(3), np.ones(3), None, np.array([[1.0, 0.5, 0.2],
  ...                    [1.0, 0.7, 0.4]]), None, 0.1, 0.2, 1.5)
  >>> [round(v, 6) for v in c.train[0].tolist()], c.test
  ([1.0, 0.6, 0.3], None)
  """

  steps: np.ndarray
  predicted_train: np.ndarray
  predicted_test: np.ndarray | None
  train_loss: np.ndarray
  test_loss: np.ndarray | None
  learning_rate: float
  max_learning_rate: float
  condition_number: float

  @property
  def train(self):
    """(mean, standard error) over seeds of the measured training loss, (T,) each."""
    return mean_and_se(self.train_loss)

  @property
  def test(self):
    """(mean, standard error) over seeds of the measured test loss; None without test data."""
    return None if self.test_loss is None else mean_and_se(self.test_loss)


def training_curves(network, x_train, y_train, x_test=None, y_test=None, steps=300,
                    learning_rate: float | None = None, lr_fraction: float | None = None,
                    seeds: int = 4, seed: int = 0, progress: bool = False) -> TrainingCurves:
  """Finite networks of `network` (a `stax` description with finite widths) trained by
  full-batch gradient descent on ‖f(X) − Y‖² / (2 n_y), against the prediction from the same
  description's kernels. `steps`: the last step, recorded at `recorded_steps(steps)`, or an
  increasing sequence of step counts. The rate is `learning_rate`, or `lr_fraction` (default
  0.5) times the predicted limit 2 n_y / λ_max. `seeds` networks, drawn from `seed`; float32.
  A description with BatchNorm has training-set curves only (its kernels are the batch's).

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> from mimictheory import training_curves
  >>> x = np.random.default_rng(0).normal(size=(16, 4)); y = np.sin(x[:, :1])
  >>> c = training_curves(stax.mlp(1, "relu", width=64), x, y, steps=8, seeds=2)
  >>> c.train_loss.shape, bool(c.predicted_train[-1] < c.predicted_train[0])
  ((2, 9), True)
  """
  network = _description(network)
  x, y = _data(x_train, y_train)
  if (x_test is None) != (y_test is None):
    raise ValueError("give x_test and y_test together")
  if x_test is not None:
    x_test, y_test = _data(x_test, y_test, "x_test", "y_test")
    if not network.entrywise():
      raise ValueError("x_test: a description with BatchNorm has kernels of the training batch "
                       "only; leave x_test and y_test out")
  if isinstance(steps, (int, np.integer)):
    steps = recorded_steps(int(steps))
  steps = np.asarray(steps)
  if steps.ndim != 1 or steps.size == 0 or steps[0] < 0 or np.any(np.diff(steps) <= 0) \
     or not np.all(steps == np.round(steps)):
    raise ValueError("steps must be a positive whole number or an increasing sequence of whole "
                     f"numbers ≥ 0, got {steps!r}")
  steps = steps.astype(int)
  seeds = checks.check_int("seeds", seeds, minimum=2)
  eta, fraction = _check_rate(learning_rate, lr_fraction)
  ntk = np.asarray(network.kernel_fn(x, None, "ntk"), np.float64)
  evals = np.linalg.eigvalsh(ntk)
  limit = max_learning_rate(ntk, y.size)
  eta = fraction * limit if eta is None else eta
  pred_train, pred_test = _expected_losses(network, x, y, x_test, y_test, eta, steps)
  keys = jax.random.split(jax.random.key(checks.check_int("seed", seed, minimum=0)), seeds)
  trainer = _trainer(network, x, y, x_test, y_test)
  train, test, _, _ = _train(trainer, eta, steps, keys, progress, "training networks")
  return TrainingCurves(steps, pred_train, pred_test, train, None if x_test is None else test,
                        float(eta), float(limit), float(evals[-1] / max(evals[0], 1e-300)))


@dataclasses.dataclass(frozen=True)
class LearningRateLimit:
  """The largest learning rates at which finite networks train, against the prediction.

  predicted: 2 n_y / λ_max of the NTK (`predict.max_learning_rate`), the limit of the
  linearised dynamics. Two measured brackets, as multiples of `predicted`: (low, high), the
  networks train at low (the loss ends finite and below its initial value) and not at high;
  (monotone_low, monotone_high), the loss never rises above its initial value at
  monotone_low and does at monotone_high. Between the two limits the loss first rises, then
  falls: catapult dynamics (Lewkowycz et al. 2020), which the linearisation does not
  describe. measured: predicted · √(low · high); monotone: the same for the other bracket.

  >>> from mimictheory import LearningRateLimit
  >>> r = LearningRateLimit(predicted=2.0, low=1.0, high=4.0, monotone_low=0.5, monotone_high=1.0)
  >>> r.measured, r.monotone, r.catapult
  (4.0, 1.4142135623730951, True)
  """

  predicted: float
  low: float
  high: float
  monotone_low: float
  monotone_high: float

  @property
  def measured(self) -> float:
    return self.predicted * math.sqrt(self.low * self.high)

  @property
  def monotone(self) -> float:
    return self.predicted * math.sqrt(self.monotone_low * self.monotone_high)

  @property
  def catapult(self) -> bool:
    """Whether the networks still train at rates where their loss rises first."""
    return self.monotone_high <= self.low


MONOTONE, CATAPULT, DIVERGED = 0, 1, 2


def _bracket(outcome, worse_than: int, low: float, high: float, iterations: int, what: str):
  """(low, high) with outcome(low) <= worse_than < outcome(high), found by widening ×4 (up to
  6 tries each way), then `iterations` bisections in log."""
  for _ in range(6):
    if outcome(low) <= worse_than:
      break
    low, high = low / 4, low
  else:
    raise ValueError(f"no learning rate down to {low:.3g} × the predicted limit {what}; check "
                     "the description and data")
  for _ in range(6):
    if outcome(high) > worse_than:
      break
    low, high = high, high * 4
  else:
    raise ValueError(f"the networks still {what} at {high:.3g} × the predicted limit; raise "
                     "steps or bracket")
  for _ in range(iterations):
    middle = math.sqrt(low * high)
    low, high = (middle, high) if outcome(middle) <= worse_than else (low, middle)
  return low, high


def learning_rate_limit(network, x_train, y_train, steps: int = 40, seeds: int = 2,
                        iterations: int = 6, bracket=(0.5, 8.0), seed: int = 0,
                        progress: bool = False) -> LearningRateLimit:
  """Bisection (in log η) for the largest learning rates at which `seeds` finite networks of
  `network` train by `steps` steps of full-batch gradient descent: every seed's training loss
  ends finite and below its initial value (`low`, `high`), and besides never rises above it
  on the way (`monotone_low`, `monotone_high`). Each bracket starts at `bracket` times the
  predicted limit and widens ×4 (up to 6 tries) until it holds both outcomes; then
  `iterations` halvings in log (high/low shrinks to its 2^-iterations power). The rate is an
  argument of one compiled training loop.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> from mimictheory import learning_rate_limit
  >>> x = np.random.default_rng(0).normal(size=(8, 4)); y = np.sin(x[:, :1])
  >>> r = learning_rate_limit(stax.mlp(1, "relu", width=64), x, y, steps=10, iterations=1)
  >>> bool(r.monotone_low < r.monotone_high <= r.high and r.low < r.high)
  True
  """
  network = _description(network)
  x, y = _data(x_train, y_train)
  steps = checks.check_int("steps", steps, minimum=1)
  seeds = checks.check_int("seeds", seeds, minimum=1)
  iterations = checks.check_int("iterations", iterations, minimum=0)
  low, high = (float(checks.check_positive("bracket", b)) for b in bracket)
  if not low < high:
    raise ValueError(f"bracket must be (low, high) with low < high, got {bracket!r}")
  predicted = float(max_learning_rate(network.kernel_fn(x, None, "ntk"), y.size))
  keys = jax.random.split(jax.random.key(checks.check_int("seed", seed, minimum=0)), seeds)
  marks = np.array([0, steps])
  trainer = _trainer(network, x, y, None, None)
  seen = {}
  bar = progress_bar(iter(int, 1), progress, "learning-rate bisection")

  def outcome(factor):
    if factor not in seen:
      next(bar, None)
      loss, _, highest, _ = _train(trainer, factor * predicted, marks, keys)
      if not np.all(np.isfinite(loss[:, -1]) & (loss[:, -1] < loss[:, 0])):
        seen[factor] = DIVERGED
      else:
        seen[factor] = CATAPULT if np.any(highest > loss[:, 0] * (1 + 1e-3)) else MONOTONE
    return seen[factor]

  low_t, high_t = _bracket(outcome, CATAPULT, low, high, iterations, "train")
  low_m, high_m = _bracket(outcome, MONOTONE, low, min(high, high_t), iterations,
                           "train without a rise of the loss")
  return LearningRateLimit(predicted, low_t, high_t, low_m, high_m)


@dataclasses.dataclass(frozen=True)
class LastBatchNormRate:
  """The last BN layer's learning rate, predicted and measured (`last_bn_rate`).

  With BN on the logits h (each over the batch), the output NTK is the centred NTK of the
  logits divided by their batch variance ν, Θ_out ≈ H Θ_h H / ν (Theorem 2; exact at the
  batch in `exact_limit`), so gradient descent at rate η moves the outputs as rate η/ν would
  move the centred logits: an effective rate that falls as ν grows. `limit`: the largest
  stable effective rate, 2 n_y / λ_max(H Θ_h H). `exact_limit`: the largest stable η of the
  network with the last BN at initialisation, 2 n_y / λ_max of its exact output NTK at the
  batch (≈ limit · nu_0). `nu_0`: the predicted ν at initialisation, the mean diagonal of
  H K_h H. `body_limit`: the largest stable η without the last BN, 2 n_y / λ_max(Θ_h).

  A BN output without an affine map has batch mean 0 and variance 1 per output, so the targets
  are standardised per output over the batch (both networks train on them): otherwise the loss
  could not fall below that of the best unit-variance fit.

  steps (T,); learning_rates (R,); variance (R, seeds, T): ν measured over training (the mean
  over logits of their batch variance before the last BN, supplementary Figure 3's running
  variance taken at the batch); train_loss (R, seeds, T), body_loss (R, seeds, T): the same
  training without the last BN.

  >>> import numpy as np
  >>> from mimictheory import LastBatchNormRate
  >>> r = LastBatchNormRate(np.arange(2), np.array([2.0]), np.array([[[1.0, 4.0]]]),
  ...                       np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), 1.0, 2.0, 2.0, 1.0)
  >>> r.effective_rate.tolist()
  [[[2.0, 0.5]]]
  """

  steps: np.ndarray
  learning_rates: np.ndarray
  variance: np.ndarray
  train_loss: np.ndarray
  body_loss: np.ndarray
  limit: float
  exact_limit: float
  nu_0: float
  body_limit: float

  @property
  def effective_rate(self) -> np.ndarray:
    """η / ν over training, (R, seeds, T)."""
    return self.learning_rates[:, None, None] / self.variance


def _centre(k):
  k = np.asarray(k, np.float64)
  return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def last_bn_rate(network, x_train, y_train, multiples=(0.5, 2.0, 8.0), steps=300,
                 seeds: int = 3, seed: int = 0, progress: bool = False) -> LastBatchNormRate:
  """Train `network` (the body, a `stax` description ending in the logits) with a last
  `BatchNorm()` on the logits at learning rates `multiples` × the predicted limit of that
  network at initialisation (`exact_limit`), and the body alone at the same rates; record the
  logits' batch variance ν and the losses at `recorded_steps(steps)`. See `LastBatchNormRate`.

  >>> import numpy as np
  >>> from mimictheory import stax
  >>> from mimictheory import last_bn_rate
  >>> x = np.random.default_rng(0).normal(size=(16, 4)); y = np.sin(x[:, :1])
  >>> r = last_bn_rate(stax.mlp(2, "relu", width=64), x, y, multiples=(0.5,), steps=4,
  ...                  seeds=2)                                     # doctest: +SKIP
  >>> r.variance.shape                                              # doctest: +SKIP
  (1, 2, 5)
  """
  body = _description(network)
  x, y = _data(x_train, y_train)
  spread = y.std(axis=0)
  if np.any(spread == 0):
    raise ValueError("y_train: every output must vary over the batch (a BN output has batch "
                     "variance 1)")
  y = (y - y.mean(axis=0)) / spread
  multiples = np.asarray([float(checks.check_positive("multiples", m)) for m in multiples])
  seeds = checks.check_int("seeds", seeds, minimum=2)
  marks = recorded_steps(steps)
  head = _stax.serial(body, _stax.BatchNorm())
  k = body.kernel_fn(x, None, ("nngp", "ntk"))
  nu_0 = float(np.mean(np.diag(_centre(k.nngp))))
  limit = float(max_learning_rate(_centre(k.ntk), y.size))
  body_limit = float(max_learning_rate(k.ntk, y.size))
  exact_limit = float(max_learning_rate(head.kernel_fn(x, None, "ntk"), y.size))
  _, apply_body, _ = body

  def variance(params, inputs):
    return jnp.mean(jnp.var(apply_body(params[0], inputs), axis=0))

  keys = jax.random.split(jax.random.key(checks.check_int("seed", seed, minimum=0)), seeds)
  with_bn, without = _trainer(head, x, y, None, None, variance), _trainer(body, x, y, None, None)
  nu, loss, body_loss = [], [], []
  for m in progress_bar(multiples, progress, "learning rates"):
    eta = float(m * exact_limit)
    a, _, _, v = _train(with_bn, eta, marks, keys)
    b, _, _, _ = _train(without, eta, marks, keys)
    nu.append(v)
    loss.append(a)
    body_loss.append(b)
  return LastBatchNormRate(marks, multiples * exact_limit, np.array(nu), np.array(loss),
                           np.array(body_loss), limit, exact_limit, nu_0, body_limit)
