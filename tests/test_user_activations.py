"""A user's own activations (issue 20, items 3, 4, 7): the kernels accept what chi1 accepts,
refuse what is not defined, and name the activation when it misbehaves. Every value is checked
against a closed form written here or scipy's quadrature."""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import mimictheory as mt

X = np.random.default_rng(3).normal(size=(6, 5))


def _recursion(kernel, derivative_kernel, depth, sw2, sb2, x=X):
  """NNGP and NTK of a plain network from closed-form dual activations (NumPy, no library)."""
  k = sw2 * x @ x.T / x.shape[1] + sb2
  ntk = k.copy()
  for _ in range(depth):
    q = np.diag(k)
    q1, q2 = q[:, None], q[None, :]
    kk, dd = kernel(q1, q2, k), derivative_kernel(q1, q2, k)
    k = sw2 * kk + sb2
    ntk = k + sw2 * dd * ntk
  return k, ntk


def _angle(q1, q2, q12):
  return np.arccos(np.clip(q12 / np.sqrt(q1 * q2), -1, 1))


def test_leaky_relu_written_with_maximum_matches_its_closed_form():
  """max(u, 0.3u) = 0.3u + 0.7 relu(u). Was refused ("did not reach 1e-13"): JAX's derivative
  of jnp.maximum compares input and output, and XLA recomputed the input in two fusions."""
  a = 0.3

  def kernel(q1, q2, q12):
    t = _angle(q1, q2, q12)
    relu = np.sqrt(q1 * q2) * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi)
    return a * a * q12 + a * (1 - a) * q12 + (1 - a) ** 2 * relu

  def derivative_kernel(q1, q2, q12):
    return a * a + a * (1 - a) + (1 - a) ** 2 * (np.pi - _angle(q1, q2, q12)) / (2 * np.pi)

  act = mt.Numerical(lambda u: jnp.maximum(u, a * u), kinks=(0.0,), name="max_leaky")
  got = mt.kernels(X, depth=3, activation=act, sw2=1.5, sb2=0.1)
  want = _recursion(kernel, derivative_kernel, 3, 1.5, 0.1)
  np.testing.assert_allclose(got.nngp, want[0], rtol=1e-11)
  np.testing.assert_allclose(got.ntk, want[1], rtol=1e-11)
  assert abs(float(mt.chi1(act, 1.5, 0.0)) - 1.5 * (1 + a * a) / 2) < 1e-12


def test_sine_matches_its_closed_form():
  """E[sin u sin v] = e^(-(q1+q2)/2) sinh q12 and E[cos u cos v] = e^(-(q1+q2)/2) cosh q12."""
  act = mt.Numerical(jnp.sin, name="sin")
  with pytest.warns(RuntimeWarning, match=r"activation 'sin'.*direct quadrature"):
    got = mt.kernels(X, depth=3, activation=act, sw2=1.5, sb2=0.1)
  want = _recursion(lambda q1, q2, q12: np.exp(-(q1 + q2) / 2) * np.sinh(q12),
                    lambda q1, q2, q12: np.exp(-(q1 + q2) / 2) * np.cosh(q12), 3, 1.5, 0.1)
  np.testing.assert_allclose(got.nngp, want[0], rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(got.ntk, want[1], rtol=1e-12)


def test_shifted_relu_with_a_declared_kink_matches_scipy():
  """max(u - 0.5, 0), kinks=(0.5,): one layer's NNGP entry against scipy's 2-D quadrature."""
  act = mt.Numerical(lambda u: jnp.maximum(u - 0.5, 0.0), kinks=(0.5,), name="shifted")
  x = X[:2]
  got = mt.kernels(x, depth=1, activation=act, sw2=1.5, sb2=0.1).nngp
  k = 1.5 * x @ x.T / x.shape[1] + 0.1
  q1, q2, q12 = k[0, 0], k[1, 1], k[0, 1]
  rho = q12 / math.sqrt(q1 * q2)
  phi = lambda t: max(t - 0.5, 0.0)  # noqa: E731
  dens = lambda z1, z2: math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)  # noqa: E731
  value = integrate.dblquad(
      lambda z2, z1: phi(math.sqrt(q1) * z1) * phi(math.sqrt(q2) * (
          rho * z1 + math.sqrt(1 - rho * rho) * z2)) * dens(z1, z2),
      0.5 / math.sqrt(q1), 12, -12, 12, epsabs=1e-13, epsrel=1e-11)[0]
  assert abs(got[0, 1] - (1.5 * value + 0.1)) < 1e-9


STEP = mt.Numerical(lambda s: jnp.where(s > 0, 1.0, 0.0), jumps=(0.0,), name="step")


@pytest.mark.parametrize("call", [
    lambda: mt.kernels(X, depth=2, activation=STEP),
    lambda: mt.kernels(X, depth=2, activation=STEP, norm="weight_mean"),
    lambda: mt.ntk_spectrum(X, depth=2, activation=STEP),
    lambda: mt.phase_diagram(activation=STEP, sw2=np.array([1.0, 2.0]), sb2=np.array([0.0, 0.1])),
], ids=["kernels", "weight_mean", "ntk_spectrum", "phase_diagram"])
def test_the_ntk_of_an_activation_with_a_jump_is_refused(call):
  """φ' has a Dirac delta: the NTK diagonal is infinite (it was returned as 1.1)."""
  with pytest.raises(ValueError, match=r"activation 'step' jumps at x = 0.*NTK"):
    call()


def test_the_nngp_of_an_activation_with_a_jump_is_the_arc_cosine_kernel_of_order_0():
  """layer_kernels (the NNGP only) stays defined: E[1(u>0) 1(v>0)] = (π - θ)/(2π)."""
  got = mt.layer_kernels(X, depth=3, activation=STEP, sw2=1.5, sb2=0.1)
  k = 1.5 * X @ X.T / X.shape[1] + 0.1
  for layer in range(1, 3):
    q = np.diag(k)
    k = 1.5 * (np.pi - _angle(q[:, None], q[None, :], k)) / (2 * np.pi) + 0.1
    np.testing.assert_allclose(got[layer], k, rtol=1e-12)


NAN_TANH = mt.Numerical(lambda u: jnp.where(jnp.abs(u) > 60, jnp.nan, jnp.tanh(u)), name="f")


@pytest.mark.parametrize("call", [
    lambda: mt.chi1(NAN_TANH, 1e4, 0.0), lambda: mt.qstar(NAN_TANH, 1e4, 0.0),
    lambda: mt.kernels(np.eye(3), activation=NAN_TANH, sw2=1e4)],
    ids=["chi1", "qstar", "kernels"])
def test_nan_from_the_activation_is_named_with_where(call):
  with pytest.raises(ValueError, match=r"activation 'f': φ returned nan at x = -?6\d\.\d+"):
    call()
