"""Training dynamics from the kernels (`mimictheory.predict`, issue 24): against an independent
NumPy/SciPy computation (the matrix exponential and matrix powers, linear solves) and against
neural-tangents' `predict` live in its reference environment, on the same kernels and the same
network source; bad input refused by name."""
import json
import os
import subprocess
import textwrap

import numpy as np
import pytest
import scipy.linalg

import mimictheory as mt
from mimictheory import predict, stax
from mimictheory._src import krylov
from mimictheory._src import predict as predict_src

SOURCE = ("net = stax.serial(stax.Dense(256, W_std=1.5, b_std=0.1), stax.Relu(), "
          "stax.Dense(256, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(1, W_std=1.5))")


def _net():
  scope = {"stax": stax}
  exec(SOURCE, scope)
  return scope["net"]


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  x_train, x_test = rng.normal(size=(12, 5)), rng.normal(size=(4, 5))
  y_train = np.stack([np.sin(x_train[:, 0]), np.cos(x_train[:, 1])], axis=1)
  k = _net().kernel_fn(x_train, None, ("nngp", "ntk"))
  kt = _net().kernel_fn(x_test, x_train, ("nngp", "ntk"))
  ktt = _net().kernel_fn(x_test, None, ("nngp", "ntk"))
  return dict(x_train=x_train, x_test=x_test, y=y_train, k=k, kt=kt, ktt=ktt)


@pytest.mark.parametrize("method", predict.METHODS)
def test_gradient_flow_and_descent_match_the_matrix_exponential_and_powers(data, method):
  """Every route (at N = 12 Lanczos spans the whole space: exact too)."""
  k, kt, y = data["k"], data["kt"], data["y"]
  eta, n_y = 0.7, y.size
  f0 = np.random.default_rng(1).normal(size=y.shape)
  ft0 = np.random.default_rng(2).normal(size=(4, 2))
  times = np.array([[0.0, 0.5], [3.0, 40.0]])
  train, test = predict.gradient_descent_mse(k.ntk, y, learning_rate=eta, method=method)(
      times, f0, ft0, kt.ntk)
  assert train.shape == (2, 2, 12, 2) and test.shape == (2, 2, 4, 2)
  for idx in np.ndindex(times.shape):
    decay = scipy.linalg.expm(-eta * times[idx] * k.ntk / n_y)
    np.testing.assert_allclose(train[idx], y + decay @ (f0 - y), rtol=0, atol=1e-11)
    change = np.linalg.solve(k.ntk, (np.eye(12) - decay) @ (f0 - y))
    np.testing.assert_allclose(test[idx], ft0 - kt.ntk @ change, rtol=0, atol=1e-9)
  steps = predict.gradient_descent_mse(k.ntk, y, learning_rate=eta, discrete=True,
                                       method=method)
  for n in (0, 1, 7, 100):
    want = y + np.linalg.matrix_power(np.eye(12) - eta * k.ntk / n_y, n) @ (f0 - y)
    np.testing.assert_allclose(steps(n, f0), want, rtol=0, atol=1e-11)
  inf_train, inf_test = predict.gradient_descent_mse(k.ntk, y, method=method)(
      None, f0, ft0, kt.ntk)
  np.testing.assert_allclose(inf_train, y)
  np.testing.assert_allclose(inf_test, ft0 - kt.ntk @ np.linalg.solve(k.ntk, f0 - y), atol=1e-9)


@pytest.fixture(scope="module")
def digits_kernels():
  """The NTK of 400 training and 100 test digits (a depth-8 ReLU network: a spread spectrum,
  κ about 1e3), 10 one-hot targets."""
  from sklearn.datasets import load_digits
  x, labels = load_digits(return_X_y=True)
  x = (x - x.mean(0)) / (x.std(0) + 1.0)
  net = stax.serial(*[stax.Dense(64, W_std=2**0.5, b_std=0.1), stax.Relu()] * 8,
                    stax.Dense(1, W_std=2**0.5, b_std=0.1))
  k = np.asarray(net.kernel_fn(x[:500], None, "ntk"))
  return k[:400, :400], k[400:, :400], np.eye(10)[labels[:400]] - 0.1


@pytest.mark.parametrize("discrete", [False, True])
def test_lanczos_converges_to_the_matrix_exponential_long_before_spanning_the_space(
    digits_kernels, discrete):
  """N = 400, 10 outputs, times from 0 to where the loss has fallen 1e-6: block Lanczos on
  f_0 − Y against scipy's expm (powers for gradient descent), to 1e-10 of the outputs, in a
  basis far smaller than the space (what makes it cheap), and against the eigendecomposition
  route on new f_0 (the basis kept for one residual is not reused for another)."""
  k, kt, y = digits_kernels
  n_y = y.size
  eta = 0.9 * predict.max_learning_rate(k, n_y)
  rng = np.random.default_rng(5)
  f0, ft0 = 0.3 * rng.normal(size=y.shape), 0.3 * rng.normal(size=(100, 10))
  times = np.array([0.0, 1.0, 10.0, 300.0, 3000.0])
  fn = predict.gradient_descent_mse(k, y, learning_rate=eta, discrete=discrete,
                                    method="krylov")
  train, test = fn(times, f0, ft0, kt)
  for i, t in enumerate(times):
    step = (np.linalg.matrix_power(np.eye(400) - eta * k / n_y, int(t)) if discrete
            else scipy.linalg.expm(-eta * t * k / n_y))
    np.testing.assert_allclose(train[i], y + step @ (f0 - y), rtol=0, atol=1e-10)
    change = np.linalg.solve(k, (np.eye(400) - step) @ (f0 - y))
    np.testing.assert_allclose(test[i], ft0 - kt @ change, rtol=0, atol=1e-10 * np.abs(
        test[i]).max())
  process = krylov.Lanczos(k, f0 - y)
  values = lambda theta: predict_src._gain(np.maximum(theta, 0), times, eta, n_y,  # noqa: E731
                                       discrete)
  assert krylov.functions_of(process, values, predict_src.KRYLOV_TOL, 40) is not None
  assert process.dimension <= 300
  exact = predict.gradient_descent_mse(k, y, learning_rate=eta, discrete=discrete,
                                       method="eigh")
  for f in (f0, -f0, 0.0):
    for a, b in zip(fn(times[1:] + 1, f, ft0, kt), exact(times[1:] + 1, f, ft0, kt),
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * np.abs(b).max())


def test_auto_falls_back_to_the_eigendecomposition_where_lanczos_is_slow(
    digits_kernels, monkeypatch):
  """With Lanczos allowed from N = 100 on, "auto" at N = 400 has N/20 = 20 steps: enough for
  short times, not for t = 1e7 (it would need ~√(ηtλ_max/n_y) = 3000); the answer is the
  eigendecomposition's either way, and a kernel that is not positive semi-definite is refused
  on the Lanczos route too (by a Cholesky factor, not a spectrum)."""
  k, kt, y = digits_kernels
  monkeypatch.setattr(predict_src, "KRYLOV_MIN_INPUTS", 100)
  f0 = np.random.default_rng(8).normal(size=y.shape)
  for t in ([0.5, 2.0], [1e7]):
    auto = predict.gradient_descent_mse(k, y)(np.array(t), f0, 0.0, kt)
    exact = predict.gradient_descent_mse(k, y, method="eigh")(np.array(t), f0, 0.0, kt)
    for a, b in zip(auto, exact, strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * np.abs(b).max())
  evals = np.linalg.eigvalsh(k)  # the smallest eigenvalue moved to -1e-7 and -1e-11 of the top
  for beyond, refused in ((1e-7, True), (1e-11, False)):
    shifted = k - (evals[0] + beyond * evals[-1]) * np.eye(400)
    if refused:
      with pytest.raises(ValueError, match="not positive semi-definite"):
        predict.gradient_descent_mse(shifted, y)
    else:  # within rounding (PSD_TOLERANCE = 1e-9): accepted, as by the eigendecomposition
      predict.gradient_descent_mse(shifted, y)
      predict.gradient_descent_mse(shifted, y, method="eigh")


@pytest.mark.parametrize("method", predict.METHODS)
def test_a_singular_kernel_gives_finite_predictions_with_the_limit_of_its_null_space(method):
  """Two identical training inputs make Θ singular: the test outputs stay finite, and equal
  those of the problem with the duplicate merged (its target the mean of the two)."""
  x = np.random.default_rng(3).normal(size=(6, 4))
  x[5] = x[4]
  y = np.arange(6.0)
  x_test = np.random.default_rng(4).normal(size=(3, 4))
  net = _net()
  k, kt = net.kernel_fn(x, None, "ntk"), net.kernel_fn(x_test, x, "ntk")
  out = predict.gradient_descent_mse(k, y, method=method)(None, 0.0, 0.0, kt)[1]
  late = predict.gradient_descent_mse(k, y, method=method)(1e8, 0.0, 0.0, kt)[1]
  np.testing.assert_allclose(late, out, rtol=1e-7, atol=1e-9)
  merged_y = np.concatenate([y[:4], [y[4:].mean()]])
  km, ktm = net.kernel_fn(x[:5], None, "ntk"), net.kernel_fn(x_test, x[:5], "ntk")
  want = ktm @ np.linalg.solve(km, merged_y)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, want, rtol=1e-7, atol=1e-9)


def test_the_ensemble_and_gp_inference_match_lee_et_al_eq_16(data):
  """Mean and covariance over initialisations at finite t from the matrix exponential, and at
  t = ∞ GP inference (NNGP: the Bayesian posterior; NTK: trained to convergence)."""
  k, kt, ktt, y = data["k"], data["kt"], data["ktt"], data["y"]
  eta, n_y, t = 1.3, y.size, 5.0
  fn = predict.gradient_descent_mse_ensemble(_net().kernel_fn, data["x_train"], y,
                                             learning_rate=eta)
  out = fn(t, data["x_test"], "ntk", compute_cov=True)
  d = np.linalg.solve(k.ntk, np.eye(12) - scipy.linalg.expm(-eta * t * k.ntk / n_y))
  a = kt.ntk @ d
  np.testing.assert_allclose(out.mean, a @ y, atol=1e-9)
  cov = ktt.nngp + a @ k.nngp @ a.T - a @ kt.nngp.T - kt.nngp @ a.T
  np.testing.assert_allclose(out.covariance, cov, atol=1e-9)
  gp = predict.gp_inference(k, y)(None, kt, ktt)
  ens = fn(None, data["x_test"], None, compute_cov=True)
  for g in ("nngp", "ntk"):
    np.testing.assert_allclose(getattr(ens, g).mean, getattr(gp, g).mean, atol=1e-9)
    np.testing.assert_allclose(getattr(ens, g).covariance, getattr(gp, g).covariance,
                               atol=1e-9)
  post = ktt.nngp - kt.nngp @ np.linalg.solve(k.nngp, kt.nngp.T)
  np.testing.assert_allclose(gp.nngp.covariance, post, atol=1e-9)
  train = fn(t, None, "ntk")
  np.testing.assert_allclose(
      train, (np.eye(12) - scipy.linalg.expm(-eta * t * k.ntk / n_y)) @ y, atol=1e-10)
  assert predict.max_learning_rate(k.ntk) == pytest.approx(
      2 * 12 / np.linalg.eigvalsh(k.ntk)[-1], rel=1e-12)


DRIVER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from nt_reference import load_neural_tangents
    load_neural_tangents()
    import jax
    jax.config.update("jax_enable_x64", True)
    import collections
    from neural_tangents import predict, stax
    r = np.load(sys.argv[2])
    scope = {"stax": stax}
    exec(str(r["source"]), scope)
    kernel_fn = scope["net"][2]
    K = collections.namedtuple("K", ["nngp", "ntk"])
    k = K(r["k_nngp"], r["k_ntk"]); kt = K(r["kt_nngp"], r["kt_ntk"])
    ktt = K(r["ktt_nngp"], r["ktt_ntk"])
    y, f0, ft0, t = r["y"], r["f0"], r["ft0"], r["t"]
    out = {}
    fn = predict.gradient_descent_mse(k.ntk, y, learning_rate=0.7, diag_reg=1e-3)
    out["train"], out["test"] = fn(t, f0, ft0, kt.ntk)
    out["inf_test"] = fn(None, f0, ft0, kt.ntk)[1]
    gp = predict.gp_inference(k, y, diag_reg=1e-3)(None, kt, ktt)
    for g in ("nngp", "ntk"):
      out["gp_" + g + "_mean"], out["gp_" + g + "_cov"] = getattr(gp, g)
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, r["x_train"], y,
                                                learning_rate=1.3)
    e = ens(t, r["x_test"], "ntk", compute_cov=True)
    out["ens_mean"], out["ens_cov"] = e.mean, e.covariance
    out["ens_train"] = ens(t, None, "nngp")
    out["lr"] = predict.max_learning_rate(k.ntk, momentum=0.5)
    np.savez(sys.argv[3], **{a: np.asarray(b) for a, b in out.items()})
""")


def test_neural_tangents_predict_gives_the_same_dynamics(data, tmp_path, nt_python):
  """neural-tangents 0.6.5's `predict` on the same kernels (and its own kernel_fn of the same
  source for the ensemble): means, covariances, regularised predictions and the learning-rate
  limit agree to 1e-10 relative."""
  k, kt, ktt, y = data["k"], data["kt"], data["ktt"], data["y"][:, :1]
  rng = np.random.default_rng(5)
  f0, ft0, t = rng.normal(size=y.shape), rng.normal(size=(4, 1)), np.array([0.3, 2.0, 50.0])
  arrays = dict(k_nngp=k.nngp, k_ntk=k.ntk, kt_nngp=kt.nngp, kt_ntk=kt.ntk, ktt_nngp=ktt.nngp,
                ktt_ntk=ktt.ntk, y=y, f0=f0, ft0=ft0, t=t, x_train=data["x_train"],
                x_test=data["x_test"], source=SOURCE)
  np.savez(tmp_path / "request.npz", **arrays)
  env = {a: b for a, b in os.environ.items() if not a.startswith(("XLA_", "JAX_"))}
  env["JAX_PLATFORMS"] = "cpu"
  src = os.path.join(os.path.dirname(mt.__file__), "_src")
  subprocess.run([str(nt_python), "-c", DRIVER, src, str(tmp_path / "request.npz"),
                  str(tmp_path / "result.npz")], check=True, env=env, timeout=600,
                 capture_output=True)
  nt = dict(np.load(tmp_path / "result.npz"))

  def close(ours, theirs):
    theirs = np.asarray(theirs)
    assert np.shape(ours) == theirs.shape
    assert np.max(np.abs(ours - theirs)) <= 1e-10 * max(np.max(np.abs(theirs)), 1e-300)

  fn = predict.gradient_descent_mse(k.ntk, y, learning_rate=0.7, diag_reg=1e-3)
  train, test = fn(t, f0, ft0, kt.ntk)
  close(train, nt["train"])
  close(test, nt["test"])
  close(fn(None, f0, ft0, kt.ntk)[1], nt["inf_test"])
  gp = predict.gp_inference(k, y, diag_reg=1e-3)(None, kt, ktt)
  for g in ("nngp", "ntk"):
    close(getattr(gp, g).mean, nt[f"gp_{g}_mean"])
    close(getattr(gp, g).covariance, nt[f"gp_{g}_cov"])
  ens = predict.gradient_descent_mse_ensemble(_net().kernel_fn, data["x_train"], y,
                                              learning_rate=1.3)
  e = ens(t, data["x_test"], "ntk", compute_cov=True)
  close(e.mean, nt["ens_mean"])
  close(e.covariance, nt["ens_cov"])
  close(ens(t, None, "nngp"), nt["ens_train"])
  assert predict.max_learning_rate(k.ntk, momentum=0.5) == pytest.approx(float(nt["lr"]),
                                                                         rel=1e-12)


def test_batch_norm_predicts_the_training_batch_and_refuses_test_inputs():
  """Full-batch gradient descent of a BN network: its kernels are exact at the batch, so the
  training-set dynamics are predicted; test inputs would join the batch, and are refused."""
  x = np.random.default_rng(6).normal(size=(8, 4))
  y = np.sign(x[:, 0])
  net = stax.serial(stax.Dense(64, W_std=1.4), stax.BatchNorm(), stax.Relu(), stax.Dense(1))
  fn = predict.gradient_descent_mse_ensemble(net.kernel_fn, x, y)
  k = net.kernel_fn(x, None, "ntk")
  np.testing.assert_allclose(
      fn(2.0, None, "ntk"), (np.eye(8) - scipy.linalg.expm(-2.0 * k / 8)) @ y, atol=1e-10)
  with pytest.raises(ValueError, match="BatchNorm"):
    fn(1.0, x[:2], "ntk")


def test_bad_input_is_refused_by_name(data):
  k, y = data["k"].ntk, data["y"]
  fn = predict.gradient_descent_mse(k, y)
  cases = [
      (lambda: fn(-1.0, np.zeros_like(y)), "t must be"),
      (lambda: predict.gradient_descent_mse(k, y, discrete=True)(2.5, np.zeros_like(y)),
       "whole numbers of steps"),
      (lambda: predict.gradient_descent_mse(k, y, learning_rate=0.0), "learning_rate"),
      (lambda: predict.gradient_descent_mse(k, y, learning_rate=-1.0), "learning_rate"),
      (lambda: predict.gradient_descent_mse(k - 2 * np.eye(12) * np.abs(k).max(), y),
       "not positive semi-definite"),
      (lambda: predict.gradient_descent_mse(k - 2 * np.eye(12) * np.abs(k).max(), y,
                                            method="krylov"), "not positive semi-definite"),
      (lambda: predict.gradient_descent_mse(k, y, method="lanczos"), "method must be one of"),
      (lambda: predict.gradient_descent_mse(k[:5, :5], y), r"k_train_train must have shape"),
      (lambda: predict.gradient_descent_mse(k + np.triu(np.ones((12, 12)), 1), y),
       "symmetric"),
      (lambda: fn(1.0, np.zeros_like(y), np.zeros((3, 2))), "k_test_train"),
      (lambda: fn(1.0, np.zeros_like(y), np.zeros((3, 2)), np.zeros((3, 5))),
       r"k_test_train must have shape"),
      (lambda: predict.gradient_descent_mse(k, y, diag_reg=-1.0), "diag_reg"),
      (lambda: predict.gradient_descent_mse(k, y, trace_axes=()), "trace_axes"),
      (lambda: predict.gp_inference(k, y)("both", k), "get must be one of"),
      (lambda: predict.max_learning_rate(k, momentum=1.5), "momentum"),
      (lambda: predict.gradient_descent_mse_ensemble(_net().kernel_fn, data["x_train"][:3], y),
       "same number of inputs"),
  ]
  for call, needle in cases:
    with pytest.raises(ValueError, match=needle):
      call()
  assert json.dumps(predict.__all__)  # the public names exist


def test_the_readme_example_runs():
  """The README's `mimictheory.predict` block, executed as written (it cannot drift)."""
  import pathlib
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  section = readme.split("### Training dynamics: `mimictheory.predict`")[1]
  scope = {}
  exec(section.split("```python\n")[1].split("```")[0], scope)
  out, eta_max = scope["out"], scope["eta_max"]
  assert out.mean.shape == (3, 16, 1) and out.covariance.shape == (3, 16, 16)
  assert np.all(np.diagonal(out.covariance, axis1=1, axis2=2) > 0) and eta_max > 0


def _trained(net, x, y, x_test, eta, steps, seeds):
  """Finite networks (the description's own, NTK parameterisation) trained by full-batch
  gradient descent on ‖f − Y‖² / (2 n_y), float64: per seed the outputs on the training and
  test inputs at initialisation and after `steps` steps."""
  import jax
  import jax.numpy as jnp
  init_fn, apply_fn, _ = net

  def one(key):
    _, params = init_fn(key, x.shape)
    loss = lambda p: jnp.sum((apply_fn(p, x) - y) ** 2) / (2 * y.size)  # noqa: E731
    step = lambda _, p: jax.tree_util.tree_map(lambda a, g: a - eta * g, p,  # noqa: E731
                                               jax.grad(loss)(p))
    trained = jax.lax.fori_loop(0, steps, step, params)
    return (apply_fn(params, x), apply_fn(params, x_test), apply_fn(trained, x),
            apply_fn(trained, x_test))

  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(7), seeds)
    return [np.asarray(a) for a in jax.jit(jax.vmap(one))(keys)]


@pytest.mark.slow
def test_wide_networks_trained_by_gradient_descent_follow_the_prediction():
  """Issue 24, item 3 (small): ReLU networks of width 256, 1024 and 4096 trained by 60 steps
  of full-batch gradient descent at half the predicted learning-rate limit. Each network's
  outputs follow the prediction from its own initial outputs with the infinite-width NTK,
  the deviation falling as width^(-1/2) (fitted slope within 0.2 of −1/2); over 16 seeds the
  mean test outputs agree with the ensemble mean of Lee et al. within 5 standard errors."""
  rng = np.random.default_rng(8)
  x, x_test = rng.normal(size=(16, 6)), rng.normal(size=(6, 6))
  y = np.sin(x[:, :1] + x[:, 1:2])

  def net(width):
    return stax.serial(stax.Dense(width, W_std=2**0.5, b_std=0.1), stax.Relu(),
                       stax.Dense(width, W_std=2**0.5, b_std=0.1), stax.Relu(),
                       stax.Dense(1, W_std=2**0.5))

  theory = net(None)
  k_train, k_test = theory.kernel_fn(x, None, "ntk"), theory.kernel_fn(x_test, x, "ntk")
  eta = 0.5 * predict.max_learning_rate(k_train)
  steps = 60
  follow = predict.gradient_descent_mse(k_train, y, learning_rate=eta, discrete=True)
  rms = []
  for width in (256, 1024, 4096):
    f0, ft0, f, ft = _trained(net(width), x, y, x_test, eta, steps, 16)
    want = [follow(steps, a, b, k_test) for a, b in zip(f0, ft0)]
    dev = np.concatenate([np.concatenate([f[i] - w[0], ft[i] - w[1]]) for i, w in
                          enumerate(want)])
    rms.append(np.sqrt(np.mean(dev**2)))
    if width == 4096:
      ens = predict.gradient_descent_mse_ensemble(theory.kernel_fn, x, y, learning_rate=eta,
                                                  discrete=True)
      mean = ens(steps, x_test, "ntk")
      se = ft.std(axis=0, ddof=1) / np.sqrt(len(ft))
      assert np.all(np.abs(ft.mean(axis=0) - mean) < 5 * se + 0.02), (ft.mean(0), mean, se)
  slope = np.polyfit(np.log([256, 1024, 4096]), np.log(rms), 1)[0]
  assert abs(slope + 0.5) < 0.2, (slope, rms)
  assert rms[-1] < 0.05
